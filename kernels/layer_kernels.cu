#include <cfloat>
#include <climits>
#include <cstdint>
#include <string>

#include "core/philox.h"
#include "core/cuda_check.h"
#include "kernels/grid_stride.cuh"
#include "kernels/last_block.cuh"
#include "kernels/layer_kernels.h"
#include "kernels/softmax_row.cuh"

namespace dptrain::kernels {

namespace {

constexpr int kThreads = 256;

unsigned grid_for(long n) { return grid_stride_blocks(static_cast<size_t>(n), kThreads, 65535 * 16); }

// Grid (range of elements, samples): no division per element. grid.y (at most 65535) strides over
// the batch.
__global__ void dropout_forward_kernel(const float* __restrict__ x, float* __restrict__ y, float* __restrict__ mask,
                                       int n, int per_sample, float p, float scale, uint32_t layer,
                                       const StepState* step) {
  const long e = blockIdx.x * long{blockDim.x} + threadIdx.x;
  if (e >= per_sample) return;
  const StepInfo info = step->info;
  for (int s = blockIdx.y; s < n; s += gridDim.y) {
    const uint32_t sample = info.first_sample + static_cast<uint32_t>(s);
    const long i = static_cast<long>(s) * per_sample + e;
    const float m =
        philox::dropout_uniform(info.seed, info.epoch, layer, sample, static_cast<uint32_t>(e)) >= p ? scale : 0.0f;
    mask[i] = m;
    y[i] = x[i] * m;
  }
}

__global__ void multiply_kernel(const float* a, const float* b, float* out, long count) {
  for (long i = blockIdx.x * long{blockDim.x} + threadIdx.x; i < count; i += long{gridDim.x} * blockDim.x)
    out[i] = a[i] * b[i];
}

__device__ __forceinline__ float relu(float v) { return v > 0.0f ? v : 0.0f; }

/// The gradient a ReLU passes: dy where its output is positive (relu_out null: no ReLU).
__device__ __forceinline__ float relu_grad(const float* dy, const float* relu_out, long i) {
  return relu_out == nullptr || relu_out[i] > 0.0f ? dy[i] : 0.0f;
}

__global__ void add_bias_rows_kernel(float* y, const float* b, int n, int features, bool with_relu, FusedDropout drop) {
  const long total = static_cast<long>(n) * features;
  for (long i = blockIdx.x * long{blockDim.x} + threadIdx.x; i < total; i += long{gridDim.x} * blockDim.x) {
    const float v = y[i] + b[i % features];
    y[i] = (with_relu ? relu(v) : v) * dropout_factor(drop, i);
  }
}

// Block row (sample, channel) of `plane` values; float4 when rows are 16-byte aligned. Rows stride by
// grid.x and a row's values by grid.y (at most 65535) x the block, past the launch limits.
__global__ void add_bias_channels_kernel(float* y, const float* b, long rows, int channels, int plane, bool vec4,
                                         bool with_relu) {
  const int per_row = vec4 ? plane / 4 : plane;
  for (long row = blockIdx.x; row < rows; row += gridDim.x) {
    const float bias = __ldg(b + row % channels);
    float* r = y + row * plane;
    for (long q = blockIdx.y * long{blockDim.x} + threadIdx.x; q < per_row; q += long{gridDim.y} * blockDim.x) {
      if (vec4) {
        float4 v = reinterpret_cast<float4*>(r)[q];
        v.x += bias, v.y += bias, v.z += bias, v.w += bias;
        if (with_relu) v.x = relu(v.x), v.y = relu(v.y), v.z = relu(v.z), v.w = relu(v.w);
        reinterpret_cast<float4*>(r)[q] = v;
      } else {
        const float v = r[q] + bias;
        r[q] = with_relu ? relu(v) : v;
      }
    }
  }
}

// Block of kRowCols columns x kRowLanes row lanes: lane r sums rows r, r + kRowLanes, ... (independent
// loads in flight), then the lanes' sums are added by a fixed tree in shared memory. A fixed order,
// whatever the GPU. Narrow tiles give a layer of 120 features 15 blocks (32-column tiles gave it 4:
// 5.5 to 7 us each for lenet5's fully connected layers at batch 1000, 32 to 45 us at 8192, on the
// critical path); a warp still reads 32-byte row segments.
constexpr int kRowCols = 8, kRowLanes = 128;

// With a fused dropout the gradient is first multiplied by its mask (the dropout's backward), then
// masked by the ReLU. relu_out is then the output after dropout, which is positive exactly where the
// ReLU's output is and the mask kept it; where the mask dropped it the gradient is 0 either way.
__global__ void __launch_bounds__(kRowCols * kRowLanes)
    bias_grad_rows_kernel(const float* __restrict__ dy, const float* __restrict__ relu_out, float* __restrict__ masked,
                          float* __restrict__ db, int n, int features, FusedDropout drop) {
  __shared__ float lane_sums[kRowLanes][kRowCols + 1];
  const int col = threadIdx.x, lane = threadIdx.y, o = blockIdx.x * kRowCols + col;
  const bool write_masked = relu_out != nullptr || drop.active();
  float acc = 0.0f;
  if (o < features)
    for (int i = lane; i < n; i += kRowLanes) {
      const long k = static_cast<long>(i) * features + o;
      float g = dy[k] * dropout_factor(drop, k);
      if (relu_out != nullptr && !(relu_out[k] > 0.0f)) g = 0.0f;
      if (write_masked) masked[k] = g;
      acc += g;
    }
  lane_sums[lane][col] = acc;
  __syncthreads();
#pragma unroll
  for (int half = kRowLanes / 2; half > 0; half /= 2) {
    if (lane < half) lane_sums[lane][col] += lane_sums[lane + half][col];
    __syncthreads();
  }
  if (lane == 0 && o < features) db[o] = lane_sums[0][col];
}

// Four elements per thread (16-byte accesses); the caller checks the alignment.
__global__ void relu_backward4_kernel(const float4* __restrict__ dy, const float4* __restrict__ y,
                                      float4* __restrict__ dx, long count4) {
  for (long i = blockIdx.x * long{blockDim.x} + threadIdx.x; i < count4; i += long{gridDim.x} * blockDim.x) {
    const float4 g = dy[i], v = y[i];
    dx[i] = make_float4(v.x > 0.0f ? g.x : 0.0f, v.y > 0.0f ? g.y : 0.0f, v.z > 0.0f ? g.z : 0.0f,
                        v.w > 0.0f ? g.w : 0.0f);
  }
}

__global__ void relu_backward_kernel(const float* dy, const float* y, float* dx, long count) {
  for (long i = blockIdx.x * long{blockDim.x} + threadIdx.x; i < count; i += long{gridDim.x} * blockDim.x)
    dx[i] = relu_grad(dy, y, i);
}

// Block (channel, group of kSamplesPerGroup samples), a warp per sample, lanes striding over
// positions: thousands of warps with independent loads in flight. Lanes are added by a shuffle
// tree, warps in order; partial[c][group], then bias_grad_finish adds the groups in order. The
// grid is one-dimensional, block c * groups + group (grid.y would cap the batch at 65535 groups).
constexpr int kSamplesPerGroup = 8;

__global__ void bias_grad_channels_kernel(const float* __restrict__ dy, const float* __restrict__ relu_out,
                                          float* __restrict__ masked, float* __restrict__ partial, int n,
                                          int channels, int plane, int groups) {
  __shared__ float warp_sums[kSamplesPerGroup];
  const int c = blockIdx.x / groups, group = blockIdx.x - c * groups, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int s = group * kSamplesPerGroup + warp;
  float acc = 0.0f;
  if (s < n) {
    const long row = (static_cast<long>(s) * channels + c) * plane;
    for (int q = lane; q < plane; q += 32) {
      const float g = relu_grad(dy, relu_out, row + q);
      if (relu_out != nullptr) masked[row + q] = g;
      acc += g;
    }
  }
  for (int off = 16; off > 0; off /= 2) acc += __shfl_down_sync(0xffffffffu, acc, off);
  if (lane == 0) warp_sums[warp] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
    for (int w = 0; w < kSamplesPerGroup; ++w) total += warp_sums[w];
    partial[blockIdx.x] = total;
  }
}

__global__ void bias_grad_finish_kernel(const float* __restrict__ partial, int groups, int channels,
                                        float* __restrict__ db) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= channels) return;
  float total = 0.0f;
  for (int g = 0; g < groups; ++g) total += partial[static_cast<long>(c) * groups + g];
  db[c] = total;
}

