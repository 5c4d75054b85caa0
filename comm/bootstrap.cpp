#include "comm/bootstrap.h"

#include <mpi.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <stdexcept>
#include <string>

#include <unistd.h>

#include "comm/mpi_check.h"
#include "comm/mpi_communicator.h"
#include "core/error.h"
#if DPTRAIN_HAVE_CUDA
#include <cuda_runtime.h>

#include "comm/nccl_communicator.h"
#include "core/cuda_check.h"
#endif

namespace dptrain {

CommKind parse_comm_kind(std::string_view text, std::string_view source) {
  if (text == "auto") return CommKind::Auto;
  if (text == "nccl") return CommKind::Nccl;
  if (text == "mpi") return CommKind::Mpi;
  throw InputError(source, "unknown communication backend '" + std::string(text) + "' (expected auto, nccl or mpi)");
}

std::string_view comm_kind_name(CommKind kind) {
  switch (kind) {
    case CommKind::Auto: return "auto";
    case CommKind::Nccl: return "nccl";
    case CommKind::Mpi: return "mpi";
  }
  return "?";
}

bool launched_by_mpi() {
  // Open MPI's mpirun, PMIx (Open MPI 5, srun --mpi=pmix), PMI-1/2 (MPICH's hydra, srun --mpi=pmi2)
  // and MVAPICH each set one of these in every process they start.
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"})
    if (std::getenv(name) != nullptr) return true;
  return false;
}

MpiSession::MpiSession(int* argc, char*** argv, Start when) {
  if (when == Start::Always || launched_by_mpi()) {
    start(argc, argv);
    return;
  }
  char name[256] = {};
  if (gethostname(name, sizeof name - 1) == 0) hostname_ = name;
}

void MpiSession::start(int* argc, char*** argv) {
  if (started_) return;
  int initialized = 0;
  int finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (finalized) throw std::runtime_error("MpiSession: MPI was already finalised in this process");
  if (!initialized) {
    // FUNNELED: the main thread makes every MPI call; other threads (data loading, NCCL's own)
    // never do.
    int provided = 0;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
      throw std::runtime_error("MpiSession: MPI_Init_thread failed");
    owns_mpi_ = true;
  }
  MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank_));
  MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size_));
  // The ranks sharing this host's memory are the ones sharing its GPUs.
  MPI_Comm node = MPI_COMM_NULL;
  MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node));
  MPI_CHECK(MPI_Comm_rank(node, &local_rank_));
  MPI_CHECK(MPI_Comm_size(node, &local_size_));
  MPI_CHECK(MPI_Comm_free(&node));
  char name[MPI_MAX_PROCESSOR_NAME] = {};
  int len = 0;
  MPI_CHECK(MPI_Get_processor_name(name, &len));
  hostname_.assign(name, static_cast<size_t>(len));
  started_ = true;
}

MpiSession::~MpiSession() {
  if (!owns_mpi_) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  // An exception passing through the session means this rank gives up while others may be inside a
  // collective; MPI_Finalize would then wait for them forever.
  if (std::uncaught_exceptions() > 0 && size_ > 1) abort_job(1);
  MPI_Finalize();
}

void MpiSession::abort_job(int code) const noexcept { ::dptrain::abort_job(code); }

