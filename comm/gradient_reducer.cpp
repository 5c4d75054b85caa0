#include "comm/gradient_reducer.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "core/error.h"
#if DPTRAIN_HAVE_CUDA
#include <cuda_runtime.h>

#include "core/cuda_check.h"
#include "core/cuda_context.h"
#endif

namespace dptrain {

size_t bucket_elements(double bucket_mb) {
  if (!std::isfinite(bucket_mb) || bucket_mb <= 0)
    throw InputError("comm.bucket_mb", "must be a number > 0, got " + std::to_string(bucket_mb));
  const double elems = bucket_mb * 1024.0 * 1024.0 / sizeof(float);
  const double aligned = std::floor(elems / kBucketAlign) * kBucketAlign;
  if (aligned >= 1e15) throw InputError("comm.bucket_mb", "is absurdly large: " + std::to_string(bucket_mb));
  return std::max(kBucketAlign, static_cast<size_t>(aligned));
}

std::vector<Bucket> plan_buckets(size_t count, size_t cap) {
  if (cap == 0 || cap % kBucketAlign != 0)
    throw std::invalid_argument("plan_buckets: cap " + std::to_string(cap) + " is not a positive multiple of " +
                                std::to_string(kBucketAlign));
  std::vector<Bucket> buckets;
  size_t end = count;
  while (end > 0) {
    // Round the start up to the alignment so the bucket stays within the cap; only the first
    // (tail-most) bucket can come out smaller than the cap, and the last one (starting at 0).
    size_t begin = end > cap ? end - cap : 0;
    begin = (begin + kBucketAlign - 1) / kBucketAlign * kBucketAlign;
    buckets.push_back({begin, end});
    end = begin;
  }
  return buckets;
}

GradientReducer::GradientReducer(Communicator& comm, DeviceContext& ctx, std::span<float> grads,
                                 GradientReducerOptions options)
    : comm_(comm),
      grads_(grads),
      options_(options),
      buckets_(plan_buckets(grads.size(), bucket_elements(options.bucket_mb))),
      ready_(buckets_.size(), 0),
      on_cuda_(ctx.on_cuda()) {
#if DPTRAIN_HAVE_CUDA
  if (on_cuda_) {
    CUDA_CHECK(cudaSetDevice(ctx.cuda().device()));
    // Highest priority: a ready all-reduce should not queue behind the rest of backward's kernels.
    int least = 0;
    int greatest = 0;
    CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    cudaStream_t s = nullptr;
    CUDA_CHECK(cudaStreamCreateWithPriority(&s, cudaStreamNonBlocking, greatest));
    comm_stream_ = CudaStream(s);
    exchange_done_ = make_event();
  }
#endif
}

void GradientReducer::on_gradients_ready(DeviceContext& ctx, size_t begin, size_t end) {
  if (begin > end || end > grads_.size())
    throw std::out_of_range("GradientReducer: gradient range [" + std::to_string(begin) + ", " + std::to_string(end) +
                            ") outside the buffer of " + std::to_string(grads_.size()));
  if (begin == end) return;
  // Buckets are few (tens): a scan is cheaper to read than a search and costs nothing measurable.
  for (size_t b = 0; b < buckets_.size(); ++b) {
    const size_t lo = std::max(begin, buckets_[b].begin);
    const size_t hi = std::min(end, buckets_[b].end);
    if (lo >= hi) continue;
    ready_[b] += hi - lo;
    if (ready_[b] > buckets_[b].size() || b < next_)
      throw std::logic_error("GradientReducer: gradient elements of bucket " + std::to_string(b) +
                             " reported twice in one step");
  }
  if (options_.overlap) launch_pending(ctx, /*all=*/false);
}

void GradientReducer::fence_compute([[maybe_unused]] DeviceContext& ctx) {
#if DPTRAIN_HAVE_CUDA
  if (!on_cuda_) return;
  ctx.cuda().order_after_queued(comm_stream_);  // parameter gradients may be on the side stream
#endif
}

void GradientReducer::launch_pending(DeviceContext& ctx, bool all) {
  size_t last = next_;
  while (last < buckets_.size() && (all || ready_[last] == buckets_[last].size())) ++last;
  if (last == next_) return;
  // One fence covers every bucket launched now: their gradients are all queued already.
  fence_compute(ctx);
  for (; next_ < last; ++next_) {
    const Bucket& b = buckets_[next_];
    comm_.all_reduce_sum(grads_.subspan(b.begin, b.size()), comm_stream_.get());
  }
}

void GradientReducer::on_backward_done(DeviceContext& ctx) {
  if (options_.overlap) {
    launch_pending(ctx, /*all=*/true);
  } else if (!grads_.empty()) {
    fence_compute(ctx);
    comm_.all_reduce_sum(grads_, comm_stream_.get());
  }
#if DPTRAIN_HAVE_CUDA
  if (on_cuda_) {
    CUDA_CHECK(cudaEventRecord(exchange_done_, comm_stream_));
    CUDA_CHECK(cudaStreamWaitEvent(ctx.cuda().stream(), exchange_done_, 0));
  }
#endif
  std::fill(ready_.begin(), ready_.end(), size_t{0});
  next_ = 0;
}

}  // namespace dptrain
