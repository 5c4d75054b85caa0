// Custom CUDA kernels of the layers and the loss: dropout (the CPU backend's counter-based mask),
// bias add and bias gradient (with a fused ReLU where the layer absorbed one), and the fused
// softmax cross-entropy. All are
// deterministic: reductions run in a fixed order, never through atomics.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "core/step_state.h"
#include "kernels/fused_dropout.h"

namespace dptrain::kernels {

/// y = x * mask, mask[i] = keep ? scale : 0 with keep decided by philox::dropout_uniform(seed,
/// epoch, layer, first_sample + sample, element) >= p, (seed, epoch, first_sample) read from `step`.
void dropout_forward(const float* x, float* y, float* mask, int n, int per_sample, float p, float scale,
                     uint32_t layer, const StepState* step, cudaStream_t stream);
/// dx = dy * mask.
void dropout_backward(const float* dy, const float* mask, float* dx, long count, cudaStream_t stream);

// A layer that applies the ReLU after it (Layer::absorb_following_relu) passes relu = true
// forward, and backward its own output (after the ReLU) as relu_out: gradients are kept where
// relu_out > 0, the CPU ReLU's rule, and the masked gradient is written to `masked` for the
// layer's other gradient computations. relu_out = nullptr: plain bias gradient, masked unused.

/// y[i, o] += b[o] for n rows of `features`, then max(., 0) when relu is set, then times the mask of
/// an absorbed dropout (kernels/fused_dropout.h; inactive: none).
void add_bias_rows(float* y, const float* b, int n, int features, bool relu, const FusedDropout& drop,
                   cudaStream_t stream);
/// y[s, c, q] += b[c] (NCHW, `plane` positions per channel), then max(., 0) when relu is set.
void add_bias_channels(float* y, const float* b, int n, int channels, int plane, bool relu, cudaStream_t stream);
/// db[o] = sum_i g[i, o], summed in a fixed order; g = dy times the absorbed dropout's mask, masked by
/// relu_out (see above; with a dropout, relu_out is the output after it). `masked` receives g when
/// there is a ReLU or a dropout.
void bias_grad_rows(const float* dy, const float* relu_out, float* masked, float* db, int n, int features,
                    const FusedDropout& drop, cudaStream_t stream);
/// db[c] = sum over samples and positions of g[sample, c, position] (NCHW, `plane` positions), in
/// a fixed order; g = dy, masked by relu_out (see above). `scratch` holds
/// bias_grad_channels_scratch(n, channels) floats. cuDNN's convolution bias gradient took 63 us for
/// mnist_cnn's conv2 (ncu, H200).
void bias_grad_channels(const float* dy, const float* relu_out, float* masked, float* db, float* scratch, int n,
                        int channels, int plane, cudaStream_t stream);
size_t bias_grad_channels_scratch(int n, int channels);
/// db[c] = sum over g of partial[c * groups + g], in order: the last pass of a bias gradient summed
/// by groups of samples.
void bias_grad_finish(const float* partial, int groups, int channels, float* db, cudaStream_t stream);
/// dx = y > 0 ? dy : 0 (the ReLU's backward, from its output).
void relu_backward(const float* dy, const float* y, float* dx, long count, cudaStream_t stream);

/// Scratch of softmax_cross_entropy past one block: softmax_cross_entropy_partials(n, classes)
/// doubles, and one counter that is zero before the first launch (each launch leaves it zero).
struct LossScratch {
  double* partials = nullptr;
  uint32_t* arrivals = nullptr;
};
/// The doubles of LossScratch::partials a batch of n x classes needs (0: one block, no scratch).
size_t softmax_cross_entropy_partials(int n, int classes);

/// Per sample: loss, correct and (when dlogits is not null) (softmax - target) * grad_scale, target
/// = (1 - label_smoothing) onehot + label_smoothing / classes. The batch's loss and correct count are
/// added to sums[0], sums[1] in a fixed order that depends on n and classes alone. Blocks over the
/// samples, a thread per sample up to 32 classes, a warp per sample above (lanes striding the row;
/// no shared memory per class); past one block, `scratch` (see above) is required.
void softmax_cross_entropy(const float* logits, const int32_t* labels, int n, int classes, float grad_scale,
                           float label_smoothing, float* dlogits, double* sums, LossScratch scratch,
                           cudaStream_t stream);

}  // namespace dptrain::kernels
