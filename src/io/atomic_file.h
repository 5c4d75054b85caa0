// Whole-file reads, and crash-safe file replacement: after write_file_atomically returns, `path`
// holds the new bytes durably; if the process dies at any moment before that, `path` still holds
// its old complete contents (or does not exist, if it did not before). Never a torn file.
//
// How: write a temp file in the same folder (rename is only atomic within one file system), fsync
// it, rename it over the target, fsync the folder so the rename itself is on disk.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace dptrain {

/// Replaces `path` with `bytes` atomically and durably. On any failure removes the temp file and
/// throws std::runtime_error naming the path and the system error; the old file is untouched.
void write_file_atomically(const std::string& path, std::span<const uint8_t> bytes);
void write_file_atomically(const std::string& path, std::string_view text);

/// Makes `path` a second name of the complete, durable file `existing` (a hard link), atomically
/// and durably as above: the old `path` stays whole until the rename. Returns false, touching
/// nothing, where the file system has no hard links (the caller writes the bytes instead); throws
/// std::runtime_error naming the path for any other failure.
bool link_file_atomically(const std::string& existing, const std::string& path);

/// Removes the temp files in `folder` that an interrupted write left (the process was killed between
/// creating its temp file and the rename): those of a process that is gone, and those of an earlier
/// process with this one's pid (a container restarts under the same pid; this process's own carry
/// its token). A temp file of another live process (a concurrent writer) stays. Returns the names
/// removed. Never throws: what cannot be listed or removed stays.
std::vector<std::string> remove_stale_temp_files(const std::string& folder);

/// Reads a whole regular file of at most max_bytes. Throws InputError(path, reason) if it cannot be
/// opened or read, is not a regular file or is larger: every file read this way (checkpoints,
/// `latest`, configs, IDX data) is user input. The one reader of the project, as text or bytes.
constexpr uint64_t kAnyFileSize = UINT64_MAX;
std::string read_whole_file(const std::string& path, uint64_t max_bytes = kAnyFileSize);
std::vector<uint8_t> read_file_bytes(const std::string& path, uint64_t max_bytes = kAnyFileSize);

}  // namespace dptrain
