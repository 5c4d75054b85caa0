// Tensor-core kernels for 3x3, stride-1 convolutions with channel counts that are multiples of 32
// (mnist_cnn's conv2): implicit GEMMs on mma.sync m16n8k8 TF32, operands staged in shared memory by
// cp.async, two stages deep. They need up to 140 KB of shared memory per block (sm_90 has 227 KB;
// mma_conv_fits says no where the device has less). Two kinds of math:
// - MmaMath::SplitTf32 (float32 precision, "3xTF32"): each float32 operand is split into a TF32
//   high part and a TF32 remainder, and each product is summed as lo*hi + hi*lo + hi*hi. A term
//   then errs by about 2^-21 of itself (TF32 alone: 2^-11), and each run of tensor-core sums
//   (at most 96 terms) is added into a float32 total with round-to-nearest. Against a float64
//   reference they err by 5-7e-7 (relative norm) where float32 FMA sums err by 1-4e-7. Not exact
//   convolutions in train.exact_convolutions' sense: like FFT's rounding, this difference grows
//   under Adadelta (7.8e-3 from the CPU after 10 steps of the recipe, against 1e-7).
// - MmaMath::Tf32 (train.precision tf32): one product of the TF32-rounded operands.
// Deterministic: every output is summed in an order fixed by the shape, without atomics. Nothing
// here allocates or synchronizes, so the calls can be captured in a CUDA graph.
// Where they win (H200, conv2 of mnist_cnn, inside a graph; docs/benchmarks/notebook.md): TF32 forward at
// batch 64 (28 us, cuDNN 30) and 3xTF32 forward and filter gradient at batch 1000 (588 and 832
// us, cuDNN 632 and 1805). At batch 64 in float32 cuDNN's FFT and Winograd stay ahead (45, 42 and
// 60 us against 57, 140 and 80): these kernels are latency-bound there (8 warps per SM, a wave
// and a half of blocks), not tensor-bound.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "kernels/conv_kernels.h"

namespace dptrain::kernels {

enum class MmaMath { SplitTf32, Tf32 };

/// Whether these kernels serve this convolution: conv_shared::plain_3x3 (k = 3, stride 1, pad 0..2, consistent output
/// size; n c h w, n oc oh ow, 9 c oc <= INT_MAX; c, oc <= 65535 * 32), c and oc multiples of 32 (>= 32), the staged
/// tiles of the forward, of the input gradient (the transposed convolution) and of the filter gradient (3xTF32, the
/// larger) within the current device's opt-in shared memory per block (sm_90: 227 KB; sm_86/89: 99 KB), and the
/// filter partials (chunks x oc x (9 c + 1) floats) and prepared weights (bytes) <= INT_MAX. Any pointers (4-byte
/// accesses to x, w, dy; scratch is realigned).
bool mma_conv_fits(const ConvGeometry& g);

/// Bytes of scratch the three functions need: prepared weights (forward, input gradient) first, then the
/// filter-gradient partials, so the input and filter gradients may share one scratch buffer at once; plus 16 bytes
/// so that the weights may start at a 16-byte aligned address whatever the scratch pointer.
size_t mma_conv_scratch(const ConvGeometry& g);

/// y = conv(x, w) + b, then max(., 0) when relu is set. b may be null (no bias). scratch: mma_conv_scratch(g) bytes
/// (the weights, rounded and laid out as the kernel stages them).
void mma_conv_forward(const float* x, const float* w, const float* b, float* y, bool relu, void* scratch,
                      MmaMath math, const ConvGeometry& g, cudaStream_t stream);

/// dx = conv_transpose(dy, w) (overwritten). scratch: mma_conv_scratch(g) bytes.
void mma_conv_backward_data(const float* dy, const float* w, float* dx, void* scratch, MmaMath math,
                            const ConvGeometry& g, cudaStream_t stream);

/// dw = sum over samples/positions of dy * x, db[o] = sum of dy[:, o] (both overwritten). scratch as above.
void mma_conv_filter_grad(const float* x, const float* dy, float* dw, float* db, void* scratch, MmaMath math,
                          const ConvGeometry& g, cudaStream_t stream);

}  // namespace dptrain::kernels
