// Reference convolutions for the planner's check of every implementation it may choose: the
// definition of a convolution written out, one output element per thread (one block per weight
// for the filter gradient), summed in double. Slow, plain, and no library's engine to load: with a
// warm plan cache, checking dptrain's own kernels against these instead of cuDNN's implicit GEMM
// keeps cuDNN's engines (about 0.15 s of module loading at the first use) off the path to the first
// step. Deterministic: fixed summation orders, no atomics.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "core/host_device.h"
#include "kernels/conv_kernels.h"

namespace dptrain::kernels {

// The element math, for the host and the device alike (the kernels below run it; a host test checks
// it against the CPU backend without a GPU). Flat indices are NCHW; every offset is 64-bit.

/// The forward output at flat index i of [n, oc, oh, ow]: the sum over c, r, q of x * w, plus b[k]
/// when b is not null, in double.
DPTRAIN_HD double reference_conv_output(const float* x, const float* w, const float* b, const ConvGeometry& g,
                                        size_t i) {
  const int ox = static_cast<int>(i % g.ow), oy = static_cast<int>(i / g.ow % g.oh),
            k = static_cast<int>(i / (size_t(g.ow) * g.oh) % g.oc);
  const size_t s = i / (size_t(g.ow) * g.oh * g.oc);
  double acc = b != nullptr ? double(b[k]) : 0.0;
  for (int c = 0; c < g.c; ++c)
    for (int r = 0; r < g.k; ++r) {
      const int iy = oy * g.stride - g.pad + r;
      if (iy < 0 || iy >= g.h) continue;
      for (int q = 0; q < g.k; ++q) {
        const int ix = ox * g.stride - g.pad + q;
        if (ix < 0 || ix >= g.w) continue;
        acc += double(x[((s * g.c + c) * g.h + iy) * g.w + ix]) *
               double(w[((size_t(k) * g.c + c) * g.k + r) * g.k + q]);
      }
    }
  return acc;
}

/// The input gradient at flat index i of [n, c, h, w]: the sum over the outputs whose window covers
/// it of dy * w, in double.
DPTRAIN_HD double reference_conv_input_grad(const float* dy, const float* w, const ConvGeometry& g, size_t i) {
  const int ix = static_cast<int>(i % g.w), iy = static_cast<int>(i / g.w % g.h),
            c = static_cast<int>(i / (size_t(g.w) * g.h) % g.c);
  const size_t s = i / (size_t(g.w) * g.h * g.c);
  double acc = 0;
  for (int k = 0; k < g.oc; ++k)
    for (int r = 0; r < g.k; ++r) {
      const int ty = iy + g.pad - r;  // oy * stride, if some output row covers iy with kernel row r
      if (ty < 0 || ty % g.stride != 0 || ty / g.stride >= g.oh) continue;
      const int oy = ty / g.stride;
      for (int q = 0; q < g.k; ++q) {
        const int tx = ix + g.pad - q;
        if (tx < 0 || tx % g.stride != 0 || tx / g.stride >= g.ow) continue;
        const int ox = tx / g.stride;
        acc += double(dy[((s * g.oc + k) * g.oh + oy) * g.ow + ox]) *
               double(w[((size_t(k) * g.c + c) * g.k + r) * g.k + q]);
      }
    }
  return acc;
}

/// One term of the gradient of weight wi (flat index of [oc, c, k, k]): dy * x at output position j
/// of [n, oh, ow], 0 where the window's tap falls in the padding.
DPTRAIN_HD double reference_conv_weight_grad_term(const float* x, const float* dy, const ConvGeometry& g, size_t wi,
                                                  size_t j) {
  const int q = static_cast<int>(wi % g.k), r = static_cast<int>(wi / g.k % g.k),
            c = static_cast<int>(wi / (size_t(g.k) * g.k) % g.c), k = static_cast<int>(wi / (size_t(g.k) * g.k * g.c));
  const int ox = static_cast<int>(j % g.ow), oy = static_cast<int>(j / g.ow % g.oh);
  const size_t s = j / (size_t(g.ow) * g.oh);
  const int iy = oy * g.stride - g.pad + r, ix = ox * g.stride - g.pad + q;
  if (iy < 0 || iy >= g.h || ix < 0 || ix >= g.w) return 0.0;
  return double(dy[((s * g.oc + k) * g.oh + oy) * g.ow + ox]) * double(x[((s * g.c + c) * g.h + iy) * g.w + ix]);
}

/// One term of channel k's bias gradient: dy at output position j of [n, oh, ow].
DPTRAIN_HD double reference_conv_bias_grad_term(const float* dy, const ConvGeometry& g, int k, size_t j) {
  const size_t plane = size_t(g.oh) * g.ow;
  return double(dy[((j / plane) * g.oc + k) * plane + j % plane]);
}

/// Multiply-adds of one direction of a convolution (each direction does the same count).
inline std::uint64_t conv_multiply_adds(const ConvGeometry& g) {
  return std::uint64_t(g.n) * g.oc * g.oh * g.ow * g.c * g.k * g.k;
}

/// Convolutions up to this many multiply-adds a direction are checked against the reference
/// kernels (milliseconds in double on an H100: mnist_cnn's conv2 at its evaluation batch of 1000 is
/// 1.1e10); larger ones against cuDNN's implicit GEMM.
constexpr std::uint64_t kReferenceConvMaxMultiplyAdds = std::uint64_t{16} << 30;

/// Whether the reference kernels serve this geometry: a consistent shape (every extent >= 1, pad >= 0,
/// oh = (h + 2 pad - k) / stride + 1, likewise ow), oc c k^2 weights and oc channels within grid.x,
/// and at most kReferenceConvMaxMultiplyAdds. Outside it the functions below throw CudaError.
bool reference_conv_fits(const ConvGeometry& g);

/// y = conv(x, w) (+ b when b is not null), then max(., 0) when relu is set; rounded to float once.
void reference_conv_forward(const float* x, const float* w, const float* b, float* y, bool relu, const ConvGeometry& g,
                            cudaStream_t stream);

/// dx = conv_transpose(dy, w) (overwritten).
void reference_conv_backward_data(const float* dy, const float* w, float* dx, const ConvGeometry& g,
                                  cudaStream_t stream);

/// dw = sum over samples and positions of dy * x, db = the sum of dy per channel (both overwritten).
void reference_conv_filter_grad(const float* x, const float* dy, float* dw, float* db, const ConvGeometry& g,
                                cudaStream_t stream);

}  // namespace dptrain::kernels
