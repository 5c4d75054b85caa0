// GradientReducer: sums the flat gradient buffer over ranks while backward is still running
// (PyTorch DDP's reducer). The buffer [0, n) is cut into buckets of at most bucket_mb MiB, laid out
// from the end of the buffer (backward finishes the last layers, i.e. the end of the buffer, first),
// with every boundary on a multiple of 64 elements. As the model reports finished slices
// (GradientHook::on_gradients_ready), a bucket whose elements are all final is all-reduced at once.
//
// Invariants:
//  - Buckets are launched strictly in bucket order (0, 1, ...), each exactly once per step, whatever
//    order the slices arrive in: every rank issues the same collectives in the same order, which
//    NCCL requires. A completed bucket waits for the ones before it.
//  - On CUDA the all-reduces run on the reducer's own high-priority stream, after events recorded
//    on the compute stream and its side stream (core/cuda_context.h); on_backward_done makes the
//    compute stream wait for that stream, so the optimizer waits for the exchange and nothing else,
//    and the host never waits at all. Only events, stream waits and the communicator's collective
//    are issued: with NCCL the whole step is capturable in a CUDA graph. Nothing is allocated after
//    construction.
//  - Gradients are summed, not averaged: the trainer scales the loss by 1/global_batch, so the sum
//    is the global mean gradient.
//  - On a CPU context the communicator is called in place on host memory, synchronously.
#pragma once

#include <cstddef>
#include <span>
#include <vector>

#include "comm/communicator.h"
#include "core/device_context.h"
#if DPTRAIN_HAVE_CUDA
#include "core/cuda_raii.h"
#endif
#include "model/gradient_hook.h"

namespace dptrain {

/// Elements [begin, end) of the flat gradient buffer.
struct Bucket {
  size_t begin = 0;
  size_t end = 0;
  size_t size() const { return end - begin; }
  friend bool operator==(const Bucket&, const Bucket&) = default;
};

/// Boundary alignment of buckets, in elements (ParamStore's tensor alignment: 256-byte pointers).
inline constexpr size_t kBucketAlign = 64;

/// `bucket_mb` MiB of floats, rounded down to a multiple of kBucketAlign, at least kBucketAlign.
/// InputError (comm.bucket_mb) unless bucket_mb is finite and > 0.
size_t bucket_elements(double bucket_mb);

/// Buckets covering [0, count) exactly, in launch order: buckets[0] ends at `count`, each next one
/// ends where the previous began, the last begins at 0. Every interior boundary is a multiple of
/// kBucketAlign and every bucket holds at most `cap` elements (`cap` must be a positive multiple of
/// kBucketAlign). Empty for count == 0.
std::vector<Bucket> plan_buckets(size_t count, size_t cap);

struct GradientReducerOptions {
  double bucket_mb = 1.0;  ///< bucket cap (config comm.bucket_mb)
  bool overlap = true;     ///< all-reduce buckets during backward; else one all-reduce at the end
};

class GradientReducer final : public GradientHook {
 public:
  /// `grads`: the model's flat gradient buffer (device memory on a CUDA context, host memory on a
  /// CPU one); it must outlive the reducer, as must `comm`. On CUDA, creates the communication
  /// stream and events on the current device.
  GradientReducer(Communicator& comm, DeviceContext& ctx, std::span<float> grads, GradientReducerOptions options);

  void on_gradients_ready(DeviceContext& ctx, size_t begin, size_t end) override;
  void on_backward_done(DeviceContext& ctx) override;

  size_t bucket_count() const { return buckets_.size(); }
  /// The bucket boundaries, in launch order (for profiling and logs).
  const std::vector<Bucket>& buckets() const { return buckets_; }
  bool overlap() const { return options_.overlap; }
  /// Buckets launched so far in the step under way (0 between steps).
  size_t launched() const { return next_; }
  /// The stream the collectives run on (null on a CPU context).
  cudaStream_t comm_stream() const { return comm_stream_.get(); }

 private:
  /// Launches buckets next_, next_+1, ... while complete (all of them when `all`).
  void launch_pending(DeviceContext& ctx, bool all);
  /// Orders the communication stream after the work queued so far on the compute and side streams.
  void fence_compute(DeviceContext& ctx);

  Communicator& comm_;
  std::span<float> grads_;
  GradientReducerOptions options_;
  std::vector<Bucket> buckets_;
  std::vector<size_t> ready_;  // per bucket: elements reported final this step
  size_t next_ = 0;            // first bucket not launched this step
  bool on_cuda_ = false;
#if DPTRAIN_HAVE_CUDA
  CudaStream comm_stream_;
  CudaEvent exchange_done_;   // recorded on the comm stream after the last bucket
#else
  struct NoStream {
    cudaStream_t get() const { return nullptr; }
  } comm_stream_;  // a CPU-only build (core/cuda_support.h) exchanges host memory only
#endif
};

}  // namespace dptrain
