// The one bootstrap of a dptrain job (nccl-tests' run()): MPI start-up and shut-down, this rank's
// place (world rank, rank on its host), the GPU it drives, and the choice of Communicator.
//
// Invariants: one MpiSession per process, created before any other MPI or NCCL object and destroyed
// after all of them; every rank calls make_communicator with the same arguments, and every decision
// it takes that could fail (a GPU shared by two ranks) is computed from data gathered from all
// ranks, so all ranks fail identically and early instead of some hanging inside NCCL.
// This header includes neither mpi.h nor nccl.h: the trainer includes it, model code never does.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "comm/communicator.h"
#include "core/device.h"

namespace dptrain {

/// Which collective library exchanges gradients (config `comm.backend`, flag `--comm`).
enum class CommKind { Auto, Nccl, Mpi };

/// Parses "auto" | "nccl" | "mpi"; InputError naming `source` (e.g. "--comm") otherwise.
CommKind parse_comm_kind(std::string_view text, std::string_view source = "comm.backend");
std::string_view comm_kind_name(CommKind kind);

/// Whether an MPI launcher (mpirun, or srun with PMI/PMIx) started this process: its environment
/// variables are there. Without one the job is a single process.
bool launched_by_mpi();

/// MPI for the life of the process: MPI_Init_thread (FUNNELED: only the main thread calls MPI) on
/// construction, MPI_Finalize on destruction. Works without mpirun (a singleton world of one rank).
/// If MPI is already initialised (by a test harness, say), it neither initialises nor finalises.
class MpiSession {
 public:
  /// When to start MPI. A singleton MPI_Init costs about 0.35 s (Open MPI 4.1), the largest part of
  /// a one-process run's start-up, and a process that no launcher started is a world of one rank
  /// that needs MPI only for an explicit `comm.backend: mpi` or `nccl`: WhenLaunched leaves MPI
  /// unstarted there until start() is called.
  enum class Start { Always, WhenLaunched };

  /// argc/argv may be null. Throws std::runtime_error if MPI cannot start or was already finalised.
  MpiSession(int* argc = nullptr, char*** argv = nullptr, Start when = Start::Always);
  /// Starts MPI now if it is not running yet (a WhenLaunched session that turns out to need it).
  void start(int* argc = nullptr, char*** argv = nullptr);
  bool started() const { return started_; }
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  /// Rank among the processes on this host (MPI_Comm_split_type SHARED), and their count.
  int local_rank() const { return local_rank_; }
  int local_size() const { return local_size_; }
  const std::string& hostname() const { return hostname_; }

  /// Ends the whole job (every rank) with exit status `code`: MPI_Abort(MPI_COMM_WORLD). For
  /// main()'s catch block when this rank failed and others may be waiting for it.
  [[noreturn]] void abort_job(int code) const noexcept;

 private:
  bool owns_mpi_ = false;
  bool started_ = false;
  int rank_ = 0;
  int size_ = 1;
  int local_rank_ = 0;
  int local_size_ = 1;
  std::string hostname_;
};

/// MPI_Abort(MPI_COMM_WORLD, code) if MPI is running, else std::_Exit(code). Never returns.
[[noreturn]] void abort_job(int code) noexcept;

/// The CUDA ordinal a rank drives: local_rank % visible_devices (ranks of one host spread over its
/// visible GPUs). InputError if no GPU is visible.
int choose_gpu(int local_rank, int visible_devices);

/// Where one rank runs: its host, the identity of its GPU (PCI bus id, so that ranks whose
/// CUDA_VISIBLE_DEVICES differ are still compared correctly), and how many GPUs it sees.
struct RankPlacement {
  std::string host;
  std::string gpu_id;
  int visible_gpus = 0;
};

/// The first host (in rank order) where two ranks drive the same GPU, as the user-facing message
/// "N ranks on host H but only G GPUs visible; ..."; nullopt when every rank has its own GPU.
std::optional<std::string> find_shared_gpu(const std::vector<RankPlacement>& placements);

/// Whether make_communicator(kind, device, session of `ranks` ranks) needs MPI running: every
/// communicator but the single-rank one does (NCCL's bootstrap goes through MPI).
bool communicator_needs_mpi(CommKind kind, Device device, int ranks);

/// Builds the communicator of this run. Collective: every rank must call it with equal arguments.
/// Throws std::logic_error if it needs MPI (communicator_needs_mpi) and the session has not started it.
///  - CPU: Auto -> MpiCommunicator if size > 1, else SingleRankCommunicator; Mpi -> MpiCommunicator
///    (even for one rank); Nccl -> InputError (NCCL needs device cuda).
///  - CUDA, one rank: Auto -> Single; Nccl -> NcclCommunicator of one rank; Mpi -> MpiCommunicator
///    (device spans staged through pinned host memory).
///  - CUDA, several ranks: Auto/Nccl -> NcclCommunicator on `cuda_device`, after checking (via an
///    MPI allgather) that no two ranks drive one GPU: InputError on every rank if they do; Mpi ->
///    MpiCommunicator (sharing a GPU is allowed; for debugging).
/// `timeout_s` bounds NCCL waits in Communicator::synchronize (MPI waits are unbounded).
std::unique_ptr<Communicator> make_communicator(CommKind kind, Device device, const MpiSession& session,
                                                int cuda_device, double timeout_s);

}  // namespace dptrain
