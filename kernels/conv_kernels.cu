#include <algorithm>
#include <climits>

#include "core/cuda_check.h"
#include "kernels/conv_kernels.h"
#include "kernels/conv_shared.cuh"
#include "kernels/pool_kernels.h"

namespace dptrain::kernels {

namespace {

constexpr int kThreads = 256;
constexpr int kMaxTaps = kDirectConvMaxReduction;
// Filter gradient: one block sums kChunk output positions (sample, row, column) for kChannelTile
// output channels. The split is a function of the shape only, so the summation order (and the
// result) is the same on every GPU.
constexpr int kChunk = 128;
constexpr int kChannelTile = 32;
constexpr int kFinishThreads = 128;

/// Input offset of tap j = (ci, ky, kx) for output (oy, ox) of one sample, or -1 in the padding.
__device__ __forceinline__ int tap_offset(const ConvGeometry& g, int j, int oy, int ox) {
  const int kk = g.k * g.k, ci = j / kk, ky = (j % kk) / g.k, kx = j % g.k;
  const int iy = oy * g.stride - g.pad + ky, ix = ox * g.stride - g.pad + kx;
  return iy >= 0 && iy < g.h && ix >= 0 && ix < g.w ? (ci * g.h + iy) * g.w + ix : -1;
}

// Block (sample, group of kForwardChannels output channels; range of positions): one position per
// thread, whose taps are read once and serve every channel of the group; the group's weights sit
// in shared memory (broadcast reads). Each output sums its taps in (ci, ky, kx) order.
constexpr int kForwardChannels = 8;
constexpr int kForwardThreads = 128;

/// A forward block's sample and first output channel (blockIdx.x = sample x groups + group).
struct ForwardGroup {
  int s, o0;
};
__device__ __forceinline__ ForwardGroup forward_group(const ConvGeometry& g) {
  const int groups = (g.oc + kForwardChannels - 1) / kForwardChannels;
  const int s = blockIdx.x / groups;
  return {s, (static_cast<int>(blockIdx.x) - s * groups) * kForwardChannels};
}

/// The group's weights, [kForwardChannels][taps] (zero past the last channel), into shared memory.
__device__ __forceinline__ void stage_group_weights(const float* __restrict__ w, float (*ws)[kMaxTaps],
                                                    const ConvGeometry& g, int o0) {
  const int taps = g.c * g.k * g.k;
  for (int e = threadIdx.x; e < kForwardChannels * taps; e += blockDim.x) {
    const int t = e / taps, o = o0 + t;
    ws[t][e - t * taps] = o < g.oc ? w[o * taps + e - t * taps] : 0.0f;
  }
}

/// Output (oy, ox) of one sample (xs) for the group's channels: the taps in (ci, ky, kx) order, then
/// the bias, then the ReLU when relu is set. The pooled kernel below sums the same taps in the same
/// order (and adds w x 0 for a padding tap, which this one skips).
__device__ __forceinline__ void direct_outputs(const float* xs, const float (*ws)[kMaxTaps], const float* __restrict__ b,
                                               const ConvGeometry& g, int o0, int oy, int ox, bool relu,
                                               float (&out)[kForwardChannels]) {
  float acc[kForwardChannels] = {};
  int j = 0;
  for (int ci = 0; ci < g.c; ++ci)
    for (int ky = 0; ky < g.k; ++ky) {
      const int iy = oy * g.stride - g.pad + ky;
      for (int kx = 0; kx < g.k; ++kx, ++j) {
        const int ix = ox * g.stride - g.pad + kx;
        if (iy < 0 || iy >= g.h || ix < 0 || ix >= g.w) continue;
        const float v = xs[(ci * g.h + iy) * g.w + ix];
#pragma unroll
        for (int t = 0; t < kForwardChannels; ++t) acc[t] += ws[t][j] * v;
      }
    }
#pragma unroll
  for (int t = 0; t < kForwardChannels; ++t) {
    const float v = acc[t] + (o0 + t < g.oc ? __ldg(b + o0 + t) : 0.0f);
    out[t] = relu && !(v > 0.0f) ? 0.0f : v;
  }
}

__global__ void conv_direct_forward_kernel(const float* __restrict__ x, const float* __restrict__ w,
                                           const float* __restrict__ b, float* __restrict__ y, ConvGeometry g,
                                           bool relu) {
  __shared__ float ws[kForwardChannels][kMaxTaps];
  const auto [s, o0] = forward_group(g);
  const int plane = g.oh * g.ow, q = blockIdx.y * blockDim.x + threadIdx.x;
  stage_group_weights(w, ws, g, o0);
  __syncthreads();
  if (q >= plane) return;
  const int oy = q / g.ow, ox = q - oy * g.ow;
  float v[kForwardChannels];
  direct_outputs(x + static_cast<long>(s) * g.c * g.h * g.w, ws, b, g, o0, oy, ox, relu, v);
  float* out = y + (static_cast<long>(s) * g.oc + o0) * plane + q;
#pragma unroll
  for (int t = 0; t < kForwardChannels; ++t) {
    if (o0 + t >= g.oc) break;
    out[static_cast<long>(t) * plane] = v[t];
  }
}

// The same with a max pooling of the output (grid over pooled positions): a thread computes the
// outputs under its window, in the pooling's scan order (row by row, positions past the plane
// skipped), and keeps the first maximum, as maxpool_forward does over the stored outputs. The
// window's outputs are computed kWindowOutputs at a time, tap by tap: one read of a tap's weights
// (two 16-byte broadcast loads for the group's 8 channels) serves that many outputs. kStaged: the
// sample's zero-padded input planes sit in shared memory after the weights (a tap is then one
// shared-memory read; conv_direct_forward_kernel's reads of global memory with a bounds check for
// every tap and output, and eight scalar weight reads a tap, made it 13.5 us for lenet5's conv1 at
// batch 257, H100); else the taps are read from global memory, zero outside the plane. Each output
// sums its taps in (ci, ky, kx) order from zero, a padding tap adding w x 0, then adds the bias: the
// plain kernel's values (which skips those taps; only the sign of a zero sum can differ).
constexpr int kWindowOutputs = 4;
constexpr int kPoolForwardMaxThreads = 256;
constexpr int kGroupWeightFloats = kForwardChannels * kMaxTaps;  // [taps][kForwardChannels]
constexpr int kPoolForwardSharedFloats = kGroupWeightFloats + kForwardChannels;  // and the bias

template <bool kStaged>
__global__ void __launch_bounds__(kPoolForwardMaxThreads, 3)
    conv_direct_pool_forward_kernel(const float* __restrict__ x, const float* __restrict__ w,
                                    const float* __restrict__ b, float* __restrict__ y, int32_t* __restrict__ argmax,
                                    ConvGeometry g, PoolGeometry p, bool relu) {
  extern __shared__ float4 shared4[];
  float* ws = reinterpret_cast<float*>(shared4);  // [taps][kForwardChannels], zeros past the last channel
  float* bias = ws + kGroupWeightFloats;           // [kForwardChannels]
  float* padded = bias + kForwardChannels;         // kStaged: [c][h + 2 pad][w + 2 pad]
  const auto [s, o0] = forward_group(g);
  const int taps = g.c * g.k * g.k, pw = g.w + 2 * g.pad, plane_floats = (g.h + 2 * g.pad) * pw;
  for (int e = threadIdx.x; e < kForwardChannels * taps; e += blockDim.x) {
    const int j = e / kForwardChannels, t = e - j * kForwardChannels, o = o0 + t;
    ws[e] = o < g.oc ? __ldg(w + static_cast<long>(o) * taps + j) : 0.0f;
  }
  if (threadIdx.x < kForwardChannels) bias[threadIdx.x] = o0 + threadIdx.x < g.oc ? __ldg(b + o0 + threadIdx.x) : 0.0f;
  const float* xs = x + static_cast<long>(s) * g.c * g.h * g.w;
  if constexpr (kStaged) conv_shared::stage_padded(xs, padded, g, pw);
  __syncthreads();
  const int pooled = p.oh * p.ow, window = p.k * p.k;
  for (int q = blockIdx.y * blockDim.x + threadIdx.x; q < pooled; q += gridDim.y * blockDim.x) {
    const int py = q / p.ow, px = q - py * p.ow;
    float best[kForwardChannels];
    int where[kForwardChannels];
#pragma unroll
    for (int t = 0; t < kForwardChannels; ++t) best[t] = -INFINITY, where[t] = -1;
    for (int first = 0; first < window; first += kWindowOutputs) {
      // Output u of this pass: window position first + u, at (oy, ox) = at[u] / ow, at[u] % ow of the plane
      // (bit u of `inside` set), its taps from padded offset origin[u] = oy stride pw + ox stride.
      int at[kWindowOutputs], origin[kWindowOutputs];
      unsigned inside = 0;
#pragma unroll
      for (int u = 0; u < kWindowOutputs; ++u) {
        const int e = first + u, wy = e / p.k, oy = py * p.stride - p.pad + wy,
                  ox = px * p.stride - p.pad + (e - wy * p.k);
        const bool in = e < window && oy >= 0 && oy < g.oh && ox >= 0 && ox < g.ow;
        inside |= in ? 1u << u : 0u;
        at[u] = in ? oy * g.ow + ox : 0;
        origin[u] = in ? oy * g.stride * pw + ox * g.stride : 0;
      }
      float acc[kWindowOutputs][kForwardChannels] = {};
      int j = 0;
      for (int ci = 0; ci < g.c; ++ci)
        for (int ky = 0; ky < g.k; ++ky)
          for (int kx = 0; kx < g.k; ++kx, ++j) {
            const float4 lo = shared4[2 * j], hi = shared4[2 * j + 1];
            const float wt[kForwardChannels] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
            const int tap = ci * plane_floats + ky * pw + kx;  // padded offset of the tap from an origin
#pragma unroll
            for (int u = 0; u < kWindowOutputs; ++u) {
              float v;
              if constexpr (kStaged) {
                v = padded[origin[u] + tap];
              } else {
                const int r = origin[u] + ky * pw + kx, iy = r / pw - g.pad, ix = r % pw - g.pad;
                v = (inside >> u & 1u) && iy >= 0 && iy < g.h && ix >= 0 && ix < g.w
                        ? __ldg(xs + (ci * g.h + iy) * g.w + ix)
                        : 0.0f;
              }
#pragma unroll
              for (int t = 0; t < kForwardChannels; ++t) acc[u][t] = fmaf(wt[t], v, acc[u][t]);
            }
          }
#pragma unroll
      for (int u = 0; u < kWindowOutputs; ++u) {
        if (!(inside >> u & 1u)) continue;
#pragma unroll
        for (int t = 0; t < kForwardChannels; ++t) {
          float v = acc[u][t] + bias[t];
          if (relu && !(v > 0.0f)) v = 0.0f;
          if (v > best[t] || where[t] < 0) best[t] = v, where[t] = at[u];
        }
      }
    }
    const long out = (static_cast<long>(s) * g.oc + o0) * pooled + q;
#pragma unroll
    for (int t = 0; t < kForwardChannels; ++t) {
      if (o0 + t >= g.oc) break;
      y[out + static_cast<long>(t) * pooled] = best[t];
      argmax[out + static_cast<long>(t) * pooled] = where[t];
    }
  }
}

// Block (chunk, channel tile): stages the chunk's taps and output gradients in shared memory, then
// each thread sums chunk positions for (channel, tap) pairs; tap index `taps` is the bias.
// partial[chunk][o][j], j in [0, taps]. relu_out (may be null): keep dy only where it is positive.
__global__ void conv_direct_filter_partial_kernel(const float* x, const float* dy, const float* relu_out, float* partial,
                                                  ConvGeometry g) {
  __shared__ float xs[kChunk][kMaxTaps + 1];
  __shared__ float ds[kChannelTile][kChunk + 1];
  __shared__ long dy_offset[kChunk];  // of channel o0 at each chunk position, -1 past the end
  const int plane = g.oh * g.ow, taps = g.c * g.k * g.k, positions = g.n * plane;
  const int first = blockIdx.x * kChunk, o0 = blockIdx.y * kChannelTile;
  const int tile = min(kChannelTile, g.oc - o0);
  for (int i = threadIdx.x; i < kChunk; i += blockDim.x) {
    const int p = first + i;
    dy_offset[i] = p < positions ? (static_cast<long>(p / plane) * g.oc + o0) * plane + p % plane : -1;
  }
  for (int e = threadIdx.x; e < kChunk * (taps + 1); e += blockDim.x) {
    const int i = e / (taps + 1), j = e % (taps + 1), p = first + i;
    float v = 0.0f;
    if (p < positions) {
      const int s = p / plane, q = p % plane;
      const int off = j < taps ? tap_offset(g, j, q / g.ow, q % g.ow) : -1;
      v = j == taps ? 1.0f : off >= 0 ? x[static_cast<long>(s) * g.c * g.h * g.w + off] : 0.0f;
    }
    xs[i][j] = v;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < tile * kChunk; e += blockDim.x) {
    const int o = e / kChunk, i = e % kChunk;
    const long k = dy_offset[i] + static_cast<long>(o) * plane;
    ds[o][i] = dy_offset[i] >= 0 && (relu_out == nullptr || relu_out[k] > 0.0f) ? dy[k] : 0.0f;
  }
  __syncthreads();
  float* out = partial + (static_cast<long>(blockIdx.x) * g.oc + o0) * (taps + 1);
  for (int e = threadIdx.x; e < tile * (taps + 1); e += blockDim.x) {
    const int o = e / (taps + 1), j = e % (taps + 1);
    float acc = 0.0f;
    for (int i = 0; i < kChunk; ++i) acc += ds[o][i] * xs[i][j];
    out[e] = acc;
  }
}

// Block per (o, j): thread t adds chunks t, t + blockDim.x, ...; then the lanes (shuffle tree)
// and the warps (in order) are added: a fixed order, and no long serial chain.
__global__ void conv_direct_filter_finish_kernel(const float* partial, int chunks, int taps, float* dw, float* db) {
  __shared__ float warp_sums[kFinishThreads / 32];
  const int t = blockIdx.x, per_chunk = gridDim.x;
  float sum = 0.0f;
  for (int c = threadIdx.x; c < chunks; c += blockDim.x) sum += partial[static_cast<long>(c) * per_chunk + t];
  for (int off = 16; off > 0; off /= 2) sum += __shfl_down_sync(0xffffffffu, sum, off);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = sum;
  __syncthreads();
  if (threadIdx.x != 0) return;
  float total = 0.0f;
  for (int i = 0; i < kFinishThreads / 32; ++i) total += warp_sums[i];
  const int o = t / (taps + 1), j = t % (taps + 1);
  if (j < taps)
    dw[o * taps + j] = total;
  else
    db[o] = total;
}

// One input channel (a first layer on grey images), K x K taps known at compile time: a GEMM of
// output channels by taps (+ bias) whose long inner dimension is the batch's positions, a stream
// over dy with a few FMAs per element. Block (sample, group of kPlaneWarps output channels): the
// sample's input plane, zero-padded, sits in shared memory; warp w takes channel o = group *
// kPlaneWarps + w and walks its output plane 32 positions at a time, so that dy and relu_out are
// read in whole 128-byte lines; lane l sums the K*K + 1 products (the last is the bias) of positions
// l, l + 32, ... in order, and a shuffle tree adds the lanes. partial[s][o][j]; the finish kernel
// adds the samples in order. (A block per chunk of 43 positions across channels, before, spent
// more on its 8-lane reductions and 1.3 MB of partials than on dy: 25 us in the step's graph.)
constexpr int kPlaneWarps = 8;
constexpr int kMaxPlaneFloats = 12 * 1024;  // a padded input plane in 48 KB of shared memory

template <int K>
__global__ void __launch_bounds__(kPlaneWarps * 32)
    conv_direct_filter_plane_kernel(const float* __restrict__ x, const float* __restrict__ dy,
                                    const float* __restrict__ relu_out, float* __restrict__ partial, ConvGeometry g) {
  extern __shared__ float xs[];  // [h + 2 pad][w + 2 pad]
  constexpr int kTaps = K * K;
  const int s = blockIdx.x, pw = g.w + 2 * g.pad;
  const float* plane_in = x + static_cast<long>(s) * g.h * g.w;
  conv_shared::stage_padded(plane_in, xs, g, pw);  // g.c = 1
  __syncthreads();
  const int lane = threadIdx.x % 32, o = blockIdx.y * kPlaneWarps + threadIdx.x / 32;
  if (o >= g.oc) return;
  const int plane = g.oh * g.ow;
  const float* grads = dy + (static_cast<long>(s) * g.oc + o) * plane;
  const float* kept = relu_out == nullptr ? nullptr : relu_out + (static_cast<long>(s) * g.oc + o) * plane;
  float acc[kTaps + 1] = {};
#pragma unroll 4
  for (int q = lane; q < plane; q += 32) {
    const float d = grads[q];  // read either way: the loads of several positions stay in flight
    const float grad = kept == nullptr || kept[q] > 0.0f ? d : 0.0f;
    const int oy = q / g.ow, ox = q - oy * g.ow;
    const float* window = xs + oy * g.stride * pw + ox * g.stride;
#pragma unroll
    for (int ky = 0; ky < K; ++ky)
#pragma unroll
      for (int kx = 0; kx < K; ++kx) acc[ky * K + kx] = fmaf(grad, window[ky * pw + kx], acc[ky * K + kx]);
    acc[kTaps] += grad;
  }
#pragma unroll
  for (int j = 0; j <= kTaps; ++j)
#pragma unroll
    for (int off = 16; off > 0; off /= 2) acc[j] += __shfl_down_sync(0xffffffffu, acc[j], off);
  if (lane == 0) {
    float* out = partial + (static_cast<long>(s) * g.oc + o) * (kTaps + 1);
#pragma unroll
    for (int j = 0; j <= kTaps; ++j) out[j] = acc[j];
  }
}

// The filter gradient of a convolution whose output was max pooled (conv_direct_pool_forward), from
// the gradient of the pooled output: the convolution's output gradient is that gradient at each
// window's argmax and zero elsewhere, so only the pooled positions are visited (a quarter of the
// positions for 2 x 2 windows, and no pass that spreads the gradient over the windows). Block
// (sample, group of kPlaneWarps output channels), warp per channel; lane l sums the products of
// pooled positions l, l + 32, ... in order, a shuffle tree adds the lanes, and the finish kernel adds
// the samples in order, as for the plane kernel. kStaged: the sample's zero-padded input planes sit
// in shared memory (one coalesced pass; the windows' taps were dependent L2 reads after each argmax:
// 27 us for lenet5's conv1 at batch 257 in the step's graph, H100); else the taps are read from global
// memory. K x K taps per input channel, at most kMaxTaps / (K K) input channels.
template <int K, bool kStaged>
__global__ void __launch_bounds__(kPlaneWarps * 32)
    conv_direct_pool_filter_kernel(const float* __restrict__ x, const float* __restrict__ dy,
                                   const float* __restrict__ y, const int32_t* __restrict__ argmax, bool relu,
                                   float* __restrict__ partial, ConvGeometry g, PoolGeometry p) {
  extern __shared__ float padded[];  // kStaged: [c][h + 2 pad][w + 2 pad]
  constexpr int kChannels = kMaxTaps / (K * K), kTaps = kChannels * K * K;
  const int s = blockIdx.x, lane = threadIdx.x % 32, o = blockIdx.y * kPlaneWarps + threadIdx.x / 32;
  const int pw = g.w + 2 * g.pad, plane_floats = (g.h + 2 * g.pad) * pw;
  const float* xs = x + static_cast<long>(s) * g.c * g.h * g.w;
  if constexpr (kStaged) {
    conv_shared::stage_padded(xs, padded, g, pw);
    __syncthreads();
  }
  if (o >= g.oc) return;
  const int pooled = p.oh * p.ow;
  const long at = (static_cast<long>(s) * g.oc + o) * pooled;
  float acc[kTaps + 1] = {};
#pragma unroll 4
  for (int q = lane; q < pooled; q += 32) {
    const float d = __ldg(dy + at + q);
    const float grad = relu && !(__ldg(y + at + q) > 0.0f) ? 0.0f : d;
    const int where = __ldg(argmax + at + q), oy = where / g.ow, ox = where - oy * g.ow;
    const int iy0 = oy * g.stride - g.pad, ix0 = ox * g.stride - g.pad;
#pragma unroll
    for (int ci = 0; ci < kChannels; ++ci) {
      if (ci >= g.c) break;
#pragma unroll
      for (int ky = 0; ky < K; ++ky) {
        const int iy = iy0 + ky;
#pragma unroll
        for (int kx = 0; kx < K; ++kx) {
          const int ix = ix0 + kx;
          float v;
          if constexpr (kStaged)
            v = padded[ci * plane_floats + (iy + g.pad) * pw + ix + g.pad];
          else
            v = iy >= 0 && iy < g.h && ix >= 0 && ix < g.w ? __ldg(xs + (ci * g.h + iy) * g.w + ix) : 0.0f;
          acc[(ci * K + ky) * K + kx] = fmaf(grad, v, acc[(ci * K + ky) * K + kx]);
        }
      }
    }
    acc[kTaps] += grad;
  }
  const int taps = g.c * K * K;
#pragma unroll
  for (int j = 0; j <= kTaps; ++j)
#pragma unroll
    for (int off = 16; off > 0; off /= 2) acc[j] += __shfl_down_sync(0xffffffffu, acc[j], off);
  if (lane != 0) return;
  float* out = partial + (static_cast<long>(s) * g.oc + o) * (taps + 1);
#pragma unroll
  for (int j = 0; j < kTaps; ++j)
    if (j < taps) out[j] = acc[j];
  out[taps] = acc[kTaps];
}

/// Floats of the plane kernel's shared memory: one zero-padded input plane.
long padded_plane_floats(const ConvGeometry& g) { return static_cast<long>(g.h + 2 * g.pad) * (g.w + 2 * g.pad); }

/// The plane kernel's K, or 0 where it does not serve.
int plane_kernel(const ConvGeometry& g) {
  return g.c == 1 && (g.k == 3 || g.k == 5) && padded_plane_floats(g) <= kMaxPlaneFloats &&
                 g.oc <= 65535 * kPlaneWarps
             ? g.k
             : 0;
}

/// Blocks of partial sums (64-bit: also sizes the scratch of geometries direct_conv_fits refuses).
long long chunks_for(const ConvGeometry& g) {
  if (plane_kernel(g) != 0) return g.n;
  return (static_cast<long long>(g.n) * g.oh * g.ow + kChunk - 1) / kChunk;
}

/// Within a sample the kernels index in 32-bit integers (64-bit division is slow on GPUs); direct_conv_fits.
void check_fits(const ConvGeometry& g, const char* what) {
  if (!direct_conv_fits(g)) conv_shared::refuse(what, "direct", g);
}

}  // namespace

bool direct_conv_fits(const ConvGeometry& g) {
  if (g.n < 1 || g.c < 1 || g.h < 1 || g.w < 1 || g.oc < 1 || g.k < 1 || g.stride < 1 || g.pad < 0) return false;
  if (g.c > kDirectConvMaxReduction || g.k > kDirectConvMaxReduction || !direct_conv_fits(g.c, g.k)) return false;
  const long long ph = static_cast<long long>(g.h) + 2 * g.pad, pw = static_cast<long long>(g.w) + 2 * g.pad;
  if (ph < g.k || pw < g.k || g.oh != (ph - g.k) / g.stride + 1 || g.ow != (pw - g.k) / g.stride + 1) return false;
  const long long plane = static_cast<long long>(g.oh) * g.ow;
  const long long groups = (g.oc + kForwardChannels - 1) / kForwardChannels;
  return static_cast<long long>(g.c) * g.h * g.w <= INT_MAX && g.n * plane <= INT_MAX - (kChunk - 1) &&
         g.n * groups <= INT_MAX && plane <= 65535LL * kForwardThreads && g.oc <= 65535LL * kChannelTile;
}

void conv_direct_forward(const float* x, const float* w, const float* b, float* y, bool relu, const ConvGeometry& g,
                         cudaStream_t stream) {
  check_fits(g, "conv_direct_forward");
  const int groups = (g.oc + kForwardChannels - 1) / kForwardChannels;
  const dim3 grid(static_cast<unsigned>(g.n * groups),
                  static_cast<unsigned>((g.oh * g.ow + kForwardThreads - 1) / kForwardThreads));
  conv_direct_forward_kernel<<<grid, kForwardThreads, 0, stream>>>(x, w, b, y, g, relu);
  CUDA_CHECK_LAUNCH();
}

size_t conv_direct_filter_grad_scratch(const ConvGeometry& g) {
  return sizeof(float) * static_cast<size_t>(chunks_for(g)) * g.oc * (g.c * g.k * g.k + 1);
}

void conv_direct_filter_grad(const float* x, const float* dy, const float* relu_out, float* dw, float* db,
                             void* scratch, const ConvGeometry& g, cudaStream_t stream) {
  check_fits(g, "conv_direct_filter_grad");
  const int chunks = static_cast<int>(chunks_for(g)), taps = g.c * g.k * g.k;
  float* partial = static_cast<float*>(scratch);
  if (const int k = plane_kernel(g); k != 0) {
    const dim3 grid(static_cast<unsigned>(g.n), static_cast<unsigned>((g.oc + kPlaneWarps - 1) / kPlaneWarps));
    const size_t shared = sizeof(float) * static_cast<size_t>(padded_plane_floats(g));
    if (k == 3)
      conv_direct_filter_plane_kernel<3><<<grid, kPlaneWarps * 32, shared, stream>>>(x, dy, relu_out, partial, g);
    else
      conv_direct_filter_plane_kernel<5><<<grid, kPlaneWarps * 32, shared, stream>>>(x, dy, relu_out, partial, g);
  } else {
    const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>((g.oc + kChannelTile - 1) / kChannelTile));
    conv_direct_filter_partial_kernel<<<grid, kThreads, 0, stream>>>(x, dy, relu_out, partial, g);
  }
  CUDA_CHECK_LAUNCH();
  conv_direct_filter_finish_kernel<<<g.oc * (taps + 1), kFinishThreads, 0, stream>>>(partial, chunks, taps, dw, db);
  CUDA_CHECK_LAUNCH();
}