// Blocks of kLossThreads over consecutive samples: up to kSerialClasses classes a thread per sample,
// else a warp per sample (warp w takes the block's samples w, w + kLossWarps, ...; lane 0 keeps their
// sums). Each block's loss and correct count (block_loss_sums' order) go to scratch.partials; the
// last block to arrive (a ticket counter) adds them in block order into sums and resets the counter
// for the next launch (a captured step replays it). One block adds its sums directly. The order
// depends on n and classes alone: the same sums on every run. (One block of 1024 threads had taken
// 10.6 us at lenet5's batch 1000 and 67 us at 8192, on the critical path.)
constexpr int kLossThreads = 256, kLossWarps = kLossThreads / 32, kWarpSamplesPerBlock = 4 * kLossWarps;

/// serial: a thread per sample (classes <= kSerialClasses).
__host__ __device__ constexpr int loss_samples_per_block(bool serial) {
  return serial ? kLossThreads : kWarpSamplesPerBlock;
}
int loss_blocks(int n, int classes) {
  const int per_block = loss_samples_per_block(classes <= kSerialClasses);
  return n <= per_block ? 1 : (n - 1) / per_block + 1;
}

__global__ void __launch_bounds__(kLossThreads) softmax_xent_kernel(const float* logits, const int32_t* labels, int n,
                                                                     int classes, float grad_scale,
                                                                     float label_smoothing, float* dlogits,
                                                                     double* sums, LossScratch scratch) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const bool serial = classes <= kSerialClasses;
  const int first = blockIdx.x * loss_samples_per_block(serial);
  const int end = min(n, first + loss_samples_per_block(serial));
  const Smoothing sm(label_smoothing, classes);
  double loss = 0.0, correct = 0.0;
  for (int i = first + (serial ? threadIdx.x : warp); i < end; i += serial ? kLossThreads : kLossWarps) {
    const float* x = logits + static_cast<long>(i) * classes;
    const SoftmaxRow row = serial ? softmax_row_thread(x, classes) : softmax_row(x, classes, lane);
    const int y = labels[i];
    if (dlogits != nullptr) {
      float* g = dlogits + static_cast<long>(i) * classes;
      for (int c = serial ? 0 : lane; c < classes; c += serial ? 1 : 32) g[c] = softmax_xent_grad(x, c, row, y, sm, grad_scale);
    }
    if (serial || lane == 0) {
      loss += softmax_xent_loss(x[y], row, classes, sm);
      correct += row.best_index == y ? 1.0 : 0.0;
    }
  }
  if (gridDim.x == 1) {
    add_block_sums<kLossWarps>(loss, correct, sums);
    return;
  }
  block_loss_sums<kLossWarps>(loss, correct);
  if (threadIdx.x == 0) {
    scratch.partials[2 * blockIdx.x] = loss;
    scratch.partials[2 * blockIdx.x + 1] = correct;
  }
  if (!last_block_to_arrive(scratch.arrivals, gridDim.x)) return;
  add_partial_loss_sums<kLossWarps>(scratch.partials, static_cast<int>(gridDim.x), sums);
  if (threadIdx.x == 0) *scratch.arrivals = 0;
}

}  // namespace

