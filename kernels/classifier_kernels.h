// A classifier's last layer (mnist_cnn's fc2, 128 -> 10; lenet5's fc3, 84 -> 10) backward, fused
// with the loss: one launch computes the softmax cross-entropy, dL/dlogits and the layer's bias,
// weight and input gradients (apart, four launches on the critical path: loss, bias gradient,
// input GEMM, and the weight GEMM beside them; 25 us for mnist_cnn at batch 64 in the step's graph,
// H200; at lenet5's batch 1000, 23 us of loss, bias and input-gradient kernels, and 28 us of cuBLAS
// for fc3's 84 x 10 weight gradient on the side stream, H100). Every sum runs in a fixed order
// that depends on the shape alone.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace dptrain::kernels {

/// What linear_loss_backward needs past one tile of samples (linear_loss_backward_scratch): each
/// block's partial sums, and one arrival counter per slice of columns that is zero before the first
/// launch (each launch leaves it zero, so a captured step replays it).
struct LinearLossScratch {
  float* partials = nullptr;       ///< LinearLossScratchSize::floats
  double* loss_partials = nullptr;  ///< LinearLossScratchSize::doubles
  uint32_t* arrivals = nullptr;     ///< LinearLossScratchSize::counters
};

/// The softmax cross-entropy of a linear layer's logits, backward through that layer.
struct LinearLossBackward {
  const float* x;          ///< the layer's input [n][inputs]
  const float* w;          ///< its weight [classes][inputs]
  const float* logits;     ///< its output [n][classes]
  const int32_t* labels;   ///< [n]
  int n, classes, inputs;
  float grad_scale;        ///< dL/dlogits = (softmax - target) * grad_scale
  float label_smoothing;   ///< target = (1 - e) onehot + e / classes
  float* dlogits;          ///< [n][classes]
  double* sums;            ///< sums[0] += loss, sums[1] += correct (SoftmaxCrossEntropy's contract)
  float* dw;               ///< [classes][inputs]
  float* db;               ///< [classes]
  float* dx;               ///< [n][inputs]; null: not wanted
  LinearLossScratch scratch;  ///< past one tile of samples; null pointers otherwise
};

/// Whether linear_loss_backward serves this shape: classes <= kSerialClasses (a thread per sample),
/// the tiles of samples within the grid's y limit, and 32-bit products n x inputs, classes x inputs.
bool linear_loss_backward_fits(int n, int classes, int inputs);

/// The scratch a batch of n needs: all zero within one tile of samples, or where the shape does not fit.
struct LinearLossScratchSize {
  size_t floats = 0, doubles = 0, counters = 0;
};
LinearLossScratchSize linear_loss_backward_scratch(int n, int classes, int inputs);

/// Loss, dL/dlogits, dw, db and dx in one launch; dlogits equal those of softmax_cross_entropy bit for
/// bit. Past one tile of samples, p.scratch must hold linear_loss_backward_scratch(n, classes, inputs).
void linear_loss_backward(const LinearLossBackward& p, cudaStream_t stream);

}  // namespace dptrain::kernels
