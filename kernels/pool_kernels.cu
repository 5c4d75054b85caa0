#include <algorithm>
#include <cfloat>
#include <climits>
#include <string>

#include "cuda/check.h"
#include "kernels/layer_kernels.h"
#include "kernels/pool_kernels.h"

namespace dptrain::kernels {

namespace {

constexpr int kPoolThreads = 128;

// Thread per output, across planes (a plane of 12 x 12 outputs would leave most of a per-plane
// block idle). The window's first maximum, in the CPU's scan order (row by row).
__global__ void maxpool_forward_kernel(const float* x, float* y, int32_t* argmax, PoolGeometry g, FusedDropout drop) {
  const int per_plane = g.oh * g.ow;
  const long o = blockIdx.x * long{blockDim.x} + threadIdx.x;
  if (o >= static_cast<long>(g.planes) * per_plane) return;
  const int plane = static_cast<int>(o / per_plane), q = static_cast<int>(o - static_cast<long>(plane) * per_plane);
  const int oy = q / g.ow, ox = q - oy * g.ow;
  const float* src = x + static_cast<long>(plane) * g.h * g.w;
  float best = -INFINITY;
  int where = -1;
  for (int ky = 0; ky < g.k; ++ky) {
    const int iy = oy * g.stride - g.pad + ky;
    if (iy < 0 || iy >= g.h) continue;
    for (int kx = 0; kx < g.k; ++kx) {
      const int ix = ox * g.stride - g.pad + kx;
      if (ix < 0 || ix >= g.w) continue;
      const float v = src[iy * g.w + ix];
      if (v > best || where < 0) best = v, where = iy * g.w + ix;
    }
  }
  y[o] = best * dropout_factor(drop, o);
  argmax[o] = where;
}

/// First window index along one axis whose span [o * s - pad, o * s - pad + k) holds position p.
__device__ __forceinline__ int first_window(int p, int k, int s, int pad) {
  const int t = p + pad - k + 1;
  return t <= 0 ? 0 : (t + s - 1) / s;
}

// Grid (plane, range of inputs). Windows that tile the plane (stride = kernel, no padding) hold
// each input at most once: one lookup. Otherwise every window over the input, in output order.
__global__ void maxpool_backward_kernel(const float* dy, const int32_t* argmax, float* dx, PoolGeometry g,
                                        FusedDropout drop) {
  const int per_plane = g.h * g.w, offset = blockIdx.y * blockDim.x + threadIdx.x;
  if (offset >= per_plane) return;
  const int iy = offset / g.w, ix = offset - iy * g.w;
  const long base = static_cast<long>(blockIdx.x) * g.oh * g.ow;
  float acc = 0.0f;
  if (g.k == g.stride && g.pad == 0) {
    const int oy = iy / g.k, ox = ix / g.k;
    if (oy < g.oh && ox < g.ow) {
      const long o = base + oy * g.ow + ox;
      if (argmax[o] == offset) acc = dy[o] * dropout_factor(drop, o);
    }
  } else {
    const int oy_end = min(g.oh, (iy + g.pad) / g.stride + 1), ox_end = min(g.ow, (ix + g.pad) / g.stride + 1);
    const int ox_begin = first_window(ix, g.k, g.stride, g.pad);
    for (int oy = first_window(iy, g.k, g.stride, g.pad); oy < oy_end; ++oy)
      for (int ox = ox_begin; ox < ox_end; ++ox) {
        const long o = base + oy * g.ow + ox;
        if (argmax[o] == offset) acc += dy[o] * dropout_factor(drop, o);
      }
  }
  dx[static_cast<long>(blockIdx.x) * per_plane + offset] = acc;
}

// Windows that tile the plane exactly (stride = kernel, no padding, sides divisible): a thread per
// window reads its maximum's index and gradient once and writes the whole window.
__global__ void maxpool_backward_tiled_kernel(const float* dy, const int32_t* argmax, float* dx, PoolGeometry g,
                                              FusedDropout drop) {
  const int per_plane = g.oh * g.ow, q = blockIdx.y * blockDim.x + threadIdx.x;
  if (q >= per_plane) return;
  const int oy = q / g.ow, ox = q - oy * g.ow;
  const long o = static_cast<long>(blockIdx.x) * per_plane + q;
  const int where = argmax[o];
  const float grad = dy[o] * dropout_factor(drop, o);
  float* plane = dx + static_cast<long>(blockIdx.x) * g.h * g.w;
  for (int ky = 0; ky < g.k; ++ky) {
    const int row = (oy * g.k + ky) * g.w + ox * g.k;
    for (int kx = 0; kx < g.k; ++kx) plane[row + kx] = row + kx == where ? grad : 0.0f;
  }
}

// The pooling absorbed by a convolution: windows of kK x kK that tile the plane, rows of outputs a
// multiple of 4 long. A thread takes four neighbouring outputs of a row, so every access is 16 bytes
// wide and one generator call gives their four dropout factors.
__device__ __forceinline__ float element(const float4& v, int e) { return e == 0 ? v.x : e == 1 ? v.y : e == 2 ? v.z : v.w; }
__device__ __forceinline__ int element(const int4& v, int e) { return e == 0 ? v.x : e == 1 ? v.y : e == 2 ? v.z : v.w; }

// x + bias[channel], then the ReLU, then each window's first maximum in the CPU's scan order (row by
// row), times the dropout's factor; where the dropout zeroed an output its argmax is stored as
// ~offset (negative), so that the backward needs no generator.
template <int kK>
__global__ void conv_pool_forward_kernel(const float* __restrict__ x, const float* __restrict__ bias, bool relu,
                                         float* __restrict__ y, int32_t* __restrict__ argmax, PoolGeometry g,
                                         int channels, FusedDropout drop) {
  const int quads = g.ow / 4, t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= g.planes * g.oh * quads) return;
  const int row = t / quads, qx = t - row * quads, plane = row / g.oh, oy = row - plane * g.oh;
  const float b = __ldg(bias + plane % channels);
  const int first = oy * kK * g.w + qx * 4 * kK;  // the first window's top-left offset in the plane
  const float* src = x + static_cast<long>(plane) * g.h * g.w + first;
  float best[4];
  int where[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) best[j] = -INFINITY, where[j] = -1;
#pragma unroll
  for (int ky = 0; ky < kK; ++ky)
#pragma unroll
    for (int v = 0; v < kK; ++v) {
      const float4 f = *reinterpret_cast<const float4*>(src + ky * g.w + 4 * v);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int c = 4 * v + e, j = c / kK;
        float value = element(f, e) + b;
        if (relu) value = value > 0.0f ? value : 0.0f;
        if (value > best[j] || where[j] < 0) best[j] = value, where[j] = first + ky * g.w + c;
      }
    }
  const long o = static_cast<long>(row) * g.ow + qx * 4;
  const float4 factor = dropout_factors4(drop, o);
  *reinterpret_cast<float4*>(y + o) =
      make_float4(best[0] * factor.x, best[1] * factor.y, best[2] * factor.z, best[3] * factor.w);
  *reinterpret_cast<int4*>(argmax + o) = make_int4(factor.x == 0.0f ? ~where[0] : where[0],
                                                   factor.y == 0.0f ? ~where[1] : where[1],
                                                   factor.z == 0.0f ? ~where[2] : where[2],
                                                   factor.w == 0.0f ? ~where[3] : where[3]);
}

