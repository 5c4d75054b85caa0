// Support for the end-to-end tests: run dptrain (alone, under mpirun, or through the launch
// scripts) as a user would, and compare what the runs wrote.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <string>
#include <vector>

#include "io/checkpoint_format.h"

namespace dptrain::e2e {

namespace fs = std::filesystem;

struct Result {
  int status = -1;     ///< exit status, or 128 + signal
  std::string output;  ///< stdout and stderr together
  double seconds = 0;
};

/// Runs a shell command line to completion.
Result run_shell(const std::string& command);
/// `dptrain <args>`.
Result run_dptrain(const std::string& args);
/// `mpirun -np N --oversubscribe dptrain <args>`.
Result run_mpi(int ranks, const std::string& args);

/// A command started in the background (its own process group), output to a file.
class Background {
 public:
  Background(const std::string& command, const fs::path& log);
  ~Background();
  void signal(int sig);
  Result wait();
 private:
  pid_t pid_ = -1;
  fs::path log_;
  double start_ = 0;
};

/// Waits up to `seconds` for `path` to exist.
bool wait_for_file(const fs::path& path, double seconds);

fs::path fresh_dir(const std::string& name);
bool have_mnist();
std::string mnist_dir();
std::string binary();
std::string source_dir();

/// Every model tensor of `a` against `b`: ||a - b|| / ||b|| over all of them together.
double relative_difference(const LoadedCheckpoint& a, const LoadedCheckpoint& b);
/// True if both files hold bit-identical tensors (model and optimizer state).
bool same_tensors(const LoadedCheckpoint& a, const LoadedCheckpoint& b);

/// A run folder's newest checkpoint (the file `latest` names).
LoadedCheckpoint latest_checkpoint(const fs::path& run_dir);

}  // namespace dptrain::e2e
