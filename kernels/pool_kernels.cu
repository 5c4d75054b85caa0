#include <cfloat>
#include <climits>
#include <string>

#include "cuda/check.h"
#include "kernels/pool_kernels.h"

namespace dptrain::kernels {

namespace {

constexpr int kThreads = 256;

__global__ void maxpool_forward_kernel(const float* x, float* y, int32_t* argmax, PoolGeometry g) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  const int per_plane = g.oh * g.ow;
  if (i >= g.planes * per_plane) return;
  const int plane = i / per_plane, oy = (i % per_plane) / g.ow, ox = i % g.ow;
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
  y[i] = best;
  argmax[i] = where;
}

/// First window index along one axis whose span [o * s - pad, o * s - pad + k) holds position p.
__device__ __forceinline__ int first_window(int p, int k, int s, int pad) {
  const int t = p + pad - k + 1;
  return t <= 0 ? 0 : (t + s - 1) / s;
}

__global__ void maxpool_backward_kernel(const float* dy, const int32_t* argmax, float* dx, PoolGeometry g) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  const int per_plane = g.h * g.w;
  if (i >= g.planes * per_plane) return;
  const int plane = i / per_plane, offset = i % per_plane, iy = offset / g.w, ix = offset % g.w;
  const long base = static_cast<long>(plane) * g.oh * g.ow;
  const int oy_end = min(g.oh, (iy + g.pad) / g.stride + 1), ox_end = min(g.ow, (ix + g.pad) / g.stride + 1);
  float acc = 0.0f;
  for (int oy = first_window(iy, g.k, g.stride, g.pad); oy < oy_end; ++oy)
    for (int ox = first_window(ix, g.k, g.stride, g.pad); ox < ox_end; ++ox) {
      const long o = base + oy * g.ow + ox;
      if (argmax[o] == offset) acc += dy[o];
    }
  dx[i] = acc;
}

void check_fits(const PoolGeometry& g) {
  if (static_cast<long>(g.planes) * g.h * g.w > INT_MAX)
    throw CudaError("max pooling: " + std::to_string(g.planes) + " planes are too many for 32-bit indexing");
}

}  // namespace

void maxpool_forward(const float* x, float* y, int32_t* argmax, const PoolGeometry& g, cudaStream_t stream) {
  check_fits(g);
  const int outputs = g.planes * g.oh * g.ow;
  maxpool_forward_kernel<<<(outputs + kThreads - 1) / kThreads, kThreads, 0, stream>>>(x, y, argmax, g);
  CUDA_CHECK_LAUNCH();
}

void maxpool_backward(const float* dy, const int32_t* argmax, float* dx, const PoolGeometry& g, cudaStream_t stream) {
  check_fits(g);
  const int inputs = g.planes * g.h * g.w;
  maxpool_backward_kernel<<<(inputs + kThreads - 1) / kThreads, kThreads, 0, stream>>>(dy, argmax, dx, g);
  CUDA_CHECK_LAUNCH();
}

}  // namespace dptrain::kernels
