// See kernels/batchnorm_kernels.h.
#include <cuda_runtime.h>

#include <stdexcept>

#include "core/cuda_check.h"
#include "kernels/batchnorm_kernels.h"
#include "kernels/block_sum.cuh"
#include "kernels/grid_stride.cuh"

namespace dptrain::kernels {

namespace {

constexpr int kThreads = 256;

struct GroupRange {
  int first, count;
};

__device__ GroupRange group_range(const BatchNormShape& s, int g) {
  if (s.group == 0) return {0, s.n};
  const int first = g * s.group;
  return {first, min(s.group, s.n - first)};
}

/// The element index of the e-th value of channel c in group range r. 32-bit arithmetic: the
/// launchers refuse tensors of 2^31 elements or more (check_size), and a 64-bit division per
/// element would cost more than the sum it feeds.
__device__ int element(const BatchNormShape& s, GroupRange r, int c, int e) {
  const int i = r.first + e / s.spatial, q = e % s.spatial;
  return (i * s.channels + c) * s.spatial + q;
}

/// The count m of values per channel in group g (sync: the exchanged global count sums[C]).
__device__ double group_values(const BatchNormShape& s, const float* sums, int g) {
  return s.group == 0 ? static_cast<double>(sums[s.channels]) : static_cast<double>(group_range(s, g).count) * s.spatial;
}

// Grid (channels, min(groups, 65535)): a block per channel and group; grid.y strides over the
// groups (a batch of more than 65535 groups, e.g. group_size 1, exceeds grid.y's limit).
__global__ void sums_kernel(const float* __restrict__ x, BatchNormShape s, float* __restrict__ sums) {
  __shared__ double shared[kThreads];
  const int c = blockIdx.x;
  for (int g = blockIdx.y; g < s.groups(); g += gridDim.y) {
    const GroupRange r = group_range(s, g);
    const int values = r.count * s.spatial;
    double acc = 0;
    for (int e = threadIdx.x; e < values; e += blockDim.x) acc += x[element(s, r, c, e)];
    const double total = block_sum(acc, shared);
    if (threadIdx.x == 0) {
      sums[g * s.channels + c] = static_cast<float>(total);
      if (s.group == 0 && c == 0) sums[s.channels] = static_cast<float>(values);
    }
  }
}

__global__ void centered_kernel(const float* __restrict__ x, BatchNormShape s, const float* __restrict__ sums,
                                float* __restrict__ mean, float* __restrict__ sq) {
  __shared__ double shared[kThreads];
  const int c = blockIdx.x;
  for (int g = blockIdx.y; g < s.groups(); g += gridDim.y) {  // as sums_kernel
    const GroupRange r = group_range(s, g);
    const int values = r.count * s.spatial;
    const double m = group_values(s, sums, g);
    const float mu = m > 0 ? static_cast<float>(static_cast<double>(sums[g * s.channels + c]) / m) : 0.0f;
    double acc = 0;
    for (int e = threadIdx.x; e < values; e += blockDim.x) {
      const double d = static_cast<double>(x[element(s, r, c, e)]) - mu;
      acc += d * d;
    }
    const double total = block_sum(acc, shared);
    if (threadIdx.x == 0) {
      mean[g * s.channels + c] = mu;
      sq[g * s.channels + c] = static_cast<float>(total);
    }
  }
}

// One thread per channel; groups in order.
__global__ void finish_stats_kernel(BatchNormShape s, const float* __restrict__ sums, const float* __restrict__ sq,
                                    const float* __restrict__ mean, float eps, float* __restrict__ invstd,
                                    float* __restrict__ partial) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  const int groups = s.n == 0 && s.group != 0 ? 0 : s.groups();
  if (c == 0) partial[2 * s.channels] = static_cast<float>(groups);
  if (c >= s.channels) return;
  double mean_sum = 0, var_sum = 0;
  for (int g = 0; g < groups; ++g) {
    const double m = group_values(s, sums, g);
    const double var = m > 0 ? static_cast<double>(sq[g * s.channels + c]) / m : 0.0;
    if (s.n > 0) invstd[g * s.channels + c] = static_cast<float>(1.0 / sqrt(var + eps));
    mean_sum += mean[g * s.channels + c];
    var_sum += m > 1 ? var * m / (m - 1) : var;
  }
  partial[c] = static_cast<float>(mean_sum);
  partial[s.channels + c] = static_cast<float>(var_sum);
}

// Grid-stride over all elements.
__global__ void normalize_kernel(const float* __restrict__ x, BatchNormShape s, const float* __restrict__ mean,
                                 const float* __restrict__ invstd, const float* __restrict__ w,
                                 const float* __restrict__ b, bool relu, float* __restrict__ y) {
  const int total = s.n * s.channels * s.spatial;
  // The index steps in 64 bits (k + the grid's stride passes 2^31 - 1 for tensors near the limit);
  // the arithmetic on it stays 32-bit.
  for (long kk = blockIdx.x * long{blockDim.x} + threadIdx.x; kk < total; kk += long{gridDim.x} * blockDim.x) {
    const int k = static_cast<int>(kk);
    const int i = k / (s.channels * s.spatial);
    const int c = static_cast<int>((k / s.spatial) % s.channels);
    const int g = s.group == 0 ? 0 : i / s.group;
    const int gc = g * s.channels + c;
    const float v = (x[k] - mean[gc]) * invstd[gc] * w[c] + b[c];
    y[k] = relu ? fmaxf(v, 0.0f) : v;
  }
}

__global__ void eval_kernel(const float* __restrict__ x, BatchNormShape s, const float* __restrict__ rm,
                            const float* __restrict__ rv, float eps, const float* __restrict__ w,
                            const float* __restrict__ b, bool relu, float* __restrict__ y) {
  const int total = s.n * s.channels * s.spatial;
  // The index steps in 64 bits (k + the grid's stride passes 2^31 - 1 for tensors near the limit);
  // the arithmetic on it stays 32-bit.
  for (long kk = blockIdx.x * long{blockDim.x} + threadIdx.x; kk < total; kk += long{gridDim.x} * blockDim.x) {
    const int k = static_cast<int>(kk);
    const int c = static_cast<int>((k / s.spatial) % s.channels);
    const double inv = 1.0 / sqrt(static_cast<double>(rv[c]) + eps);
    const double scale = inv * w[c];
    const float v = static_cast<float>(static_cast<double>(x[k]) * scale + (b[c] - rm[c] * scale));
    y[k] = relu ? fmaxf(v, 0.0f) : v;
  }
}

__global__ void running_update_kernel(const float* __restrict__ partial, int channels, float momentum,
                                      float* __restrict__ rm, float* __restrict__ rv, float* __restrict__ tracked) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  const double groups = partial[2 * channels];
  if (c == 0) tracked[0] += 1.0f;
  if (c >= channels || groups <= 0) return;
  const double mom = momentum;
  rm[c] = static_cast<float>((1.0 - mom) * rm[c] + mom * partial[c] / groups);
  rv[c] = static_cast<float>((1.0 - mom) * rv[c] + mom * partial[channels + c] / groups);
}

