// Pieces the custom convolution kernels share: a sample's zero-padded input staged in shared memory (conv_small.cu,
// conv_kernels.cu); for the 3x3 families (conv_tiled.cu, conv_mma.cu) the input gradient as a forward convolution
// with transposed, flipped weights, the fixed-order reduction of per-chunk filter-gradient partial sums, and (from
// kernels/cp_async.cuh) asynchronous staging of global memory into shared memory; and the one message every custom
// convolution family throws for a shape it does not serve.
#pragma once

#include <cuda_runtime_api.h>

#include <climits>
#include <cstddef>

#include "kernels/conv_kernels.h"
#include "kernels/cp_async.cuh"

namespace dptrain::kernels::conv_shared {

using kernels::cp_async4;
using kernels::cp_async_commit;
using kernels::cp_async_wait;

constexpr int kTaps = 9;  // 3x3
// Largest dynamic shared memory a block asks for: below every target's opt-in limit (sm_86/89: 99 KB).
constexpr size_t kMaxSmemBytes = 96 * 1024;

/// The input gradient's convolution: dy [n, oc, oh, ow] convolved into dx [n, c, h, w] with padding k - 1 - pad.
inline ConvGeometry transposed(const ConvGeometry& g) {
  return ConvGeometry{g.n, g.oc, g.oh, g.ow, g.c, g.h, g.w, g.k, 1, g.k - 1 - g.pad};
}

inline size_t transposed_weight_bytes(const ConvGeometry& g) {
  return sizeof(float) * static_cast<size_t>(g.oc) * g.c * kTaps;
}

/// Copies one sample's c x h x w input into shared memory as c x (h + 2 pad) rows of w + 2 pad values, zeros
/// around it, `pitch` floats apart (at least w + 2 pad; the values past a row's end are not written). The block's
/// threads together; no barrier.
__device__ __forceinline__ void stage_padded(const float* __restrict__ x, float* xs, const ConvGeometry& g, int pitch) {
  const int ph = g.h + 2 * g.pad, pw = g.w + 2 * g.pad, total = g.c * ph * pw;
  for (int e = threadIdx.x; e < total; e += blockDim.x) {
    const int row = e / pw, col = e - row * pw, ci = row / ph, iy = row - ci * ph - g.pad, ix = col - g.pad;
    xs[row * pitch + col] = iy >= 0 && iy < g.h && ix >= 0 && ix < g.w ? x[(ci * g.h + iy) * g.w + ix] : 0.0f;
  }
}

inline bool fits_int(long long v) { return v >= 0 && v <= INT_MAX; }

/// The 3x3 stride-1 shape both kernel families need: k = 3, stride 1, pad 0..2, n, h, w >= 1, oh = h + 2 pad - 2 >= 1
/// and ow = w + 2 pad - 2 >= 1; 32-bit indexing: n c h w, n oc oh ow and 9 c oc (the weights) <= INT_MAX; the grid:
/// 1 <= c, oc <= 65535 * 32 (grid.y and grid.z count channels / 32).
bool plain_3x3(const ConvGeometry& g);

int multiprocessors();

/// Raises a kernel's dynamic shared-memory limit where it asks for more than 48 KB (a function attribute, not a
/// stream operation: graph capture allows it).
void set_smem(const void* kernel, size_t bytes);

/// Throws CudaError: `what` (the call) was given a convolution that `family` (its kernels) does not serve, naming
/// the whole geometry (batch, sample and output sizes, kernel, stride, padding).
[[noreturn]] void refuse(const char* what, const char* family, const ConvGeometry& g);

/// wt[ci][o][ky][kx] = w[o][ci][2 - ky][2 - kx]: the input gradient is the forward convolution of dy with these.
void transpose_flip(const float* w, float* wt, int oc, int c, cudaStream_t stream);

/// dw and db from partial[chunk][o][c * 9 + tap] (tap 9c: the bias), summed over chunks in a fixed order.
void finish_filter_grad(const float* partial, int chunks, const ConvGeometry& g, float* dw, float* db,
                        cudaStream_t stream);

}  // namespace dptrain::kernels::conv_shared
