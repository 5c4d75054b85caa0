// Register-tiled FP32 kernels for 3x3, stride-1 convolutions with channel counts that are multiples
// of 32 (mnist_cnn's conv2: 32 -> 64 channels at 26x26). cuDNN's FMA-only algorithms run these at
// about 23 TFLOP/s on an H200; these kernels keep every operand of the inner loops in shared memory
// or registers and issue about eight FFMAs per shared-memory load. Plain FFMA (no tensor cores, no
// TF32). Deterministic: every output is summed in an order fixed by the shape, without atomics.
// Nothing here allocates or synchronizes, so the calls can be captured in a CUDA graph.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "kernels/conv_kernels.h"

namespace dptrain::kernels {

/// Whether the tiled kernels serve this convolution: conv_shared::plain_3x3 (k = 3, stride 1, pad 0..2, consistent
/// output size; n c h w, n oc oh ow, 9 c oc <= INT_MAX; c, oc <= 65535 * 32), c and oc multiples of 32 (>= 32); the
/// one-row forward tiling of the convolution and of its transpose (input gradient) within 512 threads (ceil(ow / 4)
/// x oc-block / 8, oc-block 64 where 64 divides oc, else 32; likewise ceil(w / 4) with c) and 96 KB of shared
/// memory, the filter tiling within 96 KB, and chunks x oc x (9 c + 1) <= INT_MAX. Any pointers (4-byte accesses).
bool tiled_conv_fits(const ConvGeometry& g);

/// Bytes of scratch the two backward functions need (transposed weights, filter-gradient partials). The two use
/// disjoint parts, so one scratch buffer may serve both at once.
size_t tiled_conv_scratch(const ConvGeometry& g);

/// y = conv(x, w) + b, then max(., 0) when relu is set. b may be null (no bias: a pooling absorbed after it adds it).
void tiled_conv_forward(const float* x, const float* w, const float* b, float* y, bool relu, const ConvGeometry& g,
                        cudaStream_t stream);

/// dx = conv_transpose(dy, w) (overwritten). scratch: tiled_conv_scratch(g) bytes.
void tiled_conv_backward_data(const float* dy, const float* w, float* dx, void* scratch, const ConvGeometry& g,
                              cudaStream_t stream);

/// dw = sum over samples/positions of dy * x, db[o] = sum of dy[:, o] (both overwritten). scratch as above.
void tiled_conv_filter_grad(const float* x, const float* dy, float* dw, float* db, void* scratch,
                            const ConvGeometry& g, cudaStream_t stream);

}  // namespace dptrain::kernels
