// MpiCommunicator: collectives over MPI on host memory; the CPU backend's communicator, and the
// debugging path for GPU ranks that share a GPU (--comm mpi), where device spans are staged through
// one pinned host buffer.
//
// Invariants:
//  - Results are bitwise identical on every rank: sums are MPI_Reduce to rank 0 followed by
//    MPI_Bcast, so only rank 0 rounds (an MPI_Allreduce may let ranks sum in different orders), and
//    for a fixed rank count and size the reduction order is fixed, so runs repeat exactly.
//  - Works on its own duplicate of MPI_COMM_WORLD with MPI_ERRORS_RETURN, so its traffic never
//    matches anyone else's and MPI errors become CommError exceptions (MPI_CHECK).
//  - Device spans block the host (copy out, reduce, copy back, synchronise): never captured in a
//    CUDA graph. Host spans never touch CUDA, so CPU runs need no driver.
#pragma once

#include <mpi.h>

#include <cstddef>
#include <memory>

#include "comm/communicator.h"
#include "core/device.h"

namespace dptrain {

class MpiSession;

class MpiCommunicator final : public Communicator {
 public:
  /// `device`: where the spans handed to it may live. Device::Cpu never calls CUDA; Device::Cuda
  /// asks cudaPointerGetAttributes per call and stages device spans.
  explicit MpiCommunicator(const MpiSession& session, Device device = Device::Cpu);
  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string_view name() const override { return "mpi"; }

  void all_reduce_sum(std::span<float> data, cudaStream_t stream) override;
  void broadcast(std::span<float> data, int root, cudaStream_t stream) override;
  double all_reduce_scalar(double value, ReduceOp op) override;
  void barrier() override;
  void broadcast_bytes(std::string& bytes, int root) override;

  /// Grows the pinned staging buffer to `count` floats now (it otherwise grows on the first
  /// device span larger than it, then never again). No-op on a Device::Cpu communicator.
  void reserve_staging(size_t count);
  size_t staging_capacity() const { return staging_count_; }

 private:
  struct PinnedDeleter {
    void operator()(float* p) const noexcept;
  };
  bool is_device_pointer(const float* p) const;
  /// Runs `host_op` on `data`, staging it through pinned memory if it is device memory.
  template <typename HostOp>
  void on_host(std::span<float> data, cudaStream_t stream, HostOp host_op);
  void reduce_then_broadcast(std::span<float> data);
  void broadcast_host(std::span<float> data, int root);

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
  Device device_ = Device::Cpu;
  std::unique_ptr<float, PinnedDeleter> staging_;
  size_t staging_count_ = 0;
};

}  // namespace dptrain
