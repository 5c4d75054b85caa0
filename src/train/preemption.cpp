#include "train/preemption.h"

#include <csignal>
#include <iterator>

namespace dptrain {

namespace {

constexpr int kSignals[] = {SIGTERM, SIGINT, SIGUSR1};
volatile std::sig_atomic_t g_signal = 0;
struct sigaction g_previous[sizeof(kSignals) / sizeof(kSignals[0])];

extern "C" void on_stop_signal(int sig) {
  // A second Ctrl-C gives up on the graceful stop. Repeated SIGTERM/SIGUSR1 are not counted: a
  // launcher and mpirun may both pass the same request on.
  if (sig == SIGINT && g_signal == SIGINT) {
    std::signal(sig, SIG_DFL);
    std::raise(sig);
    return;
  }
  if (g_signal == 0) g_signal = sig;
}

}  // namespace

PreemptionSignals::PreemptionSignals() {
  g_signal = 0;
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;  // a signal must not fail a read or write in progress
  for (size_t i = 0; i < std::size(kSignals); ++i) sigaction(kSignals[i], &action, &g_previous[i]);
}

PreemptionSignals::~PreemptionSignals() {
  for (size_t i = 0; i < std::size(kSignals); ++i) sigaction(kSignals[i], &g_previous[i], nullptr);
}

bool preemption_requested() { return g_signal != 0; }
int preemption_signal() { return g_signal; }

}  // namespace dptrain
