#include "train/preemption.h"

#include <sys/prctl.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <iterator>

#include "comm/bootstrap.h"  // launched_by_mpi

namespace dptrain {

namespace {

constexpr int kSignals[] = {SIGTERM, SIGINT, SIGUSR1, kLauncherGoneSignal};
// Lock-free atomic, not volatile sig_atomic_t: the handler may run on any thread (the checkpoint
// writer's too) while the training thread reads it, and only an atomic makes that well defined.
std::atomic<int> g_signal{0};
static_assert(std::atomic<int>::is_always_lock_free, "a signal handler may only touch lock-free atomics");
pid_t g_launcher = 0;  // the parent process when an MPI launcher started us; 0: not watched
struct sigaction g_previous[sizeof(kSignals) / sizeof(kSignals[0])];

extern "C" void on_stop_signal(int sig) {
  // PR_SET_PDEATHSIG fires when the launcher's thread that forked us ends; only a new parent
  // means the launcher itself is gone.
  if (sig == kLauncherGoneSignal && (g_launcher == 0 || getppid() == g_launcher)) return;
  // A second Ctrl-C gives up on the graceful stop. Repeated SIGTERM/SIGUSR1 are not counted: a
  // launcher and mpirun may both pass the same request on.
  if (sig == SIGINT && g_signal == SIGINT) {
    std::signal(sig, SIG_DFL);
    std::raise(sig);
    return;
  }
  int none = 0;
  g_signal.compare_exchange_strong(none, sig);  // the first request is the one reported
}

}  // namespace

PreemptionSignals::PreemptionSignals() {
  g_signal = 0;
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;  // a signal must not fail a read or write in progress
  for (size_t i = 0; i < std::size(kSignals); ++i) sigaction(kSignals[i], &action, &g_previous[i]);
  if (launched_by_mpi()) {
    // Our stdout is the launcher's pipe: once it is gone a log line must not kill the rank
    // (SIGPIPE) before it reaches the step boundary and writes its checkpoint.
    ::signal(SIGPIPE, SIG_IGN);
    g_launcher = getppid();
    prctl(PR_SET_PDEATHSIG, kLauncherGoneSignal);
    if (getppid() != g_launcher) g_signal = kLauncherGoneSignal;  // it died before prctl took effect
  }
}

PreemptionSignals::~PreemptionSignals() {
  if (g_launcher != 0) prctl(PR_SET_PDEATHSIG, 0);
  g_launcher = 0;
  for (size_t i = 0; i < std::size(kSignals); ++i) sigaction(kSignals[i], &g_previous[i], nullptr);
}

bool preemption_requested() { return g_signal != 0; }
int preemption_signal() { return g_signal; }

}  // namespace dptrain