/// dy, masked by an absorbed ReLU's output (null: none).
__device__ float masked_dy(const float* __restrict__ dy, const float* __restrict__ relu_out, int k) {
  return relu_out == nullptr || relu_out[k] > 0.0f ? dy[k] : 0.0f;
}

__global__ void backward_sums_kernel(const float* __restrict__ x, const float* __restrict__ dy,
                                     const float* __restrict__ relu_out, BatchNormShape s,
                                     const float* __restrict__ mean, const float* __restrict__ invstd,
                                     float* __restrict__ bsums) {
  __shared__ double shared[kThreads];
  const int c = blockIdx.x;
  for (int g = blockIdx.y; g < s.groups(); g += gridDim.y) {  // as sums_kernel
    const GroupRange r = group_range(s, g);
    const int values = r.count * s.spatial;
    const int gc = g * s.channels + c;
    const float mu = mean[gc], inv = invstd[gc];
    double a = 0, bsum = 0;
    for (int e = threadIdx.x; e < values; e += blockDim.x) {
      const int k = element(s, r, c, e);
      const double d = masked_dy(dy, relu_out, k);
      a += d;
      bsum += d * ((static_cast<double>(x[k]) - mu) * inv);
    }
    const double ta = block_sum(a, shared);
    const double tb = block_sum(bsum, shared);
    if (threadIdx.x == 0) {
      bsums[g * 2 * s.channels + c] = static_cast<float>(ta);
      bsums[g * 2 * s.channels + s.channels + c] = static_cast<float>(tb);
    }
  }
}

__global__ void param_grads_kernel(const float* __restrict__ bsums, BatchNormShape s, float* __restrict__ dw,
                                   float* __restrict__ db) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= s.channels) return;
  double a = 0, bsum = 0;
  const int groups = s.n == 0 ? 0 : s.groups();
  for (int g = 0; g < groups; ++g) {
    a += bsums[g * 2 * s.channels + c];
    bsum += bsums[g * 2 * s.channels + s.channels + c];
  }
  dw[c] = static_cast<float>(bsum);
  db[c] = static_cast<float>(a);
}

__global__ void input_grad_kernel(const float* __restrict__ x, const float* __restrict__ dy,
                                  const float* __restrict__ relu_out, BatchNormShape s,
                                  const float* __restrict__ mean, const float* __restrict__ invstd,
                                  const float* __restrict__ bsums, const float* __restrict__ sums,
                                  const float* __restrict__ w, float* __restrict__ dx) {
  const int total = s.n * s.channels * s.spatial;
  // The index steps in 64 bits (k + the grid's stride passes 2^31 - 1 for tensors near the limit);
  // the arithmetic on it stays 32-bit.
  for (long kk = blockIdx.x * long{blockDim.x} + threadIdx.x; kk < total; kk += long{gridDim.x} * blockDim.x) {
    const int k = static_cast<int>(kk);
    const int i = k / (s.channels * s.spatial);
    const int c = static_cast<int>((k / s.spatial) % s.channels);
    const int g = s.group == 0 ? 0 : i / s.group;
    const int gc = g * s.channels + c;
    const double m = group_values(s, sums, g);
    const double inv = invstd[gc];
    const double xhat = (static_cast<double>(x[k]) - mean[gc]) * inv;
    const double a = bsums[g * 2 * s.channels + c] / m, bb = bsums[g * 2 * s.channels + s.channels + c] / m;
    dx[k] = static_cast<float>(static_cast<double>(w[c]) * inv *
                               (static_cast<double>(masked_dy(dy, relu_out, k)) - a - xhat * bb));
  }
}

