#include "e2e_support.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

namespace dptrain::e2e {

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

int decode_status(int st) { return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st); }

// What mpirun needs in a container (see tests/mpi/CMakeLists.txt for why each is there); values
// already in the environment win.
const bool kMpiEnvironment = [] {
  for (const char* kv : {"OMPI_ALLOW_RUN_AS_ROOT=1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1",
                         "OMPI_MCA_rmaps_base_oversubscribe=1", "OMPI_MCA_btl_vader_single_copy_mechanism=none",
                         "OMPI_MCA_btl=self,vader", "OMPI_MCA_btl_base_warn_component_unused=0", "NCCL_NVLS_ENABLE=0"}) {
    const std::string s(kv);
    const size_t eq = s.find('=');
    setenv(s.substr(0, eq).c_str(), s.substr(eq + 1).c_str(), /*overwrite=*/0);
  }
  return true;
}();

}  // namespace

std::string binary() { return DPTRAIN_BINARY; }
std::string source_dir() { return DPTRAIN_SOURCE_DIR; }
std::string mnist_dir() { return DPTRAIN_TEST_DATA_DIR; }

bool have_mnist() {
  return fs::exists(fs::path(mnist_dir()) / "t10k-labels-idx1-ubyte.gz") ||
         fs::exists(fs::path(mnist_dir()) / "t10k-labels-idx1-ubyte");
}

fs::path fresh_dir(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("dptrain_e2e_" + name + "_" + std::to_string(getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

Result run_shell(const std::string& command) {
  Result r;
  const double start = now();
  FILE* p = popen((command + " 2>&1").c_str(), "r");
  if (p == nullptr) return r;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.output.append(buf.data(), n);
  r.status = decode_status(pclose(p));
  r.seconds = now() - start;
  return r;
}

Result run_dptrain(const std::string& args) { return run_shell(binary() + " " + args); }

Result run_mpi(int ranks, const std::string& args) {
  return run_shell("mpirun -np " + std::to_string(ranks) + " --oversubscribe " + binary() + " " + args);
}

Background::Background(const std::string& command, const fs::path& log) : log_(log), start_(now()) {
  pid_ = fork();
  if (pid_ == 0) {
    setpgid(0, 0);
    // Start as a user's shell would: whatever the test runner ignores or blocks (a device harness
    // may ignore SIGTERM) must not reach the command, since a shell cannot trap a signal it was
    // started with ignored.
    for (int sig : {SIGTERM, SIGINT, SIGUSR1, SIGQUIT}) ::signal(sig, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    execl("/bin/sh", "sh", "-c", ("exec " + command + " > '" + log.string() + "' 2>&1").c_str(), nullptr);
    _exit(127);
  }
}

Background::~Background() {
  if (pid_ > 0) {
    kill(-pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
}

void Background::signal(int sig) { kill(pid_, sig); }

Result Background::wait() {
  Result r;
  int st = 0;
  waitpid(pid_, &st, 0);
  pid_ = -1;
  r.status = decode_status(st);
  r.seconds = now() - start_;
  std::ifstream in(log_);
  std::stringstream ss;
  ss << in.rdbuf();
  r.output = ss.str();
  return r;
}

bool wait_for_file(const fs::path& path, double seconds) {
  const double end = now() + seconds;
  while (now() < end) {
    if (fs::exists(path)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

double relative_difference(const LoadedCheckpoint& a, const LoadedCheckpoint& b) {
  double diff = 0, norm = 0;
  for (const SafeTensor& t : b.file.tensors) {
    if (t.name.rfind("optimizer.", 0) == 0) continue;
    const std::vector<float> x = a.tensor(t.name, t.shape), y = b.tensor(t.name, t.shape);
    for (size_t i = 0; i < y.size(); ++i) {
      diff += (double(x[i]) - y[i]) * (double(x[i]) - y[i]);
      norm += double(y[i]) * y[i];
    }
  }
  return std::sqrt(diff / norm);
}

bool same_tensors(const LoadedCheckpoint& a, const LoadedCheckpoint& b) {
  if (a.file.tensors.size() != b.file.tensors.size()) return false;
  for (const SafeTensor& t : b.file.tensors) {
    const std::vector<float> x = a.tensor(t.name, t.shape), y = b.tensor(t.name, t.shape);
    if (std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) != 0) return false;
  }
  return true;
}

LoadedCheckpoint latest_checkpoint(const fs::path& run_dir) {
  std::ifstream in(run_dir / "latest");
  std::string name;
  std::getline(in, name);
  return load_checkpoint((run_dir / name).string());
}

}  // namespace dptrain::e2e