namespace {

/// Calls f with conv_direct_pool_filter_kernel<k, staged> (c k^2 <= kMaxTaps: k <= 5).
template <typename F>
void with_pool_filter_kernel(int k, bool staged, F f) {
  if (staged) {
    if (k == 1) return f(conv_direct_pool_filter_kernel<1, true>);
    if (k == 2) return f(conv_direct_pool_filter_kernel<2, true>);
    if (k == 3) return f(conv_direct_pool_filter_kernel<3, true>);
    if (k == 4) return f(conv_direct_pool_filter_kernel<4, true>);
    return f(conv_direct_pool_filter_kernel<5, true>);
  }
  if (k == 1) return f(conv_direct_pool_filter_kernel<1, false>);
  if (k == 2) return f(conv_direct_pool_filter_kernel<2, false>);
  if (k == 3) return f(conv_direct_pool_filter_kernel<3, false>);
  if (k == 4) return f(conv_direct_pool_filter_kernel<4, false>);
  f(conv_direct_pool_filter_kernel<5, false>);
}

}  // namespace

bool direct_pool_fits(const ConvGeometry& g, const PoolGeometry& p) {
  if (!direct_conv_fits(g) || (g.oc + kPlaneWarps - 1) / kPlaneWarps > 65535) return false;
  if (p.h != g.oh || p.w != g.ow || static_cast<long long>(p.planes) != static_cast<long long>(g.n) * g.oc) return false;
  // Every window holds a position of the plane (2 pad <= k, as the pooling layer's shape rule asks).
  if (p.k < 1 || p.stride < 1 || p.pad < 0 || 2 * p.pad > p.k || p.h + 2 * p.pad < p.k || p.w + 2 * p.pad < p.k)
    return false;
  if (p.oh != (p.h + 2 * p.pad - p.k) / p.stride + 1 || p.ow != (p.w + 2 * p.pad - p.k) / p.stride + 1) return false;
  return static_cast<long long>(p.oh) * p.ow <= 65535LL * kForwardThreads;
}

