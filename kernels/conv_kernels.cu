#include "cuda/check.h"
#include "kernels/conv_kernels.h"

namespace dptrain::kernels {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Output positions (sample, row, column) one block of the filter gradient sums: enough blocks to
// fill the GPU, few enough partial sums to add up afterwards. A function of the shape only, so
// the summation order (and the result) is the same on every GPU.
constexpr long kPositionsPerBlock = 1024;

__global__ void conv_direct_forward_kernel(const float* x, const float* w, const float* b, float* y,
                                           ConvGeometry g) {
  const long total = static_cast<long>(g.n) * g.oc * g.oh * g.ow;
  for (long i = blockIdx.x * long{blockDim.x} + threadIdx.x; i < total; i += long{gridDim.x} * blockDim.x) {
    const int ox = static_cast<int>(i % g.ow);
    long r = i / g.ow;
    const int oy = static_cast<int>(r % g.oh);
    r /= g.oh;
    const int o = static_cast<int>(r % g.oc);
    const int s = static_cast<int>(r / g.oc);
    const float* wo = w + static_cast<long>(o) * g.c * g.k * g.k;
    float acc = 0.0f;
    for (int ci = 0; ci < g.c; ++ci) {
      const float* xc = x + (static_cast<long>(s) * g.c + ci) * g.h * g.w;
      for (int ky = 0; ky < g.k; ++ky) {
        const int iy = oy * g.stride - g.pad + ky;
        if (iy < 0 || iy >= g.h) continue;
        for (int kx = 0; kx < g.k; ++kx) {
          const int ix = ox * g.stride - g.pad + kx;
          if (ix >= 0 && ix < g.w) acc += wo[(ci * g.k + ky) * g.k + kx] * xc[iy * g.w + ix];
        }
      }
    }
    y[i] = acc + b[o];
  }
}

// Block (chunk, o): partial[o][chunk][j] = sum over the chunk's positions of dy * x at weight j
// (j < K = c * k * k), and at j = kMax the sum of dy (the bias gradient).
template <int kMax>
__global__ void conv_direct_filter_partial_kernel(const float* x, const float* dy, float* partial, ConvGeometry g) {
  __shared__ int tap_channel[kMax], tap_y[kMax], tap_x[kMax];
  __shared__ float warp_sums[kMax + 1][kWarps];
  const int kk = g.k * g.k, taps = g.c * kk, o = blockIdx.y;
  for (int j = threadIdx.x; j < taps; j += blockDim.x) {
    tap_channel[j] = j / kk;
    tap_y[j] = (j % kk) / g.k;
    tap_x[j] = j % g.k;
  }
  __syncthreads();
  float acc[kMax + 1];
#pragma unroll
  for (int j = 0; j <= kMax; ++j) acc[j] = 0.0f;
  const long positions = static_cast<long>(g.n) * g.oh * g.ow;
  const long begin = blockIdx.x * kPositionsPerBlock;
  const long end = begin + kPositionsPerBlock < positions ? begin + kPositionsPerBlock : positions;
  for (long p = begin + threadIdx.x; p < end; p += blockDim.x) {
    const int ox = static_cast<int>(p % g.ow);
    const int oy = static_cast<int>((p / g.ow) % g.oh);
    const int s = static_cast<int>(p / (static_cast<long>(g.ow) * g.oh));
    const float d = dy[((static_cast<long>(s) * g.oc + o) * g.oh + oy) * g.ow + ox];
    const float* xs = x + static_cast<long>(s) * g.c * g.h * g.w;
    acc[kMax] += d;
#pragma unroll
    for (int j = 0; j < kMax; ++j) {
      if (j < taps) {
        const int iy = oy * g.stride - g.pad + tap_y[j], ix = ox * g.stride - g.pad + tap_x[j];
        if (iy >= 0 && iy < g.h && ix >= 0 && ix < g.w) acc[j] += d * xs[(tap_channel[j] * g.h + iy) * g.w + ix];
      }
    }
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int j = 0; j <= kMax; ++j) {
    float v = acc[j];
    for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
    if (lane == 0) warp_sums[j][warp] = v;
  }
  __syncthreads();
  if (threadIdx.x <= kMax) {
    float t = 0.0f;
    for (int w = 0; w < kWarps; ++w) t += warp_sums[threadIdx.x][w];
    partial[(static_cast<long>(o) * gridDim.x + blockIdx.x) * (kMax + 1) + threadIdx.x] = t;
  }
}

// Thread (o, j): adds the chunks' partial sums in chunk order.
__global__ void conv_direct_filter_finish_kernel(const float* partial, int chunks, int stride, int taps, int oc,
                                                 float* dw, float* db) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= oc * (taps + 1)) return;
  const int o = t / (taps + 1), j = t % (taps + 1);
  const int slot = j < taps ? j : stride - 1;
  float sum = 0.0f;
  for (int c = 0; c < chunks; ++c) sum += partial[(static_cast<long>(o) * chunks + c) * stride + slot];
  if (j < taps)
    dw[static_cast<long>(o) * taps + j] = sum;
  else
    db[o] = sum;
}

int chunks_for(const ConvGeometry& g) {
  const long positions = static_cast<long>(g.n) * g.oh * g.ow;
  return static_cast<int>((positions + kPositionsPerBlock - 1) / kPositionsPerBlock);
}

/// Accumulators per thread: the smallest instantiated bound that holds the taps.
int slots_for(const ConvGeometry& g) { return g.c * g.k * g.k <= 16 ? 16 : kDirectConvMaxReduction; }

}  // namespace

void conv_direct_forward(const float* x, const float* w, const float* b, float* y, const ConvGeometry& g,
                         cudaStream_t stream) {
  const long total = static_cast<long>(g.n) * g.oc * g.oh * g.ow;
  const long blocks = (total + kThreads - 1) / kThreads;
  conv_direct_forward_kernel<<<static_cast<int>(blocks < 65535L * 16 ? blocks : 65535L * 16), kThreads, 0,
                               stream>>>(x, w, b, y, g);
  CUDA_CHECK_LAUNCH();
}

size_t conv_direct_filter_grad_scratch(const ConvGeometry& g) {
  return sizeof(float) * static_cast<size_t>(g.oc) * chunks_for(g) * (slots_for(g) + 1);
}

void conv_direct_filter_grad(const float* x, const float* dy, float* dw, float* db, void* scratch,
                             const ConvGeometry& g, cudaStream_t stream) {
  const int chunks = chunks_for(g), slots = slots_for(g), taps = g.c * g.k * g.k;
  float* partial = static_cast<float*>(scratch);
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(g.oc));
  if (slots == 16)
    conv_direct_filter_partial_kernel<16><<<grid, kThreads, 0, stream>>>(x, dy, partial, g);
  else
    conv_direct_filter_partial_kernel<kDirectConvMaxReduction><<<grid, kThreads, 0, stream>>>(x, dy, partial, g);
  CUDA_CHECK_LAUNCH();
  const int outputs = g.oc * (taps + 1);
  conv_direct_filter_finish_kernel<<<(outputs + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
      partial, chunks, slots + 1, taps, g.oc, dw, db);
  CUDA_CHECK_LAUNCH();
}

}  // namespace dptrain::kernels
