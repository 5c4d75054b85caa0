// Custom CUDA kernels of the layers and the loss: dropout (the CPU backend's counter-based mask),
// bias add and bias gradient of linear layers, and the fused softmax cross-entropy. All are
// deterministic: reductions run in a fixed order, never through atomics.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/step_state.h"

namespace dptrain::kernels {

/// y = x * mask, mask[i] = keep ? scale : 0 with keep decided by philox::dropout_uniform(seed,
/// epoch, layer, first_sample + sample, element) >= p, (seed, epoch, first_sample) read from `step`.
void dropout_forward(const float* x, float* y, float* mask, int n, int per_sample, float p, float scale,
                     uint32_t layer, const StepState* step, cudaStream_t stream);
/// dx = dy * mask.
void dropout_backward(const float* dy, const float* mask, float* dx, long count, cudaStream_t stream);

/// y[i, o] += b[o] for n rows of `features`.
void add_bias_rows(float* y, const float* b, int n, int features, cudaStream_t stream);
/// db[o] = sum_i dy[i, o], summed in row order.
void bias_grad_rows(const float* dy, float* db, int n, int features, cudaStream_t stream);
/// db[c] = sum over samples and positions of dy[sample, c, position] (NCHW, `plane` positions), in
/// a fixed order. cuDNN's convolution bias gradient took 63 us for mnist_cnn's conv2 (ncu, H200).
void bias_grad_channels(const float* dy, float* db, int n, int channels, int plane, cudaStream_t stream);

/// Per sample: loss, correct and (when dlogits is not null) (softmax - onehot) * grad_scale. The
/// batch's loss and correct count are added to sums[0], sums[1] by one block, in sample order.
/// `scratch` holds 2 * n doubles.
void softmax_cross_entropy(const float* logits, const int32_t* labels, int n, int classes, float grad_scale,
                           float* dlogits, double* sums, double* scratch, cudaStream_t stream);

}  // namespace dptrain::kernels
