// Convolutions whose one-sample tensors fit in shared memory (lenet5's conv2: 6 -> 16 channels, 5x5,
// 14x14 -> 10x10), any kernel size up to 7, stride and padding. There cuDNN's algorithms are built for
// larger problems: at batch 257 on an H100 its implicit GEMM forward took 15.5 us plus a bias pass, and
// its FFT input and filter gradients about 70 us of the step's critical path, for 62 million
// multiply-adds a direction. Here a block stages one sample (zero-padded input, or output gradient)
// and the weights in shared memory and each thread sums a few outputs in registers: at stride 1 a strip
// of four positions of a row for four channels, with the summed-over channels split over up to four
// thread ranges where the plane leaves few strips (at batch 257 on an H100: forward 11.4 us, input
// gradient 17.6, filter gradient 23.8, against cuDNN's best 19.8, 44.4 and 33.3). Plain FP32 FMA,
// each output summed in an order fixed by the shape (the filter gradient: per chunk of samples, then
// the chunks in order), without atomics: deterministic on every GPU, exact in train.exact_convolutions'
// sense. Nothing here allocates or synchronizes, so the calls can be captured in a CUDA graph.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "kernels/conv_kernels.h"

namespace dptrain::kernels {

/// Whether the small kernels serve this convolution (all three directions): a consistent shape (every extent
/// >= 1, pad >= 0, k <= 7, oh = (h + 2 pad - k) / stride + 1, likewise ow); within 48 KB of shared memory a block:
/// one zero-padded input sample (c (h + 2 pad) (w + 2 pad) floats) plus the weights of up to 16 output channels
/// (forward), one output-gradient sample (oc oh ow) plus the weights of up to 16 input channels (input
/// gradient), and the two samples together, each padded row and output plane at an odd pitch (filter
/// gradient: c (h + 2 pad) ((w + 2 pad) | 1) + oc ((oh ow) | 1) floats); and the filter gradient's work items
/// (ceil(oc / 4) c k + oc) within 512. Any batch n >= 1 (grid.x; sample offsets are 64-bit) and any pointers
/// (4-byte accesses). Outside it the functions below throw CudaError.
bool small_conv_fits(const ConvGeometry& g);

/// Bytes of scratch small_conv_filter_grad needs (per-chunk partial sums; the other two need none).
size_t small_conv_scratch(const ConvGeometry& g);

/// y = conv(x, w) + b, then max(., 0) when relu is set. b may be null (no bias: a pooling absorbed after it adds it).
void small_conv_forward(const float* x, const float* w, const float* b, float* y, bool relu, const ConvGeometry& g,
                        cudaStream_t stream);

/// dx = conv_transpose(dy, w) (overwritten).
void small_conv_backward_data(const float* dy, const float* w, float* dx, const ConvGeometry& g, cudaStream_t stream);

/// dw = sum over samples and positions of dy * x, db[o] = sum of dy[:, o] (both overwritten). scratch:
/// small_conv_scratch(g) bytes.
void small_conv_filter_grad(const float* x, const float* dy, float* dw, float* db, void* scratch,
                            const ConvGeometry& g, cudaStream_t stream);

}  // namespace dptrain::kernels
