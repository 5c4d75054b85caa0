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
// block idle). The window's first maximum, in the CPU's scan order (row by row). bias (may be
// null): added to plane p's values, bias[p % channels], before the optional ReLU (a convolution's
// epilogue fused in: conv_pool_forward), which also marks the windows the dropout zeroed by storing
// their argmax as ~offset (negative), so that its backward needs no generator.
__global__ void maxpool_forward_kernel(const float* x, float* y, int32_t* argmax, PoolGeometry g, FusedDropout drop,
                                       const float* bias, int channels, bool relu, bool mark_dropped) {
  const int per_plane = g.oh * g.ow;
  const long o = blockIdx.x * long{blockDim.x} + threadIdx.x;
  if (o >= static_cast<long>(g.planes) * per_plane) return;
  const int plane = static_cast<int>(o / per_plane), q = static_cast<int>(o - static_cast<long>(plane) * per_plane);
  const int oy = q / g.ow, ox = q - oy * g.ow;
  const float* src = x + static_cast<long>(plane) * g.h * g.w;
  const float b = bias != nullptr ? __ldg(bias + plane % channels) : 0.0f;
  float best = -INFINITY;
  int where = -1;
  for (int ky = 0; ky < g.k; ++ky) {
    const int iy = oy * g.stride - g.pad + ky;
    if (iy < 0 || iy >= g.h) continue;
    for (int kx = 0; kx < g.k; ++kx) {
      const int ix = ox * g.stride - g.pad + kx;
      if (ix < 0 || ix >= g.w) continue;
      float v = src[iy * g.w + ix];
      if (bias != nullptr) v += b;
      if (relu) v = v > 0.0f ? v : 0.0f;
      if (v > best || where < 0) best = v, where = iy * g.w + ix;
    }
  }
  const float factor = dropout_factor(drop, o);
  y[o] = best * factor;
  argmax[o] = mark_dropped && factor == 0.0f ? ~where : where;
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

// Block (channel, group of kPoolSamples samples), warp per sample: each lane takes windows of the
// sample's plane, writes the whole window (the gradient at its argmax, zeros elsewhere) and adds
// its gradient to the lane's sum; lanes are added by a shuffle tree, warps in order, groups by
// bias_grad_finish. A fixed order.
constexpr int kPoolSamples = 8;

__global__ void conv_pool_backward_kernel(const float* __restrict__ dy, const float* __restrict__ y,
                                          const int32_t* __restrict__ argmax, bool relu, float* __restrict__ dx,
                                          float* __restrict__ partial, PoolGeometry g, int n, int channels,
                                          FusedDropout drop) {
  __shared__ float warp_sums[kPoolSamples];
  const int c = blockIdx.x, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int s = blockIdx.y * kPoolSamples + warp, per_plane = g.oh * g.ow;
  float acc = 0.0f;
  if (s < n) {
    const long plane = static_cast<long>(s) * channels + c;
    float* out = dx + plane * g.h * g.w;
    const float scale = drop.active() ? drop.scale : 1.0f;
    for (int q = lane; q < per_plane; q += 32) {
      const long o = plane * per_plane + q;
      const int where = argmax[o];  // negative: the dropout zeroed this output (forward's mark)
      float grad = where >= 0 ? dy[o] * scale : 0.0f;
      if (relu && !(y[o] > 0.0f)) grad = 0.0f;
      acc += grad;
      const int oy = q / g.ow, ox = q - oy * g.ow;
      for (int ky = 0; ky < g.k; ++ky) {
        const int row = (oy * g.k + ky) * g.w + ox * g.k;
        for (int kx = 0; kx < g.k; ++kx) out[row + kx] = row + kx == where ? grad : 0.0f;
      }
    }
  }
  if (partial == nullptr) return;
  for (int off = 16; off > 0; off /= 2) acc += __shfl_down_sync(0xffffffffu, acc, off);
  if (lane == 0) warp_sums[warp] = acc;
  __syncthreads();
  if (threadIdx.x != 0) return;
  float total = 0.0f;
  for (int w = 0; w < kPoolSamples; ++w) total += warp_sums[w];
  partial[static_cast<long>(c) * gridDim.y + blockIdx.y] = total;
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

}  // namespace

bool pool_tiles_exactly(const PoolGeometry& g) {
  return g.k == g.stride && g.pad == 0 && g.h == g.oh * g.k && g.w == g.ow * g.k;
}

void maxpool_forward(const float* x, float* y, int32_t* argmax, const PoolGeometry& g, const FusedDropout& drop,
                     cudaStream_t stream) {
  maxpool_forward_kernel<<<forward_blocks(g), kPoolThreads, 0, stream>>>(x, y, argmax, g, drop, nullptr, 1, false, false);
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

void conv_pool_forward(const float* x, const float* bias, bool relu, float* y, int32_t* argmax, const PoolGeometry& g,
                       int channels, const FusedDropout& drop, cudaStream_t stream) {
  maxpool_forward_kernel<<<forward_blocks(g), kPoolThreads, 0, stream>>>(x, y, argmax, g, drop, bias, channels, relu, true);
  CUDA_CHECK_LAUNCH();
}

size_t conv_pool_backward_scratch(int n, int channels) {
  return static_cast<size_t>(channels) * ((n + kPoolSamples - 1) / kPoolSamples);
}

void conv_pool_backward(const float* dy, const float* y, const int32_t* argmax, bool relu, float* dx, float* db,
                        float* scratch, const PoolGeometry& g, int channels, const FusedDropout& drop,
                        cudaStream_t stream) {
  if (!pool_tiles_exactly(g)) throw CudaError("conv_pool_backward: the pooling windows do not tile the plane");
  const int n = g.planes / channels, groups = (n + kPoolSamples - 1) / kPoolSamples;
  if (groups > 65535) throw CudaError("conv_pool_backward: batch of " + std::to_string(n) + " exceeds the launch grid");
  conv_pool_backward_kernel<<<dim3(static_cast<unsigned>(channels), static_cast<unsigned>(groups)), 32 * kPoolSamples,
                              0, stream>>>(dy, y, argmax, relu, dx, db != nullptr ? scratch : nullptr, g, n, channels,
                                           drop);
  CUDA_CHECK_LAUNCH();
  if (db != nullptr) bias_grad_finish(scratch, groups, channels, db, stream);
}

}  // namespace dptrain::kernels
