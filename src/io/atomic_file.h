// Crash-safe file replacement: after write_file_atomically returns, `path` holds the new bytes
// durably; if the process dies at any moment before that, `path` still holds its old complete
// contents (or does not exist, if it did not before). Never a torn file.
//
// How: write a temp file in the same folder (rename is only atomic within one file system), fsync
// it, rename it over the target, fsync the folder so the rename itself is on disk.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace dptrain {

/// Replaces `path` with `bytes` atomically and durably. On any failure removes the temp file and
/// throws std::runtime_error naming the path and the system error; the old file is untouched.
void write_file_atomically(const std::string& path, std::span<const uint8_t> bytes);
void write_file_atomically(const std::string& path, std::string_view text);

/// Reads a whole file. Throws InputError(path, reason) if it cannot be opened or read: the files
/// this is used for (checkpoints, `latest`) are user input.
std::string read_whole_file(const std::string& path);

}  // namespace dptrain