void abort_job(int code) noexcept {
  int initialized = 0;
  int finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

int choose_gpu(int local_rank, int visible_devices) {
  if (local_rank < 0) throw std::invalid_argument("choose_gpu: negative local rank");
  if (visible_devices <= 0) throw InputError("device", "cuda requested but no CUDA GPU is visible on this host");
  return local_rank % visible_devices;
}

std::optional<std::string> find_shared_gpu(const std::vector<RankPlacement>& placements) {
  // Hosts in order of their first rank, so every rank reports the same host.
  std::vector<std::string> hosts;
  std::map<std::string, std::vector<int>> ranks_of_host;
  for (int r = 0; r < static_cast<int>(placements.size()); ++r) {
    auto& ranks = ranks_of_host[placements[r].host];
    if (ranks.empty()) hosts.push_back(placements[r].host);
    ranks.push_back(r);
  }
  for (const std::string& host : hosts) {
    const std::vector<int>& ranks = ranks_of_host[host];
    std::map<std::string, int> first_rank_of_gpu;
    int visible = 0;
    for (int r : ranks) visible = std::max(visible, placements[r].visible_gpus);
    for (int r : ranks) {
      auto [it, inserted] = first_rank_of_gpu.emplace(placements[r].gpu_id, r);
      if (inserted) continue;
      return std::to_string(ranks.size()) + " ranks on host " + host + " but only " + std::to_string(visible) +
             " GPUs visible (ranks " + std::to_string(it->second) + " and " + std::to_string(r) +
             " both drive GPU " + placements[r].gpu_id +
             "); NCCL refuses two ranks on one GPU: use one rank per GPU, or --comm mpi to debug";
    }
  }
  return std::nullopt;
}

#if DPTRAIN_HAVE_CUDA
namespace {

// One rank's placement as fixed-size bytes for MPI_Allgather. `error` is set instead of throwing
// on this rank alone, so that every rank learns of it and fails the same way.
struct PlacementWire {
  char host[MPI_MAX_PROCESSOR_NAME];
  char gpu_id[64];
  char error[256];
  int visible_gpus;
};

void copy_text(char* dst, size_t cap, std::string_view src) {
  const size_t n = std::min(cap - 1, src.size());
  std::memcpy(dst, src.data(), n);
  dst[n] = '\0';
}

std::vector<RankPlacement> gather_placements(const MpiSession& session, int cuda_device) {
  PlacementWire mine{};
  copy_text(mine.host, sizeof mine.host, session.hostname());
  try {
    int visible = 0;
    CUDA_CHECK(cudaGetDeviceCount(&visible));
    mine.visible_gpus = visible;
    if (cuda_device < 0 || cuda_device >= visible)
      throw InputError("device", "GPU " + std::to_string(cuda_device) + " requested but " +
                                     std::to_string(visible) + " visible");
    CUDA_CHECK(cudaDeviceGetPCIBusId(mine.gpu_id, sizeof mine.gpu_id, cuda_device));
  } catch (const std::exception& e) {
    copy_text(mine.error, sizeof mine.error, e.what());
  }
  std::vector<PlacementWire> all(static_cast<size_t>(session.size()));
  MPI_CHECK(MPI_Allgather(&mine, sizeof mine, MPI_BYTE, all.data(), sizeof mine, MPI_BYTE, MPI_COMM_WORLD));
  std::vector<RankPlacement> placements;
  for (int r = 0; r < session.size(); ++r) {
    const PlacementWire& w = all[static_cast<size_t>(r)];
    if (w.error[0] != '\0')
      throw InputError("device",
                       "rank " + std::to_string(r) + " on host " + w.host + " cannot use its GPU: " + w.error);
    placements.push_back({w.host, w.gpu_id, w.visible_gpus});
  }
  return placements;
}

}  // namespace
#endif

bool communicator_needs_mpi(CommKind kind, Device device, int ranks) {
  return ranks > 1 || kind == CommKind::Mpi || (kind == CommKind::Nccl && device == Device::Cuda);
}

std::unique_ptr<Communicator> make_communicator(CommKind kind, Device device, const MpiSession& session,
                                                int cuda_device, double timeout_s) {
  if (communicator_needs_mpi(kind, device, session.size()) && !session.started())
    throw std::logic_error("make_communicator: the communicator needs MPI, and the session has not started it");
  if (device == Device::Cpu) {
    if (kind == CommKind::Nccl)
      throw InputError("comm.backend", "nccl needs device cuda; use auto or mpi with the CPU backend");
    if (kind == CommKind::Mpi || session.size() > 1) return std::make_unique<MpiCommunicator>(session, Device::Cpu);
    return std::make_unique<SingleRankCommunicator>();
  }
#if !DPTRAIN_HAVE_CUDA
  (void)cuda_device, (void)timeout_s;
  throw_built_without_cuda();
#else
  if (kind == CommKind::Mpi) return std::make_unique<MpiCommunicator>(session, Device::Cuda);
  if (kind == CommKind::Auto && session.size() == 1) return std::make_unique<SingleRankCommunicator>();
  // Fail here, on every rank alike, rather than inside ncclCommInitRank (which fails on some ranks
  // and leaves the others waiting).
  if (auto problem = find_shared_gpu(gather_placements(session, cuda_device)))
    throw InputError("comm.backend", *problem);
  return std::make_unique<NcclCommunicator>(session, cuda_device, timeout_s);
#endif
}

}  // namespace dptrain