void conv_direct_pool_forward(const float* x, const float* w, const float* b, bool relu, float* y, int32_t* argmax,
                              const ConvGeometry& g, const PoolGeometry& p, cudaStream_t stream) {
  if (!direct_pool_fits(g, p)) conv_shared::refuse("conv_direct_pool_forward", "direct pooled", g);
  const int groups = (g.oc + kForwardChannels - 1) / kForwardChannels, pooled = p.oh * p.ow;
  // A block takes the whole pooled plane up to kPoolForwardMaxThreads positions (one staging of the sample).
  const int threads = static_cast<int>(std::min<long long>(kPoolForwardMaxThreads, (pooled + 31LL) / 32 * 32));
  const dim3 grid(static_cast<unsigned>(g.n * groups), static_cast<unsigned>((pooled + threads - 1) / threads));
  const long staged = kPoolForwardSharedFloats + g.c * padded_plane_floats(g);
  if (staged <= kMaxPlaneFloats) {
    conv_direct_pool_forward_kernel<true><<<grid, threads, sizeof(float) * staged, stream>>>(x, w, b, y, argmax, g, p,
                                                                                             relu);
  } else {
    conv_direct_pool_forward_kernel<false><<<grid, threads, sizeof(float) * kPoolForwardSharedFloats, stream>>>(
        x, w, b, y, argmax, g, p, relu);
  }
  CUDA_CHECK_LAUNCH();
}

