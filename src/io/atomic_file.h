// Crash-safe file replacement: write a temporary file in the same folder, fsync it, rename it over
// the target, fsync the folder. A crash at any moment leaves the old file or the new one, whole.
#pragma once

#include <cstdint>
#include <span>
#include <string>

namespace dptrain {

/// Throws std::runtime_error naming the path and the system error; the temporary is removed.
void write_file_atomically(const std::string& path, std::span<const uint8_t> bytes);

}  // namespace dptrain
