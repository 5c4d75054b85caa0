// Preemption: SIGTERM, SIGINT or SIGUSR1 asks a run to stop at the next step boundary and write a
// checkpoint, instead of dying mid-write. Cluster schedulers send SIGTERM before they kill a job;
// mpirun forwards SIGTERM/SIGINT/SIGUSR1 to every rank (SIGUSR1 without aborting the job, which
// is why launch/train_mpi.sh turns its own SIGTERM into SIGUSR1). A second SIGINT gets the
// default action, so a user can still force an exit with Ctrl-C twice.
//
// Under an MPI launcher a rank also stops this way when the launcher dies: Open MPI 4.1's mpirun
// handles its own SIGTERM by aborting (and has been seen to crash doing so) without telling the
// ranks, which would otherwise train on as orphans. The kernel tells us (PR_SET_PDEATHSIG with
// kLauncherGoneSignal); the run then checkpoints at the next step boundary and ends.
#pragma once

#include <csignal>

namespace dptrain {

inline constexpr int kLauncherGoneSignal = SIGUSR2;

/// Installs the handlers for its lifetime and restores the previous ones after.
class PreemptionSignals {
 public:
  PreemptionSignals();
  ~PreemptionSignals();
  PreemptionSignals(const PreemptionSignals&) = delete;
  PreemptionSignals& operator=(const PreemptionSignals&) = delete;
};

/// Whether a stop signal has arrived since the handlers were installed (async-signal-safe flag).
bool preemption_requested();
/// The signal that asked, or 0.
int preemption_signal();

}  // namespace dptrain
