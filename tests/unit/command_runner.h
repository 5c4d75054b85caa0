// Running a command from a test: its exit status and its output (stdout and stderr together), as
// a user sees them. Shared by the tests that run the dptrain binary (CLI, curves, run messages,
// divergence; the GPU tests include it too).
#pragma once

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

namespace dptrain::test_support {

struct CommandResult {
  int status = -1;     ///< the exit status, or 128 + the signal that ended it; -1: it did not start
  std::string output;  ///< stdout and stderr together
};

/// Runs `command` through the shell, with stderr joined to stdout.
inline CommandResult run_command(const std::string& command) {
  CommandResult r;
  FILE* p = popen((command + " 2>&1").c_str(), "r");
  if (p == nullptr) return r;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.output.append(buf.data(), n);
  const int st = pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  return r;
}

#ifdef DPTRAIN_BINARY
/// `dptrain ARGS`, the binary under test.
inline CommandResult run_dptrain(const std::string& args) {
  return run_command(std::string(DPTRAIN_BINARY) + " " + args);
}
#endif

}  // namespace dptrain::test_support
