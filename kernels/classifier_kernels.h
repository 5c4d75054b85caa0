// A classifier's last layer (mnist_cnn's fc2, 128 -> 10) backward, fused with the loss: one launch
// computes the softmax cross-entropy, dL/dlogits and the layer's bias, weight and input gradients
// (apart, four launches on the critical path: loss, bias gradient, input GEMM, and the weight GEMM
// beside them; 25 us for mnist_cnn at batch 64 in the step's graph, H200). Every sum runs in a
// fixed order.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace dptrain::kernels {

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
};

/// Whether linear_loss_backward serves this shape: classes <= kSerialClasses (a thread per sample),
/// and shared memory for the logits, dL/dlogits and a slice of the input for the whole batch.
bool linear_loss_backward_fits(int n, int classes, int inputs);
/// Loss, dL/dlogits, dw, db and dx in one launch; dlogits and the loss equal those of
/// softmax_cross_entropy bit for bit.
void linear_loss_backward(const LinearLossBackward& p, cudaStream_t stream);

}  // namespace dptrain::kernels