/// The kernels index in 32 bits (BatchNormLayer's CUDA reserve() refuses larger batches first).
void check_size(const BatchNormShape& s) {
  if (static_cast<long long>(s.n) * s.channels * s.spatial >= (1LL << 31))
    throw std::invalid_argument("batchnorm kernels: a tensor of 2^31 elements or more");
}

unsigned elementwise_grid(const BatchNormShape& s) {
  return grid_stride_blocks(static_cast<size_t>(s.n) * s.channels * s.spatial, kThreads, 65535 * 16);
}

int channel_grid(int channels) { return (channels + kThreads - 1) / kThreads; }

/// (channels, groups) blocks, groups capped at grid.y's 65535 (the kernels stride over the rest).
dim3 group_grid(const BatchNormShape& s) {
  return dim3(static_cast<unsigned>(s.channels), static_cast<unsigned>(s.groups() < 65535 ? s.groups() : 65535));
}

}  // namespace

void batchnorm_sums(const float* x, const BatchNormShape& s, float* sums, cudaStream_t stream) {
  check_size(s);
  sums_kernel<<<group_grid(s), kThreads, 0, stream>>>(x, s, sums);
  CUDA_CHECK_LAUNCH();
}

void batchnorm_centered(const float* x, const BatchNormShape& s, const float* sums, float* mean, float* sq,
                        cudaStream_t stream) {
  check_size(s);
  centered_kernel<<<group_grid(s), kThreads, 0, stream>>>(x, s, sums, mean, sq);
  CUDA_CHECK_LAUNCH();
}

void batchnorm_finish_stats(const BatchNormShape& s, const float* sums, const float* sq, const float* mean,
                            float eps, float* invstd, float* partial, cudaStream_t stream) {
  finish_stats_kernel<<<channel_grid(s.channels), kThreads, 0, stream>>>(s, sums, sq, mean, eps, invstd, partial);
  CUDA_CHECK_LAUNCH();
}

void batchnorm_normalize(const float* x, const BatchNormShape& s, const float* mean, const float* invstd,
                         const float* w, const float* b, bool relu, float* y, cudaStream_t stream) {
  check_size(s);
  if (s.n == 0) return;
  normalize_kernel<<<elementwise_grid(s), kThreads, 0, stream>>>(x, s, mean, invstd, w, b, relu, y);
  CUDA_CHECK_LAUNCH();
}

void batchnorm_eval(const float* x, const BatchNormShape& s, const float* running_mean, const float* running_var,
                    float eps, const float* w, const float* b, bool relu, float* y, cudaStream_t stream) {
  check_size(s);
  if (s.n == 0) return;
  eval_kernel<<<elementwise_grid(s), kThreads, 0, stream>>>(x, s, running_mean, running_var, eps, w, b, relu, y);
  CUDA_CHECK_LAUNCH();
}

void batchnorm_running_update(const float* partial, int channels, float momentum, float* running_mean,
                              float* running_var, float* tracked, cudaStream_t stream) {
  running_update_kernel<<<channel_grid(channels), kThreads, 0, stream>>>(partial, channels, momentum, running_mean,
                                                                         running_var, tracked);
  CUDA_CHECK_LAUNCH();
}

void batchnorm_backward_sums(const float* x, const float* dy, const float* relu_out, const BatchNormShape& s,
                             const float* mean, const float* invstd, float* bsums, cudaStream_t stream) {
  check_size(s);
  backward_sums_kernel<<<group_grid(s), kThreads, 0, stream>>>(x, dy, relu_out, s, mean, invstd, bsums);
  CUDA_CHECK_LAUNCH();
}

void batchnorm_param_grads(const float* bsums, const BatchNormShape& s, float* dw, float* db, cudaStream_t stream) {
  param_grads_kernel<<<channel_grid(s.channels), kThreads, 0, stream>>>(bsums, s, dw, db);
  CUDA_CHECK_LAUNCH();
}

void batchnorm_input_grad(const float* x, const float* dy, const float* relu_out, const BatchNormShape& s,
                          const float* mean, const float* invstd, const float* bsums, const float* sums, const float* w,
                          float* dx, cudaStream_t stream) {
  check_size(s);
  if (s.n == 0) return;
  input_grad_kernel<<<elementwise_grid(s), kThreads, 0, stream>>>(x, dy, relu_out, s, mean, invstd, bsums, sums, w, dx);
  CUDA_CHECK_LAUNCH();
}

}  // namespace dptrain::kernels
