// write_file_atomically: a failed write leaves the old file and no temp file; a process killed at
// a random moment while rewriting leaves one of the complete versions.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "io/atomic_file.h"

namespace dptrain {
namespace {

namespace fs = std::filesystem;

class AtomicFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("dptrain-atomic-" + std::to_string(::getpid()) + "-" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  size_t entries() const { return static_cast<size_t>(std::distance(fs::directory_iterator(dir_), fs::directory_iterator())); }
  fs::path dir_;
};

TEST_F(AtomicFileTest, WritesAndReplaces) {
  const std::string path = (dir_ / "f").string();
  write_file_atomically(path, std::string_view("first"));
  EXPECT_EQ(read_whole_file(path), "first");
  write_file_atomically(path, std::string_view("second, longer"));
  EXPECT_EQ(read_whole_file(path), "second, longer");
  write_file_atomically(path, std::string_view(""));
  EXPECT_EQ(read_whole_file(path), "");
  EXPECT_EQ(entries(), 1u);  // no temp files left behind
}

TEST_F(AtomicFileTest, FailedWriteKeepsOldFileAndRemovesTemp) {
  const std::string path = (dir_ / "f").string();
  write_file_atomically(path, std::string_view("old contents"));

  // Make the temp file's writes fail for real: a file-size limit (EFBIG; SIGXFSZ ignored).
  struct rlimit saved {};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved), 0);
  struct sigaction ignore {}, previous {};
  ignore.sa_handler = SIG_IGN;
  ASSERT_EQ(::sigaction(SIGXFSZ, &ignore, &previous), 0);
  struct rlimit small = saved;
  small.rlim_cur = 4096;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  std::string error;
  try {
    write_file_atomically(path, std::string(1 << 20, 'x'));
  } catch (const std::runtime_error& e) {
    error = e.what();
  }
  ::setrlimit(RLIMIT_FSIZE, &saved);
  ::sigaction(SIGXFSZ, &previous, nullptr);

  EXPECT_NE(error.find(path + ": write failed: File too large"), std::string::npos) << error;
  EXPECT_EQ(read_whole_file(path), "old contents");
  EXPECT_EQ(entries(), 1u);
}

TEST_F(AtomicFileTest, ErrorsNameThePath) {
  const std::string no_folder = (dir_ / "missing" / "f").string();
  try {
    write_file_atomically(no_folder, std::string_view("x"));
    ADD_FAILURE();
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()).rfind(no_folder + ": cannot create temp file", 0), 0u) << e.what();
  }
  // The target is a folder: rename fails, the folder stays, the temp goes.
  fs::create_directories(dir_ / "target" / "inside");
  EXPECT_THROW(write_file_atomically((dir_ / "target").string(), std::string_view("x")), std::runtime_error);
  EXPECT_TRUE(fs::is_directory(dir_ / "target" / "inside"));
  EXPECT_EQ(entries(), 1u);
  EXPECT_THROW(write_file_atomically((dir_ / "").string(), std::string_view("x")), std::runtime_error);
  EXPECT_THROW(read_whole_file((dir_ / "nothing").string()), InputError);
}

// The one whole-file reader refuses what is not a regular file and what exceeds its limit, naming
// the file; at the limit it reads the whole file, as text or bytes.
TEST_F(AtomicFileTest, ReaderRefusesFoldersAndFilesOverItsLimit) {
  const std::string path = (dir_ / "five").string();
  write_file_atomically(path, std::string_view("12345"));
  EXPECT_EQ(read_whole_file(path, 5), "12345");
  EXPECT_EQ(read_file_bytes(path, 5), (std::vector<uint8_t>{'1', '2', '3', '4', '5'}));
  try {
    read_file_bytes(path, 4);
    ADD_FAILURE();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(path + ": file is larger than 4 bytes"), std::string::npos) << e.what();
  }
  try {
    read_whole_file(dir_.string());
    ADD_FAILURE();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("not a regular file"), std::string::npos) << e.what();
  }
}

