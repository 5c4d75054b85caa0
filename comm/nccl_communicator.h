// NcclCommunicator: gradient collectives with NCCL on device memory, queued on the caller's stream
// (capturable in a CUDA graph); scalar reductions and barriers go through MPI on the host, never
// NCCL, so a rank busy elsewhere (rank 0 evaluating) keeps nobody inside an NCCL kernel.
//
// Invariants:
//  - One GPU per rank (make_communicator checks this first; NCCL itself refuses duplicates).
//  - The unique id travels by MPI_Bcast from rank 0 (nccl-tests' bootstrap); every rank calls
//    ncclCommInitRank with its world rank, so NCCL ranks equal MPI ranks.
//  - The ncclComm_t is destroyed exactly once: ncclCommDestroy normally, ncclCommAbort after an
//    error, a timeout, or when destroyed during exception unwinding (a destroy could wait forever
//    for peers that will never arrive).
//  - Sets NCCL_NVLS_ENABLE=0 in the environment before the first communicator if the user did not
//    set it: NVLink SHARP (multicast) must stay off on the lent machines.
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <string>

#include "comm/communicator.h"
#include "comm/mpi_communicator.h"

namespace dptrain {

class MpiSession;

/// Move-only owner of an ncclComm_t (destroy, or abort on error paths).
class NcclComm {
 public:
  NcclComm() = default;
  explicit NcclComm(ncclComm_t comm) : comm_(comm) {}
  ~NcclComm();
  NcclComm(NcclComm&& other) noexcept;
  NcclComm& operator=(NcclComm&& other) noexcept;
  NcclComm(const NcclComm&) = delete;
  NcclComm& operator=(const NcclComm&) = delete;

  ncclComm_t get() const { return comm_; }
  explicit operator bool() const { return comm_ != nullptr; }
  /// ncclCommAbort: kernels of this communicator still running return, resources are freed.
  void abort() noexcept;
  /// ncclCommDestroy (ncclCommAbort when called during exception unwinding).
  void reset() noexcept;

 private:
  ncclComm_t comm_ = nullptr;
};

class NcclCommunicator final : public Communicator {
 public:
  /// Collective over MPI_COMM_WORLD. Makes `cuda_device` current on this thread. `timeout_s` bounds
  /// synchronize(); it must be > 0.
  NcclCommunicator(const MpiSession& session, int cuda_device, double timeout_s);
  ~NcclCommunicator() override = default;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string_view name() const override { return "nccl"; }

  /// ncclAllReduce(ncclFloat, ncclSum) in place on `stream`; `data` must be device memory.
  void all_reduce_sum(std::span<float> data, cudaStream_t stream) override;
  /// ncclBroadcast in place on `stream`.
  void broadcast(std::span<float> data, int root, cudaStream_t stream) override;
  /// Through MPI (host), see the file comment.
  double all_reduce_scalar(double value, ReduceOp op) override { return host_.all_reduce_scalar(value, op); }
  void barrier() override { host_.barrier(); }
  void broadcast_bytes(std::string& bytes, int root) override { host_.broadcast_bytes(bytes, root); }
  /// wait_for(stream, timeout_s).
  void synchronize(cudaStream_t stream) override { wait_for(stream, timeout_s_); }

  /// Blocks until `stream` (or `event`) has completed, polling cudaStreamQuery/cudaEventQuery and
  /// ncclCommGetAsyncError. On an NCCL asynchronous error or after `timeout_s` seconds it aborts the
  /// communicator and throws CommError naming this rank, its host and GPU. A CUDA error throws
  /// CudaError.
  void wait_for(cudaStream_t stream, double timeout_s);
  void wait_for(cudaEvent_t event, double timeout_s);

  /// Aborts the NCCL communicator; every later collective throws CommError. Idempotent.
  void abort() noexcept { comm_.abort(); }
  bool aborted() const { return !comm_; }
  ncclComm_t handle() const { return comm_.get(); }
  double timeout_s() const { return timeout_s_; }

 private:
  template <typename Query>
  void poll(Query query, double timeout_s, const char* what);
  ncclComm_t live_comm() const;

  MpiCommunicator host_;
  int rank_ = 0;
  int size_ = 1;
  int cuda_device_ = 0;
  double timeout_s_ = 0;
  std::string where_;  // "rank R of N (host H, GPU d)", for error messages
  NcclComm comm_;
};

}  // namespace dptrain