void dropout_forward(const float* x, float* y, float* mask, int n, int per_sample, float p, float scale,
                     uint32_t layer, const StepState* step, cudaStream_t stream) {
  if (n <= 0 || per_sample <= 0) return;
  const dim3 grid(static_cast<unsigned>((per_sample + long{kThreads} - 1) / kThreads),
                  static_cast<unsigned>(n < 65535 ? n : 65535));
  dropout_forward_kernel<<<grid, kThreads, 0, stream>>>(x, y, mask, n, per_sample, p, scale, layer, step);
  CUDA_CHECK_LAUNCH();
}

void dropout_backward(const float* dy, const float* mask, float* dx, long count, cudaStream_t stream) {
  multiply_kernel<<<grid_for(count), kThreads, 0, stream>>>(dy, mask, dx, count);
  CUDA_CHECK_LAUNCH();
}

void add_bias_rows(float* y, const float* b, int n, int features, bool relu, const FusedDropout& drop,
                   cudaStream_t stream) {
  add_bias_rows_kernel<<<grid_for(static_cast<long>(n) * features), kThreads, 0, stream>>>(y, b, n, features, relu,
                                                                                           drop);
  CUDA_CHECK_LAUNCH();
}

void add_bias_channels(float* y, const float* b, int n, int channels, int plane, bool relu, cudaStream_t stream) {
  if (n <= 0 || channels <= 0 || plane <= 0) return;
  const bool vec4 = plane % 4 == 0 && reinterpret_cast<uintptr_t>(y) % 16 == 0;
  const int per_row = vec4 ? plane / 4 : plane;
  const int threads = per_row >= 256 ? 256 : (per_row + 31) / 32 * 32;  // one block per row where it fits
  const long rows = static_cast<long>(n) * channels, ranges = (per_row + long{threads} - 1) / threads;
  const dim3 grid(static_cast<unsigned>(rows < INT_MAX ? rows : INT_MAX),
                  static_cast<unsigned>(ranges < 65535 ? ranges : 65535));
  add_bias_channels_kernel<<<grid, threads, 0, stream>>>(y, b, rows, channels, plane, vec4, relu);
  CUDA_CHECK_LAUNCH();
}

