#include "kernels/conv_small.h"

#include <algorithm>

#include "core/cuda_check.h"
#include "kernels/conv_shared.cuh"

namespace dptrain::kernels {

namespace {

constexpr int kMaxK = 7;
constexpr int kMaxSharedFloats = 12 * 1024;  // 48 KB: a launch's limit without opting in
constexpr int kGroup = 16;                   // output (forward) or input (input gradient) channels a block takes
constexpr int kReg = 4;                      // channels a thread sums at once, from one shared-memory read of its input
constexpr int kThreads = 128;                // forward and input gradient
constexpr int kFilterThreads = 256;
constexpr int kFilterItems = 2;  // work items a filter-gradient thread holds in registers
// The filter gradient's blocks: chunks of ceil(n / kMaxChunks) samples, so the partial sums and the order
// they are added in depend on the shape alone.
constexpr int kMaxChunks = 264;
constexpr int kFinishThreads = 256;

int round_up(int a, int b) { return (a + b - 1) / b * b; }
long long padded_floats(const ConvGeometry& g) {
  return static_cast<long long>(g.c) * (g.h + 2LL * g.pad) * (g.w + 2LL * g.pad);
}
long long forward_shared_floats(const ConvGeometry& g) {
  return padded_floats(g) + static_cast<long long>(round_up(std::min(g.oc, kGroup), kReg)) * g.c * g.k * g.k;
}
long long data_shared_floats(const ConvGeometry& g) {
  return static_cast<long long>(g.oc) * g.oh * g.ow +
         static_cast<long long>(g.oc) * round_up(std::min(g.c, kGroup), kReg) * g.k * g.k;
}
long long filter_shared_floats(const ConvGeometry& g) {
  return padded_floats(g) + static_cast<long long>(g.oc) * g.oh * g.ow;
}
/// The filter gradient's work items: (group of kReg output channels, input channel, kernel row), then one
/// per output channel's bias.
long long filter_items(const ConvGeometry& g) {
  return static_cast<long long>((g.oc + kReg - 1) / kReg) * g.c * g.k + g.oc;
}
int samples_per_chunk(int n) { return (n + kMaxChunks - 1) / kMaxChunks; }
int chunks(int n) { return (n + samples_per_chunk(n) - 1) / samples_per_chunk(n); }

/// Copies one sample's c x h x w input into shared memory as c x (h + 2 pad) x (w + 2 pad), zeros around it.
__device__ void stage_padded(const float* __restrict__ x, float* xs, const ConvGeometry& g) {
  const int pw = g.w + 2 * g.pad, pp = (g.h + 2 * g.pad) * pw, total = g.c * pp;
  for (int e = threadIdx.x; e < total; e += blockDim.x) {
    const int ci = e / pp, r = e - ci * pp, iy = r / pw - g.pad, ix = r % pw - g.pad;
    xs[e] = iy >= 0 && iy < g.h && ix >= 0 && ix < g.w ? x[(ci * g.h + iy) * g.w + ix] : 0.0f;
  }
}

// Block (sample, group of kGroup output channels): the sample's padded input and the group's weights in
// shared memory; a thread takes one output position for kReg channels (a read of the input serves all
// kReg; the weights are read as broadcasts, a warp's positions sharing channels). Each output sums its
// taps in (ci, ky, kx) order, then adds the bias.
__global__ void __launch_bounds__(kThreads)
    small_forward_kernel(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ b,
                         float* __restrict__ y, ConvGeometry g, bool relu) {
  extern __shared__ float shared[];
  const int s = blockIdx.x, o0 = blockIdx.y * kGroup, group = min(kGroup, g.oc - o0);
  const int regs = (group + kReg - 1) / kReg, taps = g.c * g.k * g.k;
  const int ph = g.h + 2 * g.pad, pw = g.w + 2 * g.pad;
  float* xs = shared;
  float* ws = shared + g.c * ph * pw;  // [regs * kReg][taps], zeros past the group
  stage_padded(x + static_cast<long>(s) * g.c * g.h * g.w, xs, g);
  for (int e = threadIdx.x; e < regs * kReg * taps; e += blockDim.x)
    ws[e] = e < group * taps ? w[static_cast<long>(o0) * taps + e] : 0.0f;
  __syncthreads();
  const int plane = g.oh * g.ow;
  for (int item = threadIdx.x; item < regs * plane; item += blockDim.x) {
    const int rg = item / plane, q = item - rg * plane, oy = q / g.ow, ox = q - oy * g.ow;
    const float* wr = ws + rg * kReg * taps;
    float acc[kReg] = {};
    int j = 0;
    for (int ci = 0; ci < g.c; ++ci)
      for (int ky = 0; ky < g.k; ++ky) {
        const float* row = xs + (ci * ph + oy * g.stride + ky) * pw + ox * g.stride;
        for (int kx = 0; kx < g.k; ++kx, ++j) {
          const float v = row[kx];
#pragma unroll
          for (int r = 0; r < kReg; ++r) acc[r] = fmaf(wr[r * taps + j], v, acc[r]);
        }
      }
#pragma unroll
    for (int r = 0; r < kReg; ++r) {
      const int o = rg * kReg + r;
      if (o >= group) break;
      float v = acc[r] + (b != nullptr ? __ldg(b + o0 + o) : 0.0f);
      if (relu && !(v > 0.0f)) v = 0.0f;
      y[(static_cast<long>(s) * g.oc + o0 + o) * plane + q] = v;
    }
  }
}

// Block (sample, group of kGroup input channels): the sample's output gradient and, per output channel, the
// group's weights in shared memory; a thread takes one input position for kReg channels and sums, over
// output channels o, kernel rows ky and columns kx in that order, the dy of the windows that cover it.
// kUnitStride: stride 1 known at compile time, so finding the windows takes no integer division (at a
// runtime stride, two divisions a tap made the kernel instruction-bound).
template <bool kUnitStride>
__global__ void __launch_bounds__(kThreads)
    small_data_kernel(const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx,
                      ConvGeometry g) {
  extern __shared__ float shared[];
  const int s = blockIdx.x, c0 = blockIdx.y * kGroup, group = min(kGroup, g.c - c0);
  const int regs = (group + kReg - 1) / kReg, width = regs * kReg, kk = g.k * g.k;
  const int plane = g.oh * g.ow;
  float* ds = shared;                   // [oc][oh][ow]
  float* ws = shared + g.oc * plane;    // [oc][width][kk], zeros past the group
  const float* dys = dy + static_cast<long>(s) * g.oc * plane;
  for (int e = threadIdx.x; e < g.oc * plane; e += blockDim.x) ds[e] = dys[e];
  for (int e = threadIdx.x; e < g.oc * width * kk; e += blockDim.x) {
    const int o = e / (width * kk), r = e - o * width * kk, cc = r / kk, t = r - cc * kk;
    ws[e] = cc < group ? w[(static_cast<long>(o) * g.c + c0 + cc) * kk + t] : 0.0f;
  }
  __syncthreads();
  const int in_plane = g.h * g.w;
  for (int item = threadIdx.x; item < regs * in_plane; item += blockDim.x) {
    const int rg = item / in_plane, q = item - rg * in_plane, iy = q / g.w, ix = q - iy * g.w;
    float acc[kReg] = {};
    for (int o = 0; o < g.oc; ++o) {
      const float* grads = ds + o * plane;
      const float* wo = ws + (o * width + rg * kReg) * kk;
      for (int ky = 0; ky < g.k; ++ky) {
        const int ty = iy + g.pad - ky;  // oy * stride, where an output row's window covers iy with row ky
        if (ty < 0) break;
        const int oy = kUnitStride ? ty : ty / g.stride;
        if ((!kUnitStride && oy * g.stride != ty) || oy >= g.oh) continue;
        for (int kx = 0; kx < g.k; ++kx) {
          const int tx = ix + g.pad - kx;
          if (tx < 0) break;
          const int ox = kUnitStride ? tx : tx / g.stride;
          if ((!kUnitStride && ox * g.stride != tx) || ox >= g.ow) continue;
          const float d = grads[oy * g.ow + ox];
          const float* wt = wo + ky * g.k + kx;
#pragma unroll
          for (int r = 0; r < kReg; ++r) acc[r] = fmaf(wt[r * kk], d, acc[r]);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kReg; ++r) {
      const int cc = rg * kReg + r;
      if (cc >= group) break;
      dx[(static_cast<long>(s) * g.c + c0 + cc) * in_plane + q] = acc[r];
    }
  }
}

// Block per chunk of samples, K the kernel size: each sample's padded input and output gradient in shared
// memory in turn; a thread holds up to kFilterItems items in registers across the chunk: a weight item
// (kReg output channels, input channel ci, kernel row ky) sums dy x over the positions for all K columns;
// a bias item sums one channel's dy. partial[chunk][(o, ci, ky, kx) | bias o].
template <int K>
__global__ void __launch_bounds__(kFilterThreads)
    small_filter_partial_kernel(const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ partial,
                                ConvGeometry g, int per_chunk) {
  extern __shared__ float shared[];
  const int ph = g.h + 2 * g.pad, pw = g.w + 2 * g.pad, plane = g.oh * g.ow;
  float* xs = shared;                // [c][ph][pw]
  float* ds = shared + g.c * ph * pw;  // [oc][oh][ow]
  const int weight_items = (g.oc + kReg - 1) / kReg * g.c * K, items = weight_items + g.oc;
  const int first = blockIdx.x * per_chunk, last = min(g.n, first + per_chunk);
  float acc[kFilterItems][kReg][K] = {};
  for (int s = first; s < last; ++s) {
    __syncthreads();  // the last sample's reads are done
    stage_padded(x + static_cast<long>(s) * g.c * g.h * g.w, xs, g);
    const float* dys = dy + static_cast<long>(s) * g.oc * plane;
    for (int e = threadIdx.x; e < g.oc * plane; e += blockDim.x) ds[e] = dys[e];
    __syncthreads();
#pragma unroll
    for (int i = 0; i < kFilterItems; ++i) {
      const int item = threadIdx.x + i * kFilterThreads;
      if (item < weight_items) {
        const int og = item / (g.c * K), rem = item - og * g.c * K, ci = rem / K, ky = rem - ci * K;
        const int o0 = og * kReg;
        for (int oy = 0; oy < g.oh; ++oy) {
          const float* row = xs + (ci * ph + oy * g.stride + ky) * pw;
          for (int ox = 0; ox < g.ow; ++ox) {
            float d[kReg];
#pragma unroll
            for (int r = 0; r < kReg; ++r) d[r] = o0 + r < g.oc ? ds[(o0 + r) * plane + oy * g.ow + ox] : 0.0f;
            const float* window = row + ox * g.stride;
#pragma unroll
            for (int kx = 0; kx < K; ++kx) {
              const float v = window[kx];
#pragma unroll
              for (int r = 0; r < kReg; ++r) acc[i][r][kx] = fmaf(d[r], v, acc[i][r][kx]);
            }
          }
        }
      } else if (item < items) {
        const float* grads = ds + (item - weight_items) * plane;
        for (int q = 0; q < plane; ++q) acc[i][0][0] += grads[q];
      }
    }
  }
  const int weights = g.oc * g.c * K * K;
  float* out = partial + static_cast<long>(blockIdx.x) * (weights + g.oc);
#pragma unroll
  for (int i = 0; i < kFilterItems; ++i) {
    const int item = threadIdx.x + i * kFilterThreads;
    if (item < weight_items) {
      const int og = item / (g.c * K), rem = item - og * g.c * K, ci = rem / K, ky = rem - ci * K;
#pragma unroll
      for (int r = 0; r < kReg; ++r) {
        const int o = og * kReg + r;
        if (o >= g.oc) break;
#pragma unroll
        for (int kx = 0; kx < K; ++kx) out[((o * g.c + ci) * K + ky) * K + kx] = acc[i][r][kx];
      }
    } else if (item < items) {
      out[weights + item - weight_items] = acc[i][0][0];
    }
  }
}

/// dw, then db: a warp per entry; lane l adds chunks l, l + 32, ... in order, then a shuffle tree adds the
/// lanes (a fixed order; one thread per entry, 257 dependent loads each, took 11.6 us at batch 257).
__global__ void small_filter_finish_kernel(const float* __restrict__ partial, int chunks, int weights, int oc,
                                           float* __restrict__ dw, float* __restrict__ db) {
  const int per_chunk = weights + oc, lane = threadIdx.x % 32;
  const int e = blockIdx.x * (kFinishThreads / 32) + threadIdx.x / 32;
  if (e >= per_chunk) return;  // whole warps leave together
  float sum = 0.0f;
  for (int c = lane; c < chunks; c += 32) sum += partial[static_cast<long>(c) * per_chunk + e];
  for (int off = 16; off > 0; off /= 2) sum += __shfl_down_sync(0xffffffffu, sum, off);
  if (lane != 0) return;
  if (e < weights)
    dw[e] = sum;
  else
    db[e - weights] = sum;
}

void require_fits(const ConvGeometry& g, const char* what) {
  if (!small_conv_fits(g)) conv_shared::refuse(what, "small convolution", g);
}

template <int K>
void launch_filter_partial(const float* x, const float* dy, float* partial, const ConvGeometry& g,
                           cudaStream_t stream) {
  const size_t shared = sizeof(float) * static_cast<size_t>(filter_shared_floats(g));
  small_filter_partial_kernel<K>
      <<<static_cast<unsigned>(chunks(g.n)), kFilterThreads, shared, stream>>>(x, dy, partial, g,
                                                                                 samples_per_chunk(g.n));
}

}  // namespace

bool small_conv_fits(const ConvGeometry& g) {
  if (g.n < 1 || g.c < 1 || g.h < 1 || g.w < 1 || g.oc < 1 || g.k < 1 || g.k > kMaxK || g.stride < 1 || g.pad < 0)
    return false;
  if (g.c > kMaxSharedFloats || g.oc > kMaxSharedFloats || g.h > kMaxSharedFloats || g.w > kMaxSharedFloats ||
      g.pad > kMaxSharedFloats)
    return false;  // keeps the products below far from overflow
  const long long ph = g.h + 2LL * g.pad, pw = g.w + 2LL * g.pad;
  if (ph < g.k || pw < g.k || g.oh != (ph - g.k) / g.stride + 1 || g.ow != (pw - g.k) / g.stride + 1) return false;
  return forward_shared_floats(g) <= kMaxSharedFloats && data_shared_floats(g) <= kMaxSharedFloats &&
         filter_shared_floats(g) <= kMaxSharedFloats && filter_items(g) <= kFilterThreads * kFilterItems;
}

size_t small_conv_scratch(const ConvGeometry& g) {
  if (!small_conv_fits(g)) return 0;
  return sizeof(float) * static_cast<size_t>(chunks(g.n)) * (static_cast<size_t>(g.oc) * g.c * g.k * g.k + g.oc);
}

void small_conv_forward(const float* x, const float* w, const float* b, float* y, bool relu, const ConvGeometry& g,
                        cudaStream_t stream) {
  require_fits(g, "small_conv_forward");
  const dim3 grid(static_cast<unsigned>(g.n), static_cast<unsigned>((g.oc + kGroup - 1) / kGroup));
  const size_t shared = sizeof(float) * static_cast<size_t>(forward_shared_floats(g));
  small_forward_kernel<<<grid, kThreads, shared, stream>>>(x, w, b, y, g, relu);
  CUDA_CHECK_LAUNCH();
}

void small_conv_backward_data(const float* dy, const float* w, float* dx, const ConvGeometry& g, cudaStream_t stream) {
  require_fits(g, "small_conv_backward_data");
  const dim3 grid(static_cast<unsigned>(g.n), static_cast<unsigned>((g.c + kGroup - 1) / kGroup));
  const size_t shared = sizeof(float) * static_cast<size_t>(data_shared_floats(g));
  if (g.stride == 1)
    small_data_kernel<true><<<grid, kThreads, shared, stream>>>(dy, w, dx, g);
  else
    small_data_kernel<false><<<grid, kThreads, shared, stream>>>(dy, w, dx, g);
  CUDA_CHECK_LAUNCH();
}

void small_conv_filter_grad(const float* x, const float* dy, float* dw, float* db, void* scratch,
                            const ConvGeometry& g, cudaStream_t stream) {
  require_fits(g, "small_conv_filter_grad");
  float* partial = static_cast<float*>(scratch);
  switch (g.k) {
    case 1: launch_filter_partial<1>(x, dy, partial, g, stream); break;
    case 2: launch_filter_partial<2>(x, dy, partial, g, stream); break;
    case 3: launch_filter_partial<3>(x, dy, partial, g, stream); break;
    case 4: launch_filter_partial<4>(x, dy, partial, g, stream); break;
    case 5: launch_filter_partial<5>(x, dy, partial, g, stream); break;
    case 6: launch_filter_partial<6>(x, dy, partial, g, stream); break;
    default: launch_filter_partial<7>(x, dy, partial, g, stream); break;
  }
  CUDA_CHECK_LAUNCH();
  const int weights = g.oc * g.c * g.k * g.k;
  constexpr int kWarpsPerBlock = kFinishThreads / 32;
  const unsigned blocks = static_cast<unsigned>((weights + g.oc + kWarpsPerBlock - 1) / kWarpsPerBlock);
  small_filter_finish_kernel<<<blocks, kFinishThreads, 0, stream>>>(partial, chunks(g.n), weights, g.oc, dw, db);
  CUDA_CHECK_LAUNCH();
}

}  // namespace dptrain::kernels
