// Direct convolution kernels for layers whose reduction per output is short (in_channels * k * k
// at most kDirectConvMaxReduction, such as a first layer on one-channel images). There cuDNN's
// general algorithms run at about 1 TFLOP/s (bench/conv_survey: 23 us forward and 33-45 us
// backward-filter for mnist_cnn's conv1 at batch 64, on an H200), 5-10x slower than the memory
// traffic needs. Deterministic: fixed summation orders, no atomics.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kernels/pool_kernels.h"

namespace dptrain::kernels {

/// NCHW input [n, c, h, w], weights [oc, c, k, k], output [n, oc, oh, ow].
struct ConvGeometry {
  int n, c, h, w;
  int oc, oh, ow;
  int k, stride, pad;
};

constexpr int kDirectConvMaxReduction = 32;

/// Whether the direct kernels serve convolutions of this layer shape (the short reduction; batch-independent).
inline bool direct_conv_fits(int in_channels, int kernel) {
  return in_channels * kernel * kernel <= kDirectConvMaxReduction;
}

/// Whether conv_direct_forward and conv_direct_filter_grad serve this geometry at its batch: the short reduction
/// (c k^2 <= 32), a consistent shape (every extent >= 1, pad >= 0, oh = (h + 2 pad - k) / stride + 1, likewise ow)
/// and the launch and 32-bit index limits: one sample's input c h w <= INT_MAX, the filter gradient's positions
/// n oh ow <= INT_MAX - 128, n ceil(oc / 8) <= INT_MAX (grid.x), oh ow <= 65535 * 128 (grid.y) and oc <= 65535 * 32
/// (grid.y). Batch and tensor sizes are otherwise free (offsets of samples are 64-bit). Outside it the two
/// functions throw CudaError.
bool direct_conv_fits(const ConvGeometry& g);

/// y = conv(x, w) + b, then max(., 0) when relu is set.
void conv_direct_forward(const float* x, const float* w, const float* b, float* y, bool relu, const ConvGeometry& g,
                         cudaStream_t stream);

/// Bytes of scratch conv_direct_filter_grad needs for this geometry.
size_t conv_direct_filter_grad_scratch(const ConvGeometry& g);

/// dw = sum over samples and positions of g * x (overwritten), db = the sum of g per channel, where
/// g = dy, or, when relu_out (the output after an absorbed ReLU) is not null, dy where relu_out > 0.
void conv_direct_filter_grad(const float* x, const float* dy, const float* relu_out, float* dw, float* db,
                             void* scratch, const ConvGeometry& g, cudaStream_t stream);

// A first layer followed by a max pooling (the pooling absorbed: Layer::absorb_following_pool). p
// pools the convolution's output planes: p.planes = n oc, p.h = oh, p.w = ow.

/// Whether conv_direct_pool_forward and conv_direct_pool_filter_grad serve convolution g pooled by p:
/// direct_conv_fits(g); ceil(oc / 8) <= 65535 (grid.y); p consistent with g's output (windows of
/// any size, stride and padding with 2 pad <= k, so that every window holds a position of the plane;
/// oh and ow as they give); p.oh p.ow <= 65535 x 128 (grid.y). Outside it the two functions throw CudaError.
bool direct_pool_fits(const ConvGeometry& g, const PoolGeometry& p);

/// conv_direct_forward then maxpool_forward, in one pass, with the same values (the sign of an output that
/// sums to zero aside: padding taps add w x 0 here, and are skipped there): y = the pooling of
/// conv(x, w) + b (after max(., 0) when relu), argmax = each window's first maximum as an offset into
/// the convolution's output plane. The convolution's output is never stored.
void conv_direct_pool_forward(const float* x, const float* w, const float* b, bool relu, float* y, int32_t* argmax,
                              const ConvGeometry& g, const PoolGeometry& p, cudaStream_t stream);

/// Bytes of scratch conv_direct_pool_filter_grad needs for this geometry.
size_t conv_direct_pool_filter_grad_scratch(const ConvGeometry& g);

/// dw and db of the convolution from dy, the gradient of the pooled output y: each pooled output's
/// gradient (0 where relu and y <= 0) times the input window under its argmax (conv_direct_pool_forward's),
/// summed over the samples and pooled outputs; db = the sum of those gradients. The same sums as
/// maxpool_backward then conv_direct_filter_grad, in another order, over a quarter of the positions
/// for 2 x 2 windows. Overwrites dw and db.
void conv_direct_pool_filter_grad(const float* x, const float* dy, const float* y, const int32_t* argmax, bool relu,
                                  float* dw, float* db, void* scratch, const ConvGeometry& g, const PoolGeometry& p,
                                  cudaStream_t stream);

}  // namespace dptrain::kernels
