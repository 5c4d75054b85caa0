// Atomic file replacement with POSIX calls (open/write/fsync/rename), so every step's error is
// seen and reported; iostreams would hide fsync and partial-write failures.
#include "io/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <stdexcept>

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

/// Where a file replacing `path` is made first: a temp name in its folder (rename is only atomic
/// within one file system), unique among processes (pid) and among threads and calls of this one
/// (counter). Throws if `path` names no file.
struct TempBeside {
  std::string folder, temp_path;
};
TempBeside temp_beside(const std::string& path) {
  static std::atomic<uint64_t> counter{0};
  const size_t slash = path.find_last_of('/');
  const std::string folder =
      slash == std::string::npos ? std::string(1, '.') : slash == 0 ? std::string(1, '/') : path.substr(0, slash);
  const std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  if (name.empty() || name == "." || name == "..") throw std::runtime_error(path + ": not a file name");
  return {folder, (folder == "/" ? "" : folder) + "/." + name + ".tmp." + std::to_string(::getpid()) + "." +
                      std::to_string(counter++)};
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
  // Named members, not a structured binding: the lambda below captures temp_path, which clang
  // before 16 (the fuzzers' compiler) refuses for a binding.
  const TempBeside target = temp_beside(path);
  const std::string& folder = target.folder;
  const std::string& temp_path = target.temp_path;
  FileDescriptor fd(::open(temp_path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (fd.get() < 0) throw system_error(path, "cannot create temp file " + temp_path, errno);

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

bool link_file_atomically(const std::string& existing, const std::string& path) {
  const auto [folder, temp_path] = temp_beside(path);
  if (::link(existing.c_str(), temp_path.c_str()) != 0) {
    const int error = errno;
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
  FileDescriptor fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) throw InputError(path, std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw InputError(path, std::string("cannot stat: ") + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) throw InputError(path, "not a regular file");
  const std::string too_large = "file is larger than " + size_text(max_bytes);
  if (static_cast<uint64_t>(st.st_size) > max_bytes) throw InputError(path, too_large);
  Out out;
  out.reserve(static_cast<size_t>(st.st_size));
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
