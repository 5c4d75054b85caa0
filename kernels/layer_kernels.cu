#include <cfloat>

#include "core/philox.h"
#include "cuda/check.h"
#include "kernels/layer_kernels.h"

namespace dptrain::kernels {

namespace {

constexpr int kThreads = 256;

int grid_for(long n) {
  const long b = (n + kThreads - 1) / kThreads;
  return static_cast<int>(b < 1 ? 1 : (b > 65535L * 16 ? 65535L * 16 : b));
}

__global__ void dropout_forward_kernel(const float* x, float* y, float* mask, int n, int per_sample, float p,
                                       float scale, uint32_t layer, const StepState* step) {
  const StepInfo info = step->info;
  const long total = static_cast<long>(n) * per_sample;
  for (long i = blockIdx.x * long{blockDim.x} + threadIdx.x; i < total; i += long{gridDim.x} * blockDim.x) {
    const uint32_t sample = info.first_sample + static_cast<uint32_t>(i / per_sample);
    const uint32_t element = static_cast<uint32_t>(i % per_sample);
    const float m = philox::dropout_uniform(info.seed, info.epoch, layer, sample, element) >= p ? scale : 0.0f;
    mask[i] = m;
    y[i] = x[i] * m;
  }
}

__global__ void multiply_kernel(const float* a, const float* b, float* out, long count) {
  for (long i = blockIdx.x * long{blockDim.x} + threadIdx.x; i < count; i += long{gridDim.x} * blockDim.x)
    out[i] = a[i] * b[i];
}

__global__ void add_bias_rows_kernel(float* y, const float* b, int n, int features) {
  const long total = static_cast<long>(n) * features;
  for (long i = blockIdx.x * long{blockDim.x} + threadIdx.x; i < total; i += long{gridDim.x} * blockDim.x)
    y[i] += b[i % features];
}

__global__ void bias_grad_rows_kernel(const float* dy, float* db, int n, int features) {
  const int o = blockIdx.x * blockDim.x + threadIdx.x;
  if (o >= features) return;
  float acc = 0.0f;
  for (int i = 0; i < n; ++i) acc += dy[static_cast<long>(i) * features + o];
  db[o] = acc;
}

// Block per channel, a warp per sample (warp w takes samples w, w + 32, ...), lanes striding over
// positions: many independent loads in flight. Lanes are added by a shuffle tree, warps in order.
constexpr int kChannelSumThreads = 1024;

__global__ void bias_grad_channels_kernel(const float* dy, float* db, int n, int channels, int plane) {
  __shared__ float warp_sums[kChannelSumThreads / 32];
  const int c = blockIdx.x, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  float acc = 0.0f;
  for (int s = warp; s < n; s += kChannelSumThreads / 32) {
    const float* row = dy + (static_cast<long>(s) * channels + c) * plane;
    for (int q = lane; q < plane; q += 32) acc += row[q];
  }
  for (int off = 16; off > 0; off /= 2) acc += __shfl_down_sync(0xffffffffu, acc, off);
  if (lane == 0) warp_sums[warp] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
    for (int w = 0; w < kChannelSumThreads / 32; ++w) total += warp_sums[w];
    db[c] = total;
  }
}

// One warp per sample (classes <= 32 * kPerLane).
constexpr int kPerLane = 32;

__global__ void softmax_xent_kernel(const float* logits, const int32_t* labels, int n, int classes, float grad_scale,
                                    float* dlogits, double* scratch) {
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (warp >= n) return;
  const float* x = logits + static_cast<long>(warp) * classes;
  // First maximum: compare (value, -index) so ties go to the lowest index, as torch.argmax.
  float best = -FLT_MAX;
  int best_index = classes;
  for (int c = lane; c < classes; c += 32)
    if (x[c] > best || (x[c] == best && c < best_index)) best = x[c], best_index = c;
  for (int off = 16; off > 0; off /= 2) {
    const float ob = __shfl_xor_sync(0xffffffffu, best, off);
    const int oi = __shfl_xor_sync(0xffffffffu, best_index, off);
    if (ob > best || (ob == best && oi < best_index)) best = ob, best_index = oi;
  }
  float z = 0.0f;
  for (int c = lane; c < classes; c += 32) z += expf(x[c] - best);
  for (int off = 16; off > 0; off /= 2) z += __shfl_xor_sync(0xffffffffu, z, off);
  const float lse = best + logf(z);
  const int y = labels[warp];
  if (dlogits != nullptr) {
    float* g = dlogits + static_cast<long>(warp) * classes;
    for (int c = lane; c < classes; c += 32) g[c] = (expf(x[c] - lse) - (c == y ? 1.0f : 0.0f)) * grad_scale;
  }
  if (lane == 0) {
    scratch[2 * warp] = static_cast<double>(lse - x[y]);
    scratch[2 * warp + 1] = best_index == y ? 1.0 : 0.0;
  }
}

// One block adds the per-sample values in sample order: the same sums on every run.
__global__ void accumulate_sums_kernel(const double* scratch, int n, double* sums) {
  __shared__ double loss[256], correct[256];
  double l = 0.0, c = 0.0;
  // Thread t sums a contiguous range, then thread 0 adds the partials in order.
  const int per = (n + blockDim.x - 1) / blockDim.x;
  for (int i = threadIdx.x * per; i < n && i < (threadIdx.x + 1) * per; ++i) l += scratch[2 * i], c += scratch[2 * i + 1];
  loss[threadIdx.x] = l;
  correct[threadIdx.x] = c;
  __syncthreads();
  if (threadIdx.x == 0) {
    double tl = 0.0, tc = 0.0;
    for (int t = 0; t < blockDim.x; ++t) tl += loss[t], tc += correct[t];
    sums[0] += tl;
    sums[1] += tc;
  }
}

}  // namespace