// Block (channel, group of samples), thread per four neighbouring windows: it writes the windows
// whole (the gradient, times the dropout's scale, at the argmax; zeros elsewhere; all zeros where
// the ReLU's output is not positive or the dropout zeroed the output) and sums their gradients;
// threads are added by a shuffle tree, warps in order, groups by bias_grad_finish. A fixed order.
constexpr int kConvPoolThreads = 256;

int samples_per_block(const PoolGeometry& g) { return std::max(1, kConvPoolThreads / (g.oh * g.ow / 4)); }

/// Blocks along the batch (g.planes / channels samples): one bias-gradient partial each per channel.
int sample_groups(const PoolGeometry& g, int channels) {
  const int n = g.planes / channels, samples = samples_per_block(g);
  return (n + samples - 1) / samples;
}

template <int kK>
__global__ void __launch_bounds__(kConvPoolThreads) conv_pool_backward_kernel(
    const float* __restrict__ dy, const float* __restrict__ y, const int32_t* __restrict__ argmax, bool relu,
    float* __restrict__ dx, float* __restrict__ partial, PoolGeometry g, int n, int channels, int samples,
    float scale) {
  __shared__ float warp_sums[kConvPoolThreads / 32];
  const int c = blockIdx.x, quads = g.ow / 4, plane_quads = g.oh * quads;
  float acc = 0.0f;
  for (int t = threadIdx.x; t < samples * plane_quads; t += kConvPoolThreads) {
    const int s = blockIdx.y * samples + t / plane_quads, q = t % plane_quads;
    if (s >= n) break;
    const long plane = static_cast<long>(s) * channels + c;
    const int oy = q / quads, qx = q - oy * quads;
    const long o = plane * g.oh * g.ow + oy * g.ow + qx * 4;
    const int4 where = *reinterpret_cast<const int4*>(argmax + o);
    const float4 grad_in = *reinterpret_cast<const float4*>(dy + o);
    const float4 out = relu ? *reinterpret_cast<const float4*>(y + o) : make_float4(1.0f, 1.0f, 1.0f, 1.0f);
    float grad[4];
    int at[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      at[j] = element(where, j);
      grad[j] = at[j] >= 0 && element(out, j) > 0.0f ? element(grad_in, j) * scale : 0.0f;
      acc += grad[j];
    }
    const int first = oy * kK * g.w + qx * 4 * kK;
    float* window = dx + plane * g.h * g.w + first;
#pragma unroll
    for (int ky = 0; ky < kK; ++ky)
#pragma unroll
      for (int v = 0; v < kK; ++v) {
        float value[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int cx = 4 * v + e, j = cx / kK;
          value[e] = first + ky * g.w + cx == at[j] ? grad[j] : 0.0f;
        }
        *reinterpret_cast<float4*>(window + ky * g.w + 4 * v) = make_float4(value[0], value[1], value[2], value[3]);
      }
  }
  if (partial == nullptr) return;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int off = 16; off > 0; off /= 2) acc += __shfl_down_sync(0xffffffffu, acc, off);
  if (lane == 0) warp_sums[warp] = acc;
  __syncthreads();
  if (threadIdx.x != 0) return;
  float total = 0.0f;
  for (int w = 0; w < kConvPoolThreads / 32; ++w) total += warp_sums[w];
  partial[static_cast<long>(c) * gridDim.y + blockIdx.y] = total;
}

