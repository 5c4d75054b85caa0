// LeNet-5's whole training pass in four launches: conv 1 -> 6 (5x5, padding 2), ReLU, 2x2 max pool;
// conv 6 -> 16 (5x5), ReLU, 2x2 max pool; linear 400 -> 120, ReLU, 120 -> 84, ReLU, 84 -> 10; softmax
// cross-entropy; every parameter's gradient. The layered step runs about 27 launches there, 21 of
// them one after another, and at a few hundred samples each is bound by its latency, not its work
// (issue 20: lenet5 at batch 257 reached 40% of its batch-8192 rate). Here:
//   1. conv forward, a block a sample: both convolutions with their ReLU and pooling (given the
//      step's gather, it first takes its sample from the dataset: no gather launch before it);
//   2. the linear head, a cluster of 8 blocks per 16 samples (15 clusters of up to 24 from 241 to
//      360 samples): block k keeps slice k of fc1's and fc2's rows (forward, weight gradient)
//      and columns (input gradient) in shared memory and pushes its outputs into the other
//      blocks' shared memory, so a cluster reads the weights from L2 once, not once a sample;
//      every block runs fc3 and the loss itself; the weight gradients as per-cluster partial sums;
//   3. conv backward, a block per group of samples (at most 264 blocks, fixed by n alone): conv2's
//      weight and input gradients, conv1's weight gradient, summed over its samples;
//   4. finish: every gradient summed over the partials, and the loss sums.
// Every sum has an order fixed by n alone: the same bits on every run and every GPU. The model's
// planner times it against the layered step at each batch size (model/fused_step.h).
#pragma once

#include <cuda_runtime_api.h>

#include <array>
#include <cstddef>
#include <cstdint>

#include "core/step_gather.h"

namespace dptrain::kernels {

/// LeNet-5's ten parameter tensors, in state_dict order (conv1.weight, conv1.bias, ..., fc3.bias).
constexpr int kLenet5Tensors = 10;
/// Their element counts.
constexpr std::array<int, kLenet5Tensors> kLenet5TensorSizes{150, 6, 2400, 16, 48000, 120, 10080, 84, 840, 10};

/// What lenet5_step needs beside the model's buffers for a batch of up to n samples.
struct Lenet5ScratchSize {
  size_t floats = 0, bytes = 0;
};
Lenet5ScratchSize lenet5_step_scratch(int n);

/// One training pass. Gradients are written (not added) at every parameter's element; the padding
/// between tensors is left as it is.
struct Lenet5Step {
  const float* params;                      ///< the flat parameter buffer, 16-byte aligned
  std::array<int, kLenet5Tensors> offsets;  ///< where each tensor starts, in params and in grads; the
                                            ///< linear weights' (4, 6, 8) multiples of 4
  const float* x;                           ///< [n][1][28][28]
  const int32_t* labels;                    ///< [n], each in 0..9
  int n;
  float grad_scale;              ///< dL/dlogits = (softmax - target) * grad_scale
  float label_smoothing;         ///< target = (1 - e) onehot + e / 10
  float* grads;                  ///< the flat gradient buffer
  double* sums;                  ///< sums[0] += the loss, sums[1] += the correct count
  float* scratch;                ///< lenet5_step_scratch(n).floats, 16-byte aligned
  unsigned char* scratch_bytes;  ///< lenet5_step_scratch(n).bytes
  /// Where gather.images is not null, conv forward first takes the batch from the dataset
  /// (core/step_gather.h: the same bits as kernels::gather_normalize) and writes it to gather.x and
  /// gather.y, which must be x and labels, for the kernels after it: one launch a step fewer. Else
  /// x and labels hold the batch already.
  StepGather gather;
};

/// Whether lenet5_step serves a batch of n: 1 to kLenet5MaxBatch samples (its partial sums and
/// grids are sized for that; past it the layered step is the one that scales).
constexpr int kLenet5MaxBatch = 16384;
bool lenet5_step_fits(int n);

/// Whether the current device runs it: its linear head needs thread block clusters (sm_90 and later).
bool lenet5_step_supported();

/// Queues the four launches on `stream`. Throws CudaError for a batch it does not fit.
void lenet5_step(const Lenet5Step& p, cudaStream_t stream);

}  // namespace dptrain::kernels