void dropout_forward(const float* x, float* y, float* mask, int n, int per_sample, float p, float scale,
                     uint32_t layer, const StepState* step, cudaStream_t stream) {
  dropout_forward_kernel<<<grid_for(static_cast<long>(n) * per_sample), kThreads, 0, stream>>>(x, y, mask, n, per_sample,
                                                                                              p, scale, layer, step);
  CUDA_CHECK_LAUNCH();
}

void dropout_backward(const float* dy, const float* mask, float* dx, long count, cudaStream_t stream) {
  multiply_kernel<<<grid_for(count), kThreads, 0, stream>>>(dy, mask, dx, count);
  CUDA_CHECK_LAUNCH();
}

void add_bias_rows(float* y, const float* b, int n, int features, cudaStream_t stream) {
  add_bias_rows_kernel<<<grid_for(static_cast<long>(n) * features), kThreads, 0, stream>>>(y, b, n, features);
  CUDA_CHECK_LAUNCH();
}

void bias_grad_rows(const float* dy, float* db, int n, int features, cudaStream_t stream) {
  bias_grad_rows_kernel<<<(features + 127) / 128, 128, 0, stream>>>(dy, db, n, features);
  CUDA_CHECK_LAUNCH();
}

void softmax_cross_entropy(const float* logits, const int32_t* labels, int n, int classes, float grad_scale,
                           float* dlogits, double* sums, double* scratch, cudaStream_t stream) {
  if (classes > 32 * kPerLane) throw CudaError("softmax_cross_entropy: more than 1024 classes");
  const int warps_per_block = 8;
  softmax_xent_kernel<<<(n + warps_per_block - 1) / warps_per_block, 32 * warps_per_block, 0, stream>>>(
      logits, labels, n, classes, grad_scale, dlogits, scratch);
  CUDA_CHECK_LAUNCH();
  accumulate_sums_kernel<<<1, 256, 0, stream>>>(scratch, n, sums);
  CUDA_CHECK_LAUNCH();
}

void bias_grad_channels(const float* dy, float* db, int n, int channels, int plane, cudaStream_t stream) {
  bias_grad_channels_kernel<<<channels, kChannelSumThreads, 0, stream>>>(dy, db, n, channels, plane);
  CUDA_CHECK_LAUNCH();
}

}  // namespace dptrain::kernels
