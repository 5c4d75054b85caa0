// Atomic file replacement with POSIX calls (open/write/fsync/rename), so every step's error is
// seen and reported; iostreams would hide fsync and partial-write failures.
#include "io/atomic_file.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <regex>
#include <stdexcept>
#include <utility>

#include "core/error.h"

namespace dptrain {
namespace {

/// Owns a POSIX file descriptor; closes it once. close() reports the error that a deferred write
/// can surface there (NFS, quota).
class FileDescriptor {
 public:
  explicit FileDescriptor(int fd) : fd_(fd) {}
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  ~FileDescriptor() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }
  /// Closes now; returns 0 or the errno of the failed close.
  int close() {
    const int fd = fd_;
    fd_ = -1;
    return ::close(fd) == 0 ? 0 : errno;
  }

 private:
  int fd_;
};

std::runtime_error system_error(const std::string& path, std::string_view what, int error) {
  return std::runtime_error(path + ": " + std::string(what) + ": " + std::strerror(error));
}

/// Writes all of `bytes`, retrying on EINTR and short writes. Returns 0 or errno.
int write_all(int fd, const uint8_t* p, size_t n) {
  while (n > 0) {
    const ssize_t written = ::write(fd, p, n);
    if (written < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    p += written;
    n -= static_cast<size_t>(written);
  }
  return 0;
}

/// This process's token in its temp names.
const std::string& process_token() {
  static const std::string token = [] {
    std::random_device entropy;
    char hex[17];
    std::snprintf(hex, sizeof hex, "%08x%08x", entropy(), entropy());
    return std::string(hex);
  }();
  return token;
}

/// Where a file replacing `path` is made first: a temp name in its folder (rename is only atomic
/// within one file system), unique among processes (pid and a random token drawn once per process:
/// a container restarts its trainer under the same pid, and a temp file that a killed process left
/// behind must not collide) and among threads and calls of this one (counter). Throws if `path`
/// names no file.
struct TempBeside {
  std::string folder, temp_path;
};
TempBeside temp_beside(const std::string& path) {
  static std::atomic<uint64_t> counter{0};
  const std::string& token = process_token();
  const size_t slash = path.find_last_of('/');
  const std::string folder =
      slash == std::string::npos ? std::string(1, '.') : slash == 0 ? std::string(1, '/') : path.substr(0, slash);
  const std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  if (name.empty() || name == "." || name == "..") throw std::runtime_error(path + ": not a file name");
  return {folder, (folder == "/" ? "" : folder) + "/." + name + ".tmp." + std::to_string(::getpid()) + "." + token +
                      "." + std::to_string(counter++)};
}

/// Makes a fresh temp name for `path` with `make(temp_path)` (an open with O_EXCL, a link), trying
/// the next name where one is taken all the same (EEXIST: a file left by someone else). `make`
/// returns a negative value and sets errno on failure.
struct MadeTemp {
  TempBeside where;
  int result;  ///< make's
  int error;   ///< errno where result < 0
};
template <typename Make>
MadeTemp make_temp(const std::string& path, Make make) {
  constexpr int kAttempts = 16;
  for (int attempt = 1;; ++attempt) {
    TempBeside where = temp_beside(path);
    const int result = make(where.temp_path);
    const int error = result < 0 ? errno : 0;
    if (result >= 0 || error != EEXIST || attempt == kAttempts) return {std::move(where), result, error};
  }
}

/// A rename is only durable once the folder's entry is on disk.
void sync_folder(const std::string& path, const std::string& folder) {
  FileDescriptor dir(::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir.get() < 0) throw system_error(path, "cannot open folder " + folder + " to fsync", errno);
  if (::fsync(dir.get()) != 0 && errno != EINVAL && errno != ENOTSUP) {
    // EINVAL/ENOTSUP: the file system cannot sync folders; nothing more can be done there.
    throw system_error(path, "fsync of folder " + folder + " failed", errno);
  }
}

}  // namespace

void write_file_atomically(const std::string& path, std::span<const uint8_t> bytes) {
  const MadeTemp made = make_temp(
      path, [](const std::string& temp) { return ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644); });
  const std::string& folder = made.where.folder;
  const std::string& temp_path = made.where.temp_path;
  FileDescriptor fd(made.result);
  if (fd.get() < 0) throw system_error(path, "cannot create temp file " + temp_path, made.error);

