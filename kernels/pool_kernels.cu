#include <algorithm>
#include <cfloat>
#include <climits>
#include <cstdint>
#include <string>
#include <type_traits>

#include "core/cuda_check.h"
#include "kernels/grid_stride.cuh"
#include "kernels/layer_kernels.h"
#include "kernels/pool_kernels.h"

namespace dptrain::kernels {

namespace {

constexpr int kPoolThreads = 128;

// One output o (a flat index over planes x outputs): the window's first maximum.
__device__ __forceinline__ void maxpool_output(const float* x, float* y, int32_t* argmax, const PoolGeometry& g,
                                               const FusedDropout& drop, int per_plane, long o) {
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

// Thread per output, across planes (a plane of 12 x 12 outputs would leave most of a per-plane
// block idle). The window's first maximum, in the CPU's scan order (row by row).
__global__ void maxpool_forward_kernel(const float* x, float* y, int32_t* argmax, PoolGeometry g, FusedDropout drop) {
  const int per_plane = g.oh * g.ow;
  const long total = static_cast<long>(g.planes) * per_plane;
  for (long o = blockIdx.x * long{blockDim.x} + threadIdx.x; o < total; o += long{gridDim.x} * blockDim.x)
    maxpool_output(x, y, argmax, g, drop, per_plane, o);
}

/// First window index along one axis whose span [o * s - pad, o * s - pad + k) holds position p.
__device__ __forceinline__ int first_window(int p, int k, int s, int pad) {
  const int t = p + pad - k + 1;
  return t <= 0 ? 0 : (t + s - 1) / s;
}

// Grid (plane, range of inputs; the ranges repeat past grid.y's limit). Windows that tile the plane
// (stride = kernel, no padding) hold each input at most once: one lookup. Otherwise every window
// over the input, in output order.
__device__ __forceinline__ void maxpool_input_grad(const float* dy, const int32_t* argmax, float* dx,
                                                   const PoolGeometry& g, const FusedDropout& drop, int per_plane,
                                                   int offset) {
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
        if (argmax[o] == offset) acc += __fmul_rn(dy[o], dropout_factor(drop, o));  // rounded before the sum, as the CPU does (no FMA)
      }
  }
  dx[static_cast<long>(blockIdx.x) * per_plane + offset] = acc;
}

__global__ void maxpool_backward_kernel(const float* dy, const int32_t* argmax, float* dx, PoolGeometry g,
                                        FusedDropout drop) {
  const int per_plane = g.h * g.w;
  for (long e = blockIdx.y * long{blockDim.x} + threadIdx.x; e < per_plane; e += long{gridDim.y} * blockDim.x)
    maxpool_input_grad(dy, argmax, dx, g, drop, per_plane, static_cast<int>(e));
}

// Windows that tile the plane exactly (stride = kernel, no padding, sides divisible): a thread per
// window reads its maximum's index and gradient once and writes the whole window.
__device__ __forceinline__ void maxpool_window_grad(const float* dy, const int32_t* argmax, float* dx,
                                                    const PoolGeometry& g, const FusedDropout& drop, int per_plane,
                                                    int q) {
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

__global__ void maxpool_backward_tiled_kernel(const float* dy, const int32_t* argmax, float* dx, PoolGeometry g,
                                              FusedDropout drop) {
  const int per_plane = g.oh * g.ow;
  for (long q = blockIdx.y * long{blockDim.x} + threadIdx.x; q < per_plane; q += long{gridDim.y} * blockDim.x)
    maxpool_window_grad(dy, argmax, dx, g, drop, per_plane, static_cast<int>(q));
}

// The pooling absorbed by a convolution: windows of kK x kK that tile the plane. A thread takes kW
// neighbouring outputs of a row: four where rows of outputs are a multiple of 4 long, so that every
// access is 16 bytes wide and one generator call gives their four dropout factors; else one (lenet5's
// and mnist_fast's 5 x 5 pooled planes). kVec (kW = 4 only): every buffer is 16-byte aligned (the
// offsets are multiples of 4 elements), so four elements are one float4/int4 access; else scalar
// accesses (a view at an odd offset): the same values in the same order either way.
__device__ __forceinline__ float element(const float4& v, int e) { return e == 0 ? v.x : e == 1 ? v.y : e == 2 ? v.z : v.w; }
__device__ __forceinline__ int element(const int4& v, int e) { return e == 0 ? v.x : e == 1 ? v.y : e == 2 ? v.z : v.w; }

/// r[0, kN) = p[0, kN): kN / 4 16-byte loads with kVec, else kN scalar ones.
template <int kN, bool kVec, typename T>
__device__ __forceinline__ void load_run(const T* p, T (&r)[kN]) {
  if constexpr (kVec) {
    static_assert(kN % 4 == 0, "16-byte accesses move four elements");
    using V = std::conditional_t<std::is_same_v<T, float>, float4, int4>;
#pragma unroll
    for (int v = 0; v < kN / 4; ++v) {
      const V f = reinterpret_cast<const V*>(p)[v];
#pragma unroll
      for (int e = 0; e < 4; ++e) r[4 * v + e] = element(f, e);
    }
  } else {
#pragma unroll
    for (int i = 0; i < kN; ++i) r[i] = p[i];
  }
}

/// p[0, kN) = r[0, kN), as load_run reads.
template <int kN, bool kVec, typename T>
__device__ __forceinline__ void store_run(T* p, const T (&r)[kN]) {
  if constexpr (kVec) {
    static_assert(kN % 4 == 0, "16-byte accesses move four elements");
#pragma unroll
    for (int v = 0; v < kN / 4; ++v) {
      if constexpr (std::is_same_v<T, float>)
        reinterpret_cast<float4*>(p)[v] = make_float4(r[4 * v], r[4 * v + 1], r[4 * v + 2], r[4 * v + 3]);
      else
        reinterpret_cast<int4*>(p)[v] = make_int4(r[4 * v], r[4 * v + 1], r[4 * v + 2], r[4 * v + 3]);
    }
  } else {
#pragma unroll
    for (int i = 0; i < kN; ++i) p[i] = r[i];
  }
}

/// The dropout's factors of flat outputs o to o + kW - 1 (o's place in its sample a multiple of kW).
template <int kW>
__device__ __forceinline__ void dropout_run(const FusedDropout& drop, long o, float (&factor)[kW]) {
  if constexpr (kW == 4) {
    const float4 f = dropout_factors4(drop, o);
    factor[0] = f.x, factor[1] = f.y, factor[2] = f.z, factor[3] = f.w;
  } else {
#pragma unroll
    for (int j = 0; j < kW; ++j) factor[j] = dropout_factor(drop, o + j);
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

/// Outputs a thread of the conv_pool kernels takes (kW): four where the rows allow it.
int windows_per_thread(const PoolGeometry& g) { return g.ow % 4 == 0 ? 4 : 1; }

// x + bias[channel], then the ReLU, then each window's first maximum in the CPU's scan order (row by
// row), times the dropout's factor; where the dropout zeroed an output its argmax is stored as
// ~offset (negative), so that the backward needs no generator. One launch covers planes
// [plane0, plane0 + count / (oh ow / kW)): count, the launch's threads, fits an int.
template <int kK, int kW, bool kVec>
__global__ void conv_pool_forward_kernel(const float* __restrict__ x, const float* __restrict__ bias, bool relu,
                                         float* __restrict__ y, int32_t* __restrict__ argmax, PoolGeometry g,
                                         int channels, FusedDropout drop, int plane0, int count) {
  const int runs = g.ow / kW, t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= count) return;
  const int row = t / runs, qx = t - row * runs, local = row / g.oh, oy = row - local * g.oh, plane = plane0 + local;
  const float b = __ldg(bias + plane % channels);
  const int first = oy * kK * g.w + qx * kW * kK;  // the first window's top-left offset in the plane
  const float* src = x + static_cast<long>(plane) * g.h * g.w + first;
  float best[kW];
  int where[kW];
#pragma unroll
  for (int j = 0; j < kW; ++j) best[j] = -INFINITY, where[j] = -1;
#pragma unroll
  for (int ky = 0; ky < kK; ++ky) {
    float r[kW * kK];
    load_run<kW * kK, kVec>(src + ky * g.w, r);
#pragma unroll
    for (int c = 0; c < kW * kK; ++c) {
      const int j = c / kK;
      float value = r[c] + b;
      if (relu) value = value > 0.0f ? value : 0.0f;
      if (value > best[j] || where[j] < 0) best[j] = value, where[j] = first + ky * g.w + c;
    }
  }
  const long o = (static_cast<long>(plane) * g.oh + oy) * g.ow + qx * kW;
  float factor[kW];
  dropout_run<kW>(drop, o, factor);
  float out[kW];
  int at[kW];
#pragma unroll
  for (int j = 0; j < kW; ++j) out[j] = best[j] * factor[j], at[j] = factor[j] == 0.0f ? ~where[j] : where[j];
  store_run<kW, kVec>(y + o, out);
  store_run<kW, kVec>(argmax + o, at);
}

// Block (channel, group of samples), thread per kW neighbouring windows: it writes the windows
// whole (the gradient, times the dropout's scale, at the argmax; zeros elsewhere; all zeros where
// the ReLU's output is not positive or the dropout zeroed the output) and sums their gradients;
// threads are added by a shuffle tree, warps in order, groups by bias_grad_finish. A fixed order.
// The grid is one-dimensional (grid.y would cap the batch at 65535 groups), block group * channels
// + c: neighbouring blocks take the channels of one group of samples, neighbours in memory (the
// other way round, channel-major, cost mnist_cnn's step 1 us). Its partial sum goes to c * groups
// + group, as bias_grad_finish reads them.
constexpr int kConvPoolThreads = 256;

int samples_per_block(const PoolGeometry& g) {
  return std::max(1, kConvPoolThreads / (g.oh * g.ow / windows_per_thread(g)));
}

/// Blocks along the batch (g.planes / channels samples): one bias-gradient partial each per channel.
int sample_groups(const PoolGeometry& g, int channels) {
  const int n = g.planes / channels, samples = samples_per_block(g);
  return (n + samples - 1) / samples;
}

template <int kK, int kW, bool kVec>
__global__ void __launch_bounds__(kConvPoolThreads) conv_pool_backward_kernel(
    const float* __restrict__ dy, const float* __restrict__ y, const int32_t* __restrict__ argmax, bool relu,
    float* __restrict__ dx, float* __restrict__ partial, PoolGeometry g, int n, int channels, int samples,
    int groups, float scale) {
  __shared__ float warp_sums[kConvPoolThreads / 32];
  const int group = blockIdx.x / channels, c = blockIdx.x - group * channels, runs = g.ow / kW,
            plane_runs = g.oh * runs;
  float acc = 0.0f;
  for (int t = threadIdx.x; t < samples * plane_runs; t += kConvPoolThreads) {
    const int s = group * samples + t / plane_runs, q = t % plane_runs;
    if (s >= n) break;
    const long plane = static_cast<long>(s) * channels + c;
    const int oy = q / runs, qx = q - oy * runs;
    const long o = plane * g.oh * g.ow + oy * g.ow + qx * kW;
    int at[kW];
    float grad[kW], out[kW] = {};
    load_run<kW, kVec>(argmax + o, at);
    load_run<kW, kVec>(dy + o, grad);
    if (relu) load_run<kW, kVec>(y + o, out);
#pragma unroll
    for (int j = 0; j < kW; ++j) {
      grad[j] = at[j] >= 0 && (!relu || out[j] > 0.0f) ? grad[j] * scale : 0.0f;
      acc += grad[j];
    }
    const int first = oy * kK * g.w + qx * kW * kK;
    float* window = dx + plane * g.h * g.w + first;
#pragma unroll
    for (int ky = 0; ky < kK; ++ky) {
      float value[kW * kK];
#pragma unroll
      for (int cx = 0; cx < kW * kK; ++cx) {
        const int j = cx / kK;
        value[cx] = first + ky * g.w + cx == at[j] ? grad[j] : 0.0f;
      }
      store_run<kW * kK, kVec>(window + ky * g.w, value);
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
  partial[static_cast<long>(c) * groups + group] = total;
}

template <int kK, int kW, bool kVec>
void launch_conv_pool(const float* x, const float* bias, bool relu, float* y, int32_t* argmax, const PoolGeometry& g,
                      int channels, const FusedDropout& drop, cudaStream_t stream) {
  // Launches of at most INT_MAX - kPoolThreads threads (one per kW outputs), whole planes each.
  const long per_plane = static_cast<long>(g.oh) * (g.ow / kW);
  const long planes_per_launch = std::max(1L, (INT_MAX - kPoolThreads) / per_plane);
  for (long plane0 = 0; plane0 < g.planes; plane0 += planes_per_launch) {
    const int count = static_cast<int>(std::min<long>(planes_per_launch, g.planes - plane0) * per_plane);
    conv_pool_forward_kernel<kK, kW, kVec><<<(count + kPoolThreads - 1) / kPoolThreads, kPoolThreads, 0, stream>>>(
        x, bias, relu, y, argmax, g, channels, drop, static_cast<int>(plane0), count);
    CUDA_CHECK_LAUNCH();
  }
}

template <int kK, int kW, bool kVec>
void launch_conv_pool_backward(const float* dy, const float* y, const int32_t* argmax, bool relu, float* dx,
                               float* partial, const PoolGeometry& g, int channels, float scale, cudaStream_t stream) {
  const int n = g.planes / channels, samples = samples_per_block(g), groups = sample_groups(g, channels);
  // channels * groups <= channels * n = g.planes: within grid.x's 2^31 - 1.
  conv_pool_backward_kernel<kK, kW, kVec><<<static_cast<unsigned>(channels) * static_cast<unsigned>(groups),
                                            kConvPoolThreads, 0, stream>>>(dy, y, argmax, relu, dx, partial, g, n,
                                                                           channels, samples, groups, scale);
  CUDA_CHECK_LAUNCH();
}

/// Blocks of a launch that covers `items` with kPoolThreads threads each, within grid.x's limit and
/// grid.y's (65535) where `y` is set; the kernels loop over what one launch does not cover.
unsigned blocks_for(long items, bool y = false) {
  return grid_stride_blocks(static_cast<size_t>(items), kPoolThreads, y ? 65535 : INT_MAX);
}

/// Whether the windows tile the plane exactly (stride = kernel, no padding, sides divisible).
bool pool_tiles_exactly(const PoolGeometry& g) {
  return g.k == g.stride && g.pad == 0 && g.h == g.oh * g.k && g.w == g.ow * g.k;
}

}  // namespace

void maxpool_forward(const float* x, float* y, int32_t* argmax, const PoolGeometry& g, const FusedDropout& drop,
                     cudaStream_t stream) {
  const long outputs = static_cast<long>(g.planes) * g.oh * g.ow;
  if (outputs <= 0) return;
  maxpool_forward_kernel<<<blocks_for(outputs), kPoolThreads, 0, stream>>>(x, y, argmax, g, drop);
  CUDA_CHECK_LAUNCH();
}

void maxpool_backward(const float* dy, const int32_t* argmax, float* dx, const PoolGeometry& g, const FusedDropout& drop,
                      cudaStream_t stream) {
  if (g.planes <= 0) return;
  if (pool_tiles_exactly(g)) {
    const dim3 grid(static_cast<unsigned>(g.planes), blocks_for(static_cast<long>(g.oh) * g.ow, true));
    maxpool_backward_tiled_kernel<<<grid, kPoolThreads, 0, stream>>>(dy, argmax, dx, g, drop);
    CUDA_CHECK_LAUNCH();
    return;
  }
  const dim3 grid(static_cast<unsigned>(g.planes), blocks_for(static_cast<long>(g.h) * g.w, true));
  maxpool_backward_kernel<<<grid, kPoolThreads, 0, stream>>>(dy, argmax, dx, g, drop);
  CUDA_CHECK_LAUNCH();
}

bool conv_pool_fits(const PoolGeometry& g) {
  return g.planes >= 1 && pool_tiles_exactly(g) && g.k >= 2 && g.k <= 3 && g.oh >= 1 && g.ow >= 1 &&
         static_cast<long>(g.h) * g.w <= INT_MAX;
}

namespace {

void require_conv_pool(const PoolGeometry& g, int channels, const char* what) {
  if (!conv_pool_fits(g) || channels < 1 || g.planes % channels != 0)
    throw CudaError(std::string(what) + ": pooling geometry outside conv_pool_fits (or planes not samples x " +
                    std::to_string(channels) + " channels)");
}

}  // namespace

void conv_pool_forward(const float* x, const float* bias, bool relu, float* y, int32_t* argmax, const PoolGeometry& g,
                       int channels, const FusedDropout& drop, cudaStream_t stream) {
  require_conv_pool(g, channels, "conv_pool_forward");
  const bool four = windows_per_thread(g) == 4, vec = four && aligned16(x) && aligned16(y) && aligned16(argmax);
  if (g.k == 2 && vec) return launch_conv_pool<2, 4, true>(x, bias, relu, y, argmax, g, channels, drop, stream);
  if (g.k == 2 && four) return launch_conv_pool<2, 4, false>(x, bias, relu, y, argmax, g, channels, drop, stream);
  if (g.k == 2) return launch_conv_pool<2, 1, false>(x, bias, relu, y, argmax, g, channels, drop, stream);
  if (vec) return launch_conv_pool<3, 4, true>(x, bias, relu, y, argmax, g, channels, drop, stream);
  if (four) return launch_conv_pool<3, 4, false>(x, bias, relu, y, argmax, g, channels, drop, stream);
  launch_conv_pool<3, 1, false>(x, bias, relu, y, argmax, g, channels, drop, stream);
}

size_t conv_pool_backward_scratch(const PoolGeometry& g, int channels) {
  return static_cast<size_t>(channels) * sample_groups(g, channels);
}

void conv_pool_backward(const float* dy, const float* y, const int32_t* argmax, bool relu, float* dx, float* db,
                        float* scratch, const PoolGeometry& g, int channels, const FusedDropout& drop,
                        cudaStream_t stream) {
  require_conv_pool(g, channels, "conv_pool_backward");
  float* partial = db != nullptr ? scratch : nullptr;
  const float scale = drop.active() ? drop.scale : 1.0f;
  const bool four = windows_per_thread(g) == 4,
             vec = four && aligned16(dy) && (!relu || aligned16(y)) && aligned16(argmax) && aligned16(dx);
  if (g.k == 2 && vec)
    launch_conv_pool_backward<2, 4, true>(dy, y, argmax, relu, dx, partial, g, channels, scale, stream);
  else if (g.k == 2 && four)
    launch_conv_pool_backward<2, 4, false>(dy, y, argmax, relu, dx, partial, g, channels, scale, stream);
  else if (g.k == 2)
    launch_conv_pool_backward<2, 1, false>(dy, y, argmax, relu, dx, partial, g, channels, scale, stream);
  else if (vec)
    launch_conv_pool_backward<3, 4, true>(dy, y, argmax, relu, dx, partial, g, channels, scale, stream);
  else if (four)
    launch_conv_pool_backward<3, 4, false>(dy, y, argmax, relu, dx, partial, g, channels, scale, stream);
  else
    launch_conv_pool_backward<3, 1, false>(dy, y, argmax, relu, dx, partial, g, channels, scale, stream);
  if (db == nullptr) return;
  bias_grad_finish(scratch, sample_groups(g, channels), channels, db, stream);
}

namespace {

/// ceil(a / b) for b > 0 and any a.
__device__ __forceinline__ int ceil_div_signed(int a, int b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }

__global__ void avgpool_forward_kernel(const float* x, float* y, AvgPoolGeometry g) {
  const long per_plane = static_cast<long>(g.oh) * g.ow, outputs = g.planes * per_plane;
  const float divisor = static_cast<float>(g.kh * g.kw);
  for (long o = blockIdx.x * static_cast<long>(blockDim.x) + threadIdx.x; o < outputs;
       o += static_cast<long>(gridDim.x) * blockDim.x) {
    const long plane = o / per_plane;
    const int q = static_cast<int>(o - plane * per_plane), oy = q / g.ow, ox = q - oy * g.ow;
    const float* src = x + plane * g.h * g.w;
    const int y0 = oy * g.stride - g.pad, x0 = ox * g.stride - g.pad;
    const int y1 = min(y0 + g.kh, g.h), x1 = min(x0 + g.kw, g.w);
    float sum = 0.0f;
    for (int iy = max(y0, 0); iy < y1; ++iy)
      for (int ix = max(x0, 0); ix < x1; ++ix) sum += src[iy * g.w + ix];
    y[o] = sum / divisor;
  }
}

__global__ void avgpool_backward_kernel(const float* dy, float* dx, AvgPoolGeometry g) {
  const long per_plane = static_cast<long>(g.h) * g.w, inputs = g.planes * per_plane;
  const float divisor = static_cast<float>(g.kh * g.kw);
  for (long i = blockIdx.x * static_cast<long>(blockDim.x) + threadIdx.x; i < inputs;
       i += static_cast<long>(gridDim.x) * blockDim.x) {
    const long plane = i / per_plane;
    const int q = static_cast<int>(i - plane * per_plane), iy = q / g.w, ix = q - iy * g.w;
    const float* grad = dy + plane * g.oh * g.ow;
    // Windows oy with oy stride - pad <= iy < oy stride - pad + kh (likewise for x).
    const int oy0 = max(0, ceil_div_signed(iy + g.pad - g.kh + 1, g.stride)), oy1 = min(g.oh - 1, (iy + g.pad) / g.stride);
    const int ox0 = max(0, ceil_div_signed(ix + g.pad - g.kw + 1, g.stride)), ox1 = min(g.ow - 1, (ix + g.pad) / g.stride);
    float sum = 0.0f;
    for (int oy = oy0; oy <= oy1; ++oy)
      for (int ox = ox0; ox <= ox1; ++ox) sum += grad[oy * g.ow + ox];
    dx[i] = sum / divisor;
  }
}

}  // namespace

void avgpool_forward(const float* x, float* y, const AvgPoolGeometry& g, cudaStream_t stream) {
  const long outputs = static_cast<long>(g.planes) * g.oh * g.ow;
  if (outputs <= 0) return;
  avgpool_forward_kernel<<<blocks_for(outputs), kPoolThreads, 0, stream>>>(x, y, g);
  CUDA_CHECK_LAUNCH();
}

void avgpool_backward(const float* dy, float* dx, const AvgPoolGeometry& g, cudaStream_t stream) {
  const long inputs = static_cast<long>(g.planes) * g.h * g.w;
  if (inputs <= 0) return;
  avgpool_backward_kernel<<<blocks_for(inputs), kPoolThreads, 0, stream>>>(dy, dx, g);
  CUDA_CHECK_LAUNCH();
}

}  // namespace dptrain::kernels