// A process killed mid-write leaves its temp file; a container restarts the trainer under the same
// pid. Temp names left by an earlier process of this pid (the names it drew: pid, then a counter
// from 0) must not stop a write or a link.
TEST_F(AtomicFileTest, TempFilesLeftByAnEarlierProcessOfTheSamePidDoNotCollide) {
  const std::string pid = std::to_string(::getpid());
  for (int k = 0; k < 200; ++k)
    for (const char* name : {".f.tmp.", ".g.tmp."}) std::ofstream(dir_ / (name + pid + "." + std::to_string(k))) << "left";
  const std::string path = (dir_ / "f").string();
  write_file_atomically(path, std::string_view("new"));
  EXPECT_EQ(read_whole_file(path), "new");
  ASSERT_TRUE(link_file_atomically(path, (dir_ / "g").string()));
  EXPECT_EQ(read_whole_file((dir_ / "g").string()), "new");
  EXPECT_EQ(entries(), 402u);  // the 400 left files, f and g: no temp of this process's left behind
}

// Temp files of interrupted writes are removed at a run's start: an earlier process's with this
// pid (old names without a token, or another token), and a dead process's. A live process's stays,
// and so does this process's own and anything that is not a temp name.
TEST_F(AtomicFileTest, StaleTempFilesOfInterruptedWritesAreRemoved) {
  const pid_t dead = ::fork();
  if (dead == 0) ::_exit(0);
  ASSERT_GT(dead, 0);
  ASSERT_EQ(::waitpid(dead, nullptr, 0), dead);
  const std::string me = std::to_string(::getpid());
  const std::vector<std::string> stale = {".ckpt-00000040.safetensors.tmp." + me + ".3",
                                          ".latest.tmp." + me + ".0123456789abcdef.7",
                                          ".metrics.jsonl.tmp." + std::to_string(dead) + ".fedcba9876543210.0"};
  const std::vector<std::string> kept = {".f.tmp.1.0123456789abcdef.0",  // pid 1 lives
                                         "ckpt-00000040.safetensors", ".hidden", "x.tmp.1.2"};
  for (const auto& names : {stale, kept})
    for (const std::string& name : names) std::ofstream(dir_ / name) << "partial";
  std::vector<std::string> removed = remove_stale_temp_files(dir_.string());
  std::sort(removed.begin(), removed.end());
  std::vector<std::string> expected = stale;
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(removed, expected);
  for (const std::string& name : kept) EXPECT_TRUE(fs::exists(dir_ / name)) << name;
  EXPECT_TRUE(remove_stale_temp_files((dir_ / "missing").string()).empty());
}

// A file too large to hold in memory (sparse: no disk used) is bad input naming the file, not a
// bad_alloc that would stop `--resume auto` from trying an older checkpoint.
TEST_F(AtomicFileTest, ReaderRefusesAFileThatCannotFitInMemory) {
  // Where the kernel grants any allocation (overcommit mode 1) the reserve succeeds and the read
  // would walk 8 TiB of zeros: that machine cannot show this.
  int overcommit = 0;
  std::ifstream("/proc/sys/vm/overcommit_memory") >> overcommit;
  if (overcommit == 1) GTEST_SKIP() << "vm.overcommit_memory is 1: every allocation is granted";
  const std::string path = (dir_ / "huge").string();
  { std::ofstream(path) << "x"; }
  std::error_code error;
  fs::resize_file(path, uint64_t{1} << 43, error);  // 8 TiB (ext4 allows up to 16)
  if (error) GTEST_SKIP() << "this file system refuses an 8 TiB sparse file: " << error.message();
  try {
    read_file_bytes(path);
    ADD_FAILURE();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(path + ": file of 8796093022208 bytes does not fit in memory"),
              std::string::npos)
        << e.what();
  }
}

TEST_F(AtomicFileTest, KilledWriterLeavesACompleteVersion) {
  const std::string path = (dir_ / "f").string();
  const size_t size = 8 << 20;
  write_file_atomically(path, std::string(size, 'A'));
  for (int round = 0; round < 8; ++round) {
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      for (int i = 0;; ++i) {
        try {
          write_file_atomically(path, std::string(size, i % 2 ? 'A' : 'B'));
        } catch (...) {
          ::_exit(3);
        }
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5 + 13 * round));
    ::kill(child, SIGKILL);
    int status = 0;
    ::waitpid(child, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status)) << "the writer failed by itself";
    const std::string contents = read_whole_file(path);
    ASSERT_EQ(contents.size(), size) << "round " << round;
    EXPECT_TRUE(contents.find_first_not_of(contents[0]) == std::string::npos &&
                (contents[0] == 'A' || contents[0] == 'B'))
        << "torn file in round " << round;
  }
}

}  // namespace
}  // namespace dptrain
