#include "comm/nccl_communicator.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <exception>
#include <stdexcept>
#include <thread>
#include <utility>

#include "comm/bootstrap.h"
#include "comm/comm_error.h"
#include "comm/mpi_check.h"
#include "core/error.h"
#include "core/cuda_check.h"

namespace dptrain {

NcclComm::~NcclComm() { reset(); }

NcclComm::NcclComm(NcclComm&& other) noexcept : comm_(std::exchange(other.comm_, nullptr)) {}

NcclComm& NcclComm::operator=(NcclComm&& other) noexcept {
  if (this != &other) {
    reset();
    comm_ = std::exchange(other.comm_, nullptr);
  }
  return *this;
}

void NcclComm::abort() noexcept {
  if (comm_ != nullptr) (void)ncclCommAbort(std::exchange(comm_, nullptr));
}

void NcclComm::reset() noexcept {
  if (comm_ == nullptr) return;
  // During unwinding a peer may be the one that failed: a destroy could then wait for it forever.
  if (std::uncaught_exceptions() > 0)
    abort();
  else
    (void)ncclCommDestroy(std::exchange(comm_, nullptr));
}

NcclCommunicator::NcclCommunicator(const MpiSession& session, int cuda_device, double timeout_s)
    : host_(session, Device::Cpu),
      rank_(session.rank()),
      size_(session.size()),
      cuda_device_(cuda_device),
      timeout_s_(timeout_s) {
  if (!(timeout_s > 0)) throw InputError("comm.timeout_s", "must be > 0, got " + std::to_string(timeout_s));
  where_ = "rank " + std::to_string(rank_) + " of " + std::to_string(size_) + " (host " + session.hostname() +
           ", GPU " + std::to_string(cuda_device) + ")";
  // Off unless the user explicitly turns it on (see the file comment); setenv before NCCL reads it.
  setenv("NCCL_NVLS_ENABLE", "0", /*overwrite=*/0);
  CUDA_CHECK(cudaSetDevice(cuda_device));

  ncclUniqueId id{};
  if (rank_ == 0) NCCL_CHECK(ncclGetUniqueId(&id));
  MPI_CHECK(MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD));
  ncclComm_t comm = nullptr;
  NCCL_CHECK(ncclCommInitRank(&comm, size_, id, rank_));
  comm_ = NcclComm(comm);
}

ncclComm_t NcclCommunicator::live_comm() const {
  if (!comm_) throw CommError("NCCL communicator of " + where_ + " was aborted after an earlier error");
  return comm_.get();
}

void NcclCommunicator::all_reduce_sum(std::span<float> data, cudaStream_t stream) {
  ncclComm_t comm = live_comm();
  if (data.empty()) return;
  NCCL_CHECK(ncclAllReduce(data.data(), data.data(), data.size(), ncclFloat, ncclSum, comm, stream));
}

void NcclCommunicator::broadcast(std::span<float> data, int root, cudaStream_t stream) {
  ncclComm_t comm = live_comm();
  if (root < 0 || root >= size_)
    throw std::invalid_argument("broadcast root " + std::to_string(root) + " outside [0, " +
                                std::to_string(size_) + ")");
  if (data.empty()) return;
  NCCL_CHECK(ncclBroadcast(data.data(), data.data(), data.size(), ncclFloat, root, comm, stream));
}

template <typename Query>
void NcclCommunicator::poll(Query query, double timeout_s, const char* what) {
  ncclComm_t comm = live_comm();
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  const auto limit = std::chrono::duration<double>(timeout_s);
  // Back off from a few microseconds (a finished step is noticed quickly) to 1 ms (a long wait
  // costs no CPU worth mentioning).
  auto nap = std::chrono::microseconds(2);
  for (;;) {
    const cudaError_t done = query();
    if (done == cudaSuccess) return;
    if (done != cudaErrorNotReady) throw_library_error("CUDA", what, __FILE__, __LINE__, cudaGetErrorString(done));

    ncclResult_t async = ncclSuccess;
    NCCL_CHECK(ncclCommGetAsyncError(comm, &async));
    if (async != ncclSuccess && async != ncclInProgress) {
      const std::string reason = ncclGetErrorString(async);
      abort();
      throw CommError("NCCL asynchronous error '" + reason + "' on " + where_ + " while waiting in " + what +
                      "; communicator aborted");
    }
    if (Clock::now() - start > limit) {
      abort();
      throw CommError("waiting in " + std::string(what) + " on " + where_ + ": not done within " +
                      std::to_string(timeout_s) +
                      " s (comm.timeout_s); a peer rank is probably stuck or dead; communicator aborted");
    }
    std::this_thread::sleep_for(nap);
    nap = std::min(nap * 2, std::chrono::microseconds(1000));
  }
}

void NcclCommunicator::wait_for(cudaStream_t stream, double timeout_s) {
  poll([stream] { return cudaStreamQuery(stream); }, timeout_s, "cudaStreamQuery(stream)");
}

void NcclCommunicator::wait_for(cudaEvent_t event, double timeout_s) {
  poll([event] { return cudaEventQuery(event); }, timeout_s, "cudaEventQuery(event)");
}

}  // namespace dptrain