void bias_grad_rows(const float* dy, const float* relu_out, float* masked, float* db, int n, int features,
                    const FusedDropout& drop, cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>((features + long{kRowCols} - 1) / kRowCols);
  bias_grad_rows_kernel<<<blocks, dim3(kRowCols, kRowLanes), 0, stream>>>(dy, relu_out, masked, db, n, features,
                                                                          drop);
  CUDA_CHECK_LAUNCH();
}

void relu_backward(const float* dy, const float* y, float* dx, long count, cudaStream_t stream) {
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  if (count % 4 == 0 && aligned(dy) && aligned(y) && aligned(dx)) {
    relu_backward4_kernel<<<grid_for(count / 4), kThreads, 0, stream>>>(
        reinterpret_cast<const float4*>(dy), reinterpret_cast<const float4*>(y), reinterpret_cast<float4*>(dx), count / 4);
  } else {
    relu_backward_kernel<<<grid_for(count), kThreads, 0, stream>>>(dy, y, dx, count);
  }
  CUDA_CHECK_LAUNCH();
}

size_t softmax_cross_entropy_partials(int n, int classes) {
  const int blocks = loss_blocks(n, classes);
  return blocks > 1 ? 2 * static_cast<size_t>(blocks) : 0;
}

void softmax_cross_entropy(const float* logits, const int32_t* labels, int n, int classes, float grad_scale,
                           float label_smoothing, float* dlogits, double* sums, LossScratch scratch,
                           cudaStream_t stream) {
  const int blocks = loss_blocks(n, classes);
  if (blocks > 1 && (scratch.partials == nullptr || scratch.arrivals == nullptr))
    throw CudaError("softmax_cross_entropy: a batch of " + std::to_string(n) + " x " + std::to_string(classes) +
                    " classes spans " + std::to_string(blocks) + " blocks and needs scratch, none given");
  softmax_xent_kernel<<<static_cast<unsigned>(blocks), kLossThreads, 0, stream>>>(
      logits, labels, n, classes, grad_scale, label_smoothing, dlogits, sums, scratch);
  CUDA_CHECK_LAUNCH();
}

size_t bias_grad_channels_scratch(int n, int channels) {
  return static_cast<size_t>(channels) * ((n + kSamplesPerGroup - 1) / kSamplesPerGroup);
}

void bias_grad_channels(const float* dy, const float* relu_out, float* masked, float* db, float* scratch, int n,
                        int channels, int plane, cudaStream_t stream) {
  const int groups = (n + kSamplesPerGroup - 1) / kSamplesPerGroup;
  const long blocks = static_cast<long>(channels) * groups;  // at most n * channels / 8 + channels
  if (blocks > INT_MAX)
    throw CudaError("bias_grad_channels: " + std::to_string(n) + " samples x " + std::to_string(channels) +
                    " channels exceed the launch grid");
  if (blocks > 0) {
    bias_grad_channels_kernel<<<static_cast<unsigned>(blocks), 32 * kSamplesPerGroup, 0, stream>>>(
        dy, relu_out, masked, scratch, n, channels, plane, groups);
    CUDA_CHECK_LAUNCH();
  }
  bias_grad_finish(scratch, groups, channels, db, stream);
}

void bias_grad_finish(const float* partial, int groups, int channels, float* db, cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>((channels + 127L) / 128);
  bias_grad_finish_kernel<<<blocks, 128, 0, stream>>>(partial, groups, channels, db);
  CUDA_CHECK_LAUNCH();
}

}  // namespace dptrain::kernels