  auto fail = [&](std::string_view what, int error) {
    if (fd.get() >= 0) fd.close();
    ::unlink(temp_path.c_str());
    return system_error(path, what, error);
  };
  if (int e = write_all(fd.get(), bytes.data(), bytes.size())) throw fail("write failed", e);
  if (::fsync(fd.get()) != 0) throw fail("fsync failed", errno);
  if (int e = fd.close()) throw fail("close failed", e);
  if (::rename(temp_path.c_str(), path.c_str()) != 0) throw fail("rename failed", errno);
  sync_folder(path, folder);
}

std::vector<std::string> remove_stale_temp_files(const std::string& folder) {
  // ".<name>.tmp.<pid>.<token>.<counter>", or without the token (dptrain before e299086).
  static const std::regex temp_name(R"(^\..+\.tmp\.([0-9]{1,10})(?:\.([0-9a-f]{16}))?\.[0-9]+$)");
  std::vector<std::string> removed;
  std::error_code ec;
  for (std::filesystem::directory_iterator it(folder, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    std::smatch m;
    if (!std::regex_match(name, m, temp_name) || !it->is_regular_file(ec)) continue;
    const long pid = std::stol(m[1].str());
    const bool ours = pid == ::getpid();
    if (ours && m[2].matched && m[2].str() == process_token()) continue;  // a write of this process
    // kill(pid, 0): ESRCH when no such process; EPERM means it exists (another user's).
    const bool alive = !ours && pid > 0 && pid <= INT32_MAX && (::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM);
    if (alive) continue;
    std::error_code gone;
    if (std::filesystem::remove(it->path(), gone)) removed.push_back(name);
  }
  return removed;
}

bool link_file_atomically(const std::string& existing, const std::string& path) {
  const MadeTemp made =
      make_temp(path, [&](const std::string& temp) { return ::link(existing.c_str(), temp.c_str()); });
  const std::string& folder = made.where.folder;
  const std::string& temp_path = made.where.temp_path;
  if (made.result != 0) {
    const int error = made.error;
    // No hard links here (FAT, some FUSE and network file systems), or not across these folders.
    if (error == EPERM || error == ENOTSUP || error == EOPNOTSUPP || error == EXDEV || error == EMLINK) return false;
    throw system_error(path, "cannot link " + existing + " as " + temp_path, error);
  }
  if (::rename(temp_path.c_str(), path.c_str()) != 0) {
    const int error = errno;
    ::unlink(temp_path.c_str());
    throw system_error(path, "rename failed", error);
  }
  // Where `path` already was a name of `existing`, rename() succeeds and does nothing (POSIX):
  // the temp name is still there. Otherwise it is gone and this finds nothing.
  ::unlink(temp_path.c_str());
  sync_folder(path, folder);
  return true;
}

void write_file_atomically(const std::string& path, std::string_view text) {
  write_file_atomically(path,
                        std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(text.data()), text.size()));
}

namespace {

std::string size_text(uint64_t bytes) {
  if (bytes % (uint64_t{1} << 30) == 0) return std::to_string(bytes >> 30) + " GiB";
  if (bytes % (uint64_t{1} << 20) == 0) return std::to_string(bytes >> 20) + " MiB";
  return std::to_string(bytes) + " bytes";
}

template <typename Out>
Out read_file_into(const std::string& path, uint64_t max_bytes) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer; the check below then
  // refuses it. On a regular file it changes nothing.
  FileDescriptor fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (fd.get() < 0) throw InputError(path, std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw InputError(path, std::string("cannot stat: ") + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) throw InputError(path, "not a regular file");
  const std::string too_large = "file is larger than " + size_text(max_bytes);
  if (static_cast<uint64_t>(st.st_size) > max_bytes) throw InputError(path, too_large);
  Out out;
  try {
    out.reserve(static_cast<size_t>(st.st_size));
  } catch (const std::exception&) {  // bad_alloc, length_error: a (sparse) file larger than memory
    throw InputError(path, "file of " + std::to_string(st.st_size) + " bytes does not fit in memory");
  }
  char chunk[1 << 16];
  for (;;) {
    const ssize_t got = ::read(fd.get(), chunk, sizeof chunk);
    if (got < 0) {
      if (errno == EINTR) continue;
      throw InputError(path, std::string("read failed: ") + std::strerror(errno));
    }
    if (got == 0) break;
    if (out.size() + static_cast<uint64_t>(got) > max_bytes) throw InputError(path, too_large);  // it grew
    out.insert(out.end(), chunk, chunk + got);
  }
  return out;
}

}  // namespace

std::string read_whole_file(const std::string& path, uint64_t max_bytes) {
  return read_file_into<std::string>(path, max_bytes);
}

std::vector<uint8_t> read_file_bytes(const std::string& path, uint64_t max_bytes) {
  return read_file_into<std::vector<uint8_t>>(path, max_bytes);
}

}  // namespace dptrain
