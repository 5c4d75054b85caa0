// Reference convolutions for the planner's check of every implementation it may choose: the
// definition of a convolution written out, one output element per thread (one block per weight
// for the filter gradient), summed in double. Slow, plain, and no library's engine to load: with a
// warm plan cache, checking dptrain's own kernels against these instead of cuDNN's implicit GEMM
// keeps cuDNN's engines (about 0.15 s of module loading at the first use) off the path to the first
// step. Deterministic: fixed summation orders, no atomics.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/conv_kernels.h"

namespace dptrain::kernels {

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
