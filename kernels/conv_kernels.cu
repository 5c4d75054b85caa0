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

/// Input offset of tap j = (ci, ky, kx) for output (oy, ox) of one sample, or -1 in the padding.
__device__ __forceinline__ int tap_offset(const ConvGeometry& g, int j, int oy, int ox) {
  const int kk = g.k * g.k, ci = j / kk, ky = (j % kk) / g.k, kx = j % g.k;
  const int iy = oy * g.stride - g.pad + ky, ix = ox * g.stride - g.pad + kx;
  return iy >= 0 && iy < g.h && ix >= 0 && ix < g.w ? (ci * g.h + iy) * g.w + ix : -1;
}

// Thread per output position: reads its taps once, then writes every output channel (coalesced:
// neighbouring threads hold neighbouring columns).
__global__ void conv_direct_forward_kernel(const float* x, const float* w, const float* b, float* y, ConvGeometry g) {
  const int plane = g.oh * g.ow, taps = g.c * g.k * g.k;
  const int p = blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= g.n * plane) return;
  const int s = p / plane, q = p % plane, oy = q / g.ow, ox = q % g.ow;
  const float* xs = x + static_cast<long>(s) * g.c * g.h * g.w;
  float xv[kMaxTaps];
#pragma unroll
  for (int j = 0; j < kMaxTaps; ++j) {
    const int off = j < taps ? tap_offset(g, j, oy, ox) : -1;
    xv[j] = off >= 0 ? xs[off] : 0.0f;
  }
  float* ys = y + static_cast<long>(s) * g.oc * plane + q;
  for (int o = 0; o < g.oc; ++o) {
    const float* wo = w + o * taps;
    float acc = 0.0f;
#pragma unroll
    for (int j = 0; j < kMaxTaps; ++j)
      if (j < taps) acc += __ldg(wo + j) * xv[j];
    ys[static_cast<long>(o) * plane] = acc + __ldg(b + o);
  }
}

// Block (chunk, channel tile): stages the chunk's taps and output gradients in shared memory, then
// each thread sums chunk positions for (channel, tap) pairs; tap index `taps` is the bias.
// partial[chunk][o][j], j in [0, taps].
__global__ void conv_direct_filter_partial_kernel(const float* x, const float* dy, float* partial, ConvGeometry g) {
  __shared__ float xs[kChunk][kMaxTaps + 1];
  __shared__ float ds[kChannelTile][kChunk + 1];
  const int plane = g.oh * g.ow, taps = g.c * g.k * g.k, positions = g.n * plane;
  const int first = blockIdx.x * kChunk, o0 = blockIdx.y * kChannelTile;
  const int tile = min(kChannelTile, g.oc - o0);
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
  for (int e = threadIdx.x; e < tile * kChunk; e += blockDim.x) {
    const int o = e / kChunk, i = e % kChunk, p = first + i;
    ds[o][i] = p < positions ? dy[(static_cast<long>(p / plane) * g.oc + o0 + o) * plane + p % plane] : 0.0f;
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

// Thread (o, j): adds the chunks' partial sums in chunk order.
__global__ void conv_direct_filter_finish_kernel(const float* partial, int chunks, int taps, int oc, float* dw,
                                                 float* db) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x, per_chunk = oc * (taps + 1);
  if (t >= per_chunk) return;
  float sum = 0.0f;
  for (int c = 0; c < chunks; ++c) sum += partial[static_cast<long>(c) * per_chunk + t];
  const int o = t / (taps + 1), j = t % (taps + 1);
  if (j < taps)
    dw[o * taps + j] = sum;
  else
    db[o] = sum;
}

int chunks_for(const ConvGeometry& g) { return (g.n * g.oh * g.ow + kChunk - 1) / kChunk; }

/// The kernels index positions and inputs in 32-bit integers (64-bit division is slow on GPUs).
void check_fits(const ConvGeometry& g) {
  if (static_cast<long>(g.n) * g.oh * g.ow > INT_MAX || static_cast<long>(g.n) * g.c * g.h * g.w > INT_MAX)
    throw CudaError("direct convolution: batch of " + std::to_string(g.n) + " is too large for 32-bit indexing");
}

}  // namespace

void conv_direct_forward(const float* x, const float* w, const float* b, float* y, const ConvGeometry& g,
                         cudaStream_t stream) {
  check_fits(g);
  const int positions = g.n * g.oh * g.ow;
  conv_direct_forward_kernel<<<(positions + kThreads - 1) / kThreads, kThreads, 0, stream>>>(x, w, b, y, g);
  CUDA_CHECK_LAUNCH();
}

size_t conv_direct_filter_grad_scratch(const ConvGeometry& g) {
  return sizeof(float) * static_cast<size_t>(chunks_for(g)) * g.oc * (g.c * g.k * g.k + 1);
}

void conv_direct_filter_grad(const float* x, const float* dy, float* dw, float* db, void* scratch,
                             const ConvGeometry& g, cudaStream_t stream) {
  check_fits(g);
  const int chunks = chunks_for(g), taps = g.c * g.k * g.k;
  float* partial = static_cast<float*>(scratch);
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>((g.oc + kChannelTile - 1) / kChannelTile));
  conv_direct_filter_partial_kernel<<<grid, kThreads, 0, stream>>>(x, dy, partial, g);
  CUDA_CHECK_LAUNCH();
  const int outputs = g.oc * (taps + 1);
  conv_direct_filter_finish_kernel<<<(outputs + kThreads - 1) / kThreads, kThreads, 0, stream>>>(partial, chunks, taps,
                                                                                                 g.oc, dw, db);
  CUDA_CHECK_LAUNCH();
}

}  // namespace dptrain::kernels
