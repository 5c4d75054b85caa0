#include <cfloat>
#include <climits>
#include <string>

#include "cuda/check.h"
#include "kernels/pool_kernels.h"

namespace dptrain::kernels {

namespace {

constexpr int kPoolThreads = 128;

// Grid (plane, range of outputs): no division to find the plane. The window's first maximum, in
// the CPU's scan order (row by row).
__global__ void maxpool_forward_kernel(const float* x, float* y, int32_t* argmax, PoolGeometry g, FusedDropout drop) {
  const int per_plane = g.oh * g.ow, q = blockIdx.y * blockDim.x + threadIdx.x;
  if (q >= per_plane) return;
  const int oy = q / g.ow, ox = q - oy * g.ow;
  const float* src = x + static_cast<long>(blockIdx.x) * g.h * g.w;
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
  const long o = static_cast<long>(blockIdx.x) * per_plane + q;
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

bool tiles_exactly(const PoolGeometry& g) {
  return g.k == g.stride && g.pad == 0 && g.h == g.oh * g.k && g.w == g.ow * g.k;
}

void check_fits(const PoolGeometry& g) {
  if (static_cast<long>(g.h) * g.w > 65535L * kPoolThreads)
    throw CudaError("max pooling: a " + std::to_string(g.h) + "x" + std::to_string(g.w) +
                    " plane exceeds the launch grid");
}

}  // namespace

void maxpool_forward(const float* x, float* y, int32_t* argmax, const PoolGeometry& g, const FusedDropout& drop,
                     cudaStream_t stream) {
  check_fits(g);
  const dim3 grid(static_cast<unsigned>(g.planes),
                  static_cast<unsigned>((g.oh * g.ow + kPoolThreads - 1) / kPoolThreads));
  maxpool_forward_kernel<<<grid, kPoolThreads, 0, stream>>>(x, y, argmax, g, drop);
  CUDA_CHECK_LAUNCH();
}

void maxpool_backward(const float* dy, const int32_t* argmax, float* dx, const PoolGeometry& g, const FusedDropout& drop,
                      cudaStream_t stream) {
  check_fits(g);
  if (tiles_exactly(g)) {
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

}  // namespace dptrain::kernels
