// Kernels of a linear layer with few outputs: a classifier's last layer (mnist_cnn's fc2, 128 -> 10).
// A GEMM tile would leave most of its columns idle there and split-K would add a launch, so the
// forward is a warp per sample, and the backward is fused with the loss: one launch computes the
// softmax cross-entropy, dL/dlogits and the layer's bias, weight and input gradients (four launches
// apart: loss, bias gradient, weight and input GEMMs). Every sum runs in a fixed order.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/row_epilogue.h"

namespace dptrain::kernels {

/// The most outputs narrow_linear_forward serves.
constexpr int kNarrowMaxOutputs = 16;

/// y[i][o] = epilogue(sum_k x[i][k] w[o][k]) for n samples, outputs <= kNarrowMaxOutputs; x is
/// [n][inputs], w [outputs][inputs] (PyTorch's layout), y [n][outputs].
void narrow_linear_forward(const float* x, const float* w, float* y, int n, int outputs, int inputs,
                           const RowEpilogue& epilogue, cudaStream_t stream);

/// The softmax cross-entropy of a linear layer's logits, backward through that layer.
struct LinearLossBackward {
  const float* x;          ///< the layer's input [n][inputs]
  const float* w;          ///< its weight [classes][inputs]
  const float* logits;     ///< its output [n][classes]
  const int32_t* labels;   ///< [n]
  int n, classes, inputs;
  float grad_scale;        ///< dL/dlogits = (softmax - onehot) * grad_scale
  float* dlogits;          ///< [n][classes]
  double* sums;            ///< sums[0] += loss, sums[1] += correct (SoftmaxCrossEntropy's contract)
  float* dw;               ///< [classes][inputs]
  float* db;               ///< [classes]
  float* dx;               ///< [n][inputs]; null: not wanted
};

/// Whether linear_loss_backward serves this shape (its shared memory holds dL/dlogits and a slice of
/// the input for the whole batch).
bool linear_loss_backward_fits(int n, int classes, int inputs);
/// Loss, dL/dlogits, dw, db and dx in one launch; dlogits and the loss equal those of
/// softmax_cross_entropy bit for bit.
void linear_loss_backward(const LinearLossBackward& p, cudaStream_t stream);

}  // namespace dptrain::kernels
