// Communicator: what the trainer needs from the other ranks. src/ model code never includes MPI or
// NCCL; it talks to this interface (and to GradientHook) only.
//
// Implementations: SingleRankCommunicator (one process: every call is the identity),
// MpiCommunicator (host buffers; the CPU backend, and GPU ranks sharing a GPU with --comm mpi),
// NcclCommunicator (device buffers on a stream).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "core/cuda_support.h"  // cudaStream_t

namespace dptrain {

enum class ReduceOp { Sum, Max, Min };

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string_view name() const = 0;

  /// In-place sum over ranks of `data` (host memory for MPI, device memory for NCCL). `stream`
  /// orders the operation for device implementations and is ignored by host ones.
  virtual void all_reduce_sum(std::span<float> data, cudaStream_t stream) = 0;
  /// Copies root's `data` to every rank, in place.
  virtual void broadcast(std::span<float> data, int root, cudaStream_t stream) = 0;
  /// Host scalar reduction, blocking; for metrics and agreeing on a stop. Always via the host path
  /// (MPI), so rank 0 evaluating never leaves others waiting inside NCCL.
  virtual double all_reduce_scalar(double value, ReduceOp op) = 0;
  /// Blocks until every rank has arrived (outside NCCL).
  virtual void barrier() = 0;
  /// Replaces every rank's `bytes` with root's (any length), blocking, through the host path (MPI)
  /// like all_reduce_scalar: for small host messages (rank 0's plan, train/plan_sharing.h), never tensors.
  virtual void broadcast_bytes(std::string& bytes, int root) = 0;
  /// Blocks the host until the work queued on CUDA `stream` (collectives included) is done. Use it
  /// instead of cudaStreamSynchronize wherever collectives may be pending: NCCL overrides it to
  /// watch for peer failures and a timeout (it aborts the communicator and throws naming the
  /// rank), where a plain synchronize would hang forever. The default synchronises the stream.
  virtual void synchronize(cudaStream_t stream);
};

/// The communicator of a one-process run.
class SingleRankCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string_view name() const override { return "single"; }
  void all_reduce_sum(std::span<float>, cudaStream_t) override {}
  void broadcast(std::span<float>, int, cudaStream_t) override {}
  double all_reduce_scalar(double value, ReduceOp) override { return value; }
  void barrier() override {}
  void broadcast_bytes(std::string&, int) override {}
};

}  // namespace dptrain