size_t conv_direct_pool_filter_grad_scratch(const ConvGeometry& g) {
  return sizeof(float) * static_cast<size_t>(g.n) * g.oc * (g.c * g.k * g.k + 1);
}

void conv_direct_pool_filter_grad(const float* x, const float* dy, const float* y, const int32_t* argmax, bool relu,
                                  float* dw, float* db, void* scratch, const ConvGeometry& g, const PoolGeometry& p,
                                  cudaStream_t stream) {
  if (!direct_pool_fits(g, p)) conv_shared::refuse("conv_direct_pool_filter_grad", "direct pooled", g);
  const int taps = g.c * g.k * g.k;
  float* partial = static_cast<float*>(scratch);
  const dim3 grid(static_cast<unsigned>(g.n), static_cast<unsigned>((g.oc + kPlaneWarps - 1) / kPlaneWarps));
  const unsigned threads = 32 * static_cast<unsigned>(std::min(g.oc, kPlaneWarps));
  const long padded = g.c * padded_plane_floats(g);
  const bool staged = padded <= kMaxPlaneFloats;  // else the taps are read from global memory
  const size_t shared = staged ? sizeof(float) * static_cast<size_t>(padded) : 0;
  with_pool_filter_kernel(g.k, staged, [&](auto kernel) {
    kernel<<<grid, threads, shared, stream>>>(x, dy, y, argmax, relu, partial, g, p);
  });
  CUDA_CHECK_LAUNCH();
  conv_direct_filter_finish_kernel<<<g.oc * (taps + 1), kFinishThreads, 0, stream>>>(partial, g.n, taps, dw, db);
  CUDA_CHECK_LAUNCH();
}

}  // namespace dptrain::kernels