template <int kK>
void launch_conv_pool(const float* x, const float* bias, bool relu, float* y, int32_t* argmax, const PoolGeometry& g,
                      int channels, const FusedDropout& drop, cudaStream_t stream) {
  const int quads = g.planes * g.oh * (g.ow / 4);
  conv_pool_forward_kernel<kK><<<(quads + kPoolThreads - 1) / kPoolThreads, kPoolThreads, 0, stream>>>(
      x, bias, relu, y, argmax, g, channels, drop);
  CUDA_CHECK_LAUNCH();
}

template <int kK>
void launch_conv_pool_backward(const float* dy, const float* y, const int32_t* argmax, bool relu, float* dx,
                               float* partial, const PoolGeometry& g, int channels, float scale, cudaStream_t stream) {
  const int n = g.planes / channels, samples = samples_per_block(g), groups = sample_groups(g, channels);
  if (groups > 65535) throw CudaError("conv_pool_backward: batch of " + std::to_string(n) + " exceeds the launch grid");
  conv_pool_backward_kernel<kK><<<dim3(static_cast<unsigned>(channels), static_cast<unsigned>(groups)),
                                  kConvPoolThreads, 0, stream>>>(dy, y, argmax, relu, dx, partial, g, n, channels,
                                                                 samples, scale);
  CUDA_CHECK_LAUNCH();
}

