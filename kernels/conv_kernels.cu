#include <algorithm>
#include <climits>
#include <string>

#include "cuda/check.h"
#include "kernels/conv_kernels.h"

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

__global__ void conv_direct_forward_kernel(const float* __restrict__ x, const float* __restrict__ w,
                                           const float* __restrict__ b, float* __restrict__ y, ConvGeometry g,
                                           bool relu) {
  __shared__ float ws[kForwardChannels][kMaxTaps];
  const int groups = (g.oc + kForwardChannels - 1) / kForwardChannels;
  const int s = blockIdx.x / groups, o0 = (blockIdx.x - s * groups) * kForwardChannels;
  const int taps = g.c * g.k * g.k, plane = g.oh * g.ow, q = blockIdx.y * blockDim.x + threadIdx.x;
  for (int e = threadIdx.x; e < kForwardChannels * taps; e += blockDim.x) {
    const int t = e / taps, o = o0 + t;
    ws[t][e - t * taps] = o < g.oc ? w[o * taps + e - t * taps] : 0.0f;
  }
  __syncthreads();
  if (q >= plane) return;
  const int oy = q / g.ow, ox = q - oy * g.ow;
  const float* xs = x + static_cast<long>(s) * g.c * g.h * g.w;
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
  float* out = y + (static_cast<long>(s) * g.oc + o0) * plane + q;
#pragma unroll
  for (int t = 0; t < kForwardChannels; ++t) {
    if (o0 + t >= g.oc) break;
    const float v = acc[t] + __ldg(b + o0 + t);
    out[static_cast<long>(t) * plane] = relu && !(v > 0.0f) ? 0.0f : v;
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
// output channels by taps (+ bias) whose long inner dimension is the batch's positions. Block: a
// chunk of consecutive positions (across samples); thread (channel o = tid / kParts + 32 r, part
// tid % kParts) sums every kParts-th position of the chunk into K*K + 1 registers (the last is the
// bias). Lanes of a warp take kParts neighbouring positions of four channels: the gradient reads
// come in 32-byte runs and the input reads (from L1, the planes are small) are shared by the four
// channels. The parts are added by a shuffle tree; chunks by the finish kernel, in order.
constexpr int kOneChannelThreads = 256;
constexpr int kParts = 8;
constexpr int kOneChannelRows = kOneChannelThreads / kParts;  // channels per pass of a block
// Chunks of the batch's positions: a constant (and a function of the shape), so the summation order
// is the same on every GPU. Many short ones: a thread's positions form a chain of dependent loads,
// so the latency is hidden by warps (about 8 blocks per SM) rather than within a thread.
constexpr int kOneChannelChunks = 1024;
constexpr int kMinChunkPositions = 32;

template <int K>
__global__ void __launch_bounds__(kOneChannelThreads)
    conv_direct_filter_one_channel_kernel(const float* __restrict__ x, const float* __restrict__ dy,
                                          const float* __restrict__ relu_out, float* __restrict__ partial,
                                          ConvGeometry g, int chunk_positions) {
  constexpr int kTaps = K * K;
  const int plane = g.oh * g.ow, positions = g.n * plane, part = threadIdx.x % kParts;
  const int first = blockIdx.x * chunk_positions, last = min(positions, first + chunk_positions);
  for (int o = threadIdx.x / kParts; o - static_cast<int>(threadIdx.x / kParts) < g.oc; o += kOneChannelRows) {
    float acc[kTaps + 1] = {};
    if (o < g.oc) {
      int p = first + part, s = p / plane, q = p - s * plane, oy = q / g.ow, ox = q - oy * g.ow;
      for (; p < last; p += kParts) {
        const long k = (static_cast<long>(s) * g.oc + o) * plane + oy * g.ow + ox;
        const float grad = relu_out == nullptr || relu_out[k] > 0.0f ? dy[k] : 0.0f;
        const float* xs = x + static_cast<long>(s) * g.h * g.w;
#pragma unroll
        for (int ky = 0; ky < K; ++ky) {
          const int iy = oy * g.stride - g.pad + ky;
#pragma unroll
          for (int kx = 0; kx < K; ++kx) {
            const int ix = ox * g.stride - g.pad + kx;
            const float v = iy >= 0 && iy < g.h && ix >= 0 && ix < g.w ? __ldg(xs + iy * g.w + ix) : 0.0f;
            acc[ky * K + kx] = fmaf(grad, v, acc[ky * K + kx]);
          }
        }
        acc[kTaps] += grad;
        // Next position: kParts on (kParts < g.ow is not assumed).
        for (ox += kParts; ox >= g.ow;) {
          ox -= g.ow;
          if (++oy == g.oh) oy = 0, ++s;
        }
      }
    }
#pragma unroll
    for (int j = 0; j <= kTaps; ++j)
#pragma unroll
      for (int off = kParts / 2; off > 0; off /= 2) acc[j] += __shfl_down_sync(0xffffffffu, acc[j], off, kParts);
    if (part == 0 && o < g.oc) {
      float* out = partial + (static_cast<long>(blockIdx.x) * g.oc + o) * (kTaps + 1);
#pragma unroll
      for (int j = 0; j <= kTaps; ++j) out[j] = acc[j];
    }
  }
}

/// Positions per chunk of the one-channel kernel.
int one_channel_chunk_positions(const ConvGeometry& g) {
  const long positions = static_cast<long>(g.n) * g.oh * g.ow;
  const long per_chunk = std::max<long>(kMinChunkPositions, (positions + kOneChannelChunks - 1) / kOneChannelChunks);
  return static_cast<int>(std::min<long>(per_chunk, INT_MAX));
}

/// The one-channel kernel's K, or 0 where it does not serve.
int one_channel_kernel(const ConvGeometry& g) { return g.c == 1 && (g.k == 3 || g.k == 5) && g.oc <= 65535 ? g.k : 0; }

int chunks_for(const ConvGeometry& g) {
  if (one_channel_kernel(g) != 0) {
    const long positions = static_cast<long>(g.n) * g.oh * g.ow, per_chunk = one_channel_chunk_positions(g);
    return static_cast<int>((positions + per_chunk - 1) / per_chunk);
  }
  return (g.n * g.oh * g.ow + kChunk - 1) / kChunk;
}

/// The kernels index positions and inputs in 32-bit integers (64-bit division is slow on GPUs).
void check_fits(const ConvGeometry& g) {
  if (static_cast<long>(g.n) * g.oh * g.ow > INT_MAX || static_cast<long>(g.n) * g.c * g.h * g.w > INT_MAX)
    throw CudaError("direct convolution: batch of " + std::to_string(g.n) + " is too large for 32-bit indexing");
  if (static_cast<long>(g.n) * g.oc > INT_MAX || static_cast<long>(g.oh) * g.ow > 65535L * 128)
    throw CudaError("direct convolution: output of " + std::to_string(g.oh) + "x" + std::to_string(g.ow) +
                    " for a batch of " + std::to_string(g.n) + " exceeds the launch grid");
}

}  // namespace

void conv_direct_forward(const float* x, const float* w, const float* b, float* y, bool relu, const ConvGeometry& g,
                         cudaStream_t stream) {
  check_fits(g);
  constexpr int kForwardThreads = 128;
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
  check_fits(g);
  const int chunks = chunks_for(g), taps = g.c * g.k * g.k;
  float* partial = static_cast<float*>(scratch);
  if (const int k = one_channel_kernel(g); k != 0) {
    const int per_chunk = one_channel_chunk_positions(g);
    if (k == 3)
      conv_direct_filter_one_channel_kernel<3><<<chunks, kOneChannelThreads, 0, stream>>>(x, dy, relu_out, partial, g,
                                                                                         per_chunk);
    else
      conv_direct_filter_one_channel_kernel<5><<<chunks, kOneChannelThreads, 0, stream>>>(x, dy, relu_out, partial, g,
                                                                                         per_chunk);
  } else {
    const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>((g.oc + kChannelTile - 1) / kChannelTile));
    conv_direct_filter_partial_kernel<<<grid, kThreads, 0, stream>>>(x, dy, relu_out, partial, g);
  }
  CUDA_CHECK_LAUNCH();
  conv_direct_filter_finish_kernel<<<g.oc * (taps + 1), kFinishThreads, 0, stream>>>(partial, chunks, taps, dw, db);
  CUDA_CHECK_LAUNCH();
}

}  // namespace dptrain::kernels