void check_fits(const PoolGeometry& g) {
  if (static_cast<long>(g.h) * g.w > 65535L * kPoolThreads)
    throw CudaError("max pooling: a " + std::to_string(g.h) + "x" + std::to_string(g.w) +
                    " plane exceeds the launch grid");
}

/// Blocks of the forward kernel: one thread per output.
unsigned forward_blocks(const PoolGeometry& g) {
  const long outputs = static_cast<long>(g.planes) * g.oh * g.ow;
  if (outputs > 65535L * 65535L) throw CudaError("max pooling: " + std::to_string(outputs) + " outputs exceed the launch grid");
  return static_cast<unsigned>((outputs + kPoolThreads - 1) / kPoolThreads);
}

/// Whether the windows tile the plane exactly (stride = kernel, no padding, sides divisible).
bool pool_tiles_exactly(const PoolGeometry& g) {
  return g.k == g.stride && g.pad == 0 && g.h == g.oh * g.k && g.w == g.ow * g.k;
}

}  // namespace

void maxpool_forward(const float* x, float* y, int32_t* argmax, const PoolGeometry& g, const FusedDropout& drop,
                     cudaStream_t stream) {
  maxpool_forward_kernel<<<forward_blocks(g), kPoolThreads, 0, stream>>>(x, y, argmax, g, drop);
  CUDA_CHECK_LAUNCH();
}

void maxpool_backward(const float* dy, const int32_t* argmax, float* dx, const PoolGeometry& g, const FusedDropout& drop,
                      cudaStream_t stream) {
  check_fits(g);
  if (pool_tiles_exactly(g)) {
    const dim3 grid(static_cast<unsigned>(g.planes),
                    static_cast<unsigned>((g.oh * g.ow + kPoolThreads - 1) / kPoolThreads));
    maxpool_backward_tiled_kernel<<<grid, kPoolThreads, 0, stream>>>(dy, argmax, dx, g, drop);
    CUDA_CHECK_LAUNCH();
    return;
  }
  const dim3 grid(static_cast<unsigned>(g.planes),
                  static_cast<unsigned>((g.h * g.w + kPoolThreads - 1) / kPoolThreads));
  maxpool_backward_kernel<<<grid, kPoolThreads, 0, stream>>>(dy, argmax, dx, g, drop);
  CUDA_CHECK_LAUNCH();
}

bool conv_pool_fits(const PoolGeometry& g) {
  return pool_tiles_exactly(g) && g.k >= 2 && g.k <= 3 && g.ow % 4 == 0 &&
         static_cast<long>(g.planes) * g.h * g.w <= INT_MAX;
}

void conv_pool_forward(const float* x, const float* bias, bool relu, float* y, int32_t* argmax, const PoolGeometry& g,
                       int channels, const FusedDropout& drop, cudaStream_t stream) {
  if (!conv_pool_fits(g)) throw CudaError("conv_pool_forward: pooling geometry outside conv_pool_fits");
  if (g.k == 2) return launch_conv_pool<2>(x, bias, relu, y, argmax, g, channels, drop, stream);
  launch_conv_pool<3>(x, bias, relu, y, argmax, g, channels, drop, stream);
}

size_t conv_pool_backward_scratch(const PoolGeometry& g, int channels) {
  return static_cast<size_t>(channels) * sample_groups(g, channels);
}

void conv_pool_backward(const float* dy, const float* y, const int32_t* argmax, bool relu, float* dx, float* db,
                        float* scratch, const PoolGeometry& g, int channels, const FusedDropout& drop,
                        cudaStream_t stream) {
  if (!conv_pool_fits(g)) throw CudaError("conv_pool_backward: pooling geometry outside conv_pool_fits");
  float* partial = db != nullptr ? scratch : nullptr;
  const float scale = drop.active() ? drop.scale : 1.0f;
  if (g.k == 2)
    launch_conv_pool_backward<2>(dy, y, argmax, relu, dx, partial, g, channels, scale, stream);
  else
    launch_conv_pool_backward<3>(dy, y, argmax, relu, dx, partial, g, channels, scale, stream);
  if (db == nullptr) return;
  bias_grad_finish(scratch, sample_groups(g, channels), channels, db, stream);
}

}  // namespace dptrain::kernels
