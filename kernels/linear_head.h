// A classifier head of linear layers (lenet5's fc1, fc2 and fc3: 400 -> 120 -> 84 -> 10, ReLUs
// between) in two launches: the forward of every layer, then the loss with every layer's input
// gradient. Layer by layer, the same head is about 16 launches in a chain on the critical path (a
// GEMM, a split-K reduction and a bias pass per layer forward; the loss; a bias-gradient pass and an
// input-gradient GEMM per layer backward): 76 us of lenet5's 333 us step at batch 1000 and about 60
// of 144 at 257 (H100, docs/BENCHMARKS.md). Rows are independent until the weight gradients, so a
// block takes a tile of rows through every layer with the activations in shared memory (as
// tiny-cuda-nn's fully fused MLP does); the weight and bias gradients, sums over the rows, are left
// to the caller (LinearCuda queues them on the side stream).
//
// Every output sums its terms in index order, in float32; only the loss's block sums depend on the
// tile size, which is a function of the row count alone.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kernels/layer_kernels.h"

namespace dptrain::kernels {

constexpr int kHeadMaxLayers = 4;
/// Widths (inputs, outputs of each layer) the head serves; the classes at most kHeadMaxClasses (a
/// thread per row computes the softmax, as linear_loss_backward does).
constexpr int kHeadMaxWidth = 1024, kHeadMaxClasses = 32;

struct LinearHead {
  int layers = 0;                       ///< 2 to kHeadMaxLayers
  int width[kHeadMaxLayers + 1] = {};   ///< width[0]: the inputs; width[l + 1]: layer l's outputs
  bool relu[kHeadMaxLayers] = {};       ///< layer l's output goes through a ReLU (never the last's)
  const float* w[kHeadMaxLayers] = {};  ///< layer l's weight [width[l + 1]][width[l]] (nn.Linear's)
  const float* b[kHeadMaxLayers] = {};  ///< its bias [width[l + 1]]
};

/// Whether linear_head_forward and linear_head_backward serve the head, at any number of rows: 2 to
/// kHeadMaxLayers layers, every width 1 to kHeadMaxWidth, classes 2 to kHeadMaxClasses, no ReLU on
/// the last layer.
bool linear_head_fits(const LinearHead& h);
/// Rows a block takes at n rows: 4, 8 or 16, a function of n and the widths alone (shared memory
/// holds that many rows of the two widest layers).
int linear_head_rows_per_block(const LinearHead& h, int n);

/// y[l] = layer l's output after its ReLU [n][width[l + 1]], for every l < layers; x [n][width[0]].
void linear_head_forward(const LinearHead& h, const float* x, float* const* y, int n, cudaStream_t stream);

/// The softmax cross-entropy of the last layer's output, as softmax_cross_entropy computes it.
struct HeadLoss {
  const int32_t* labels = nullptr;  ///< [n]
  float grad_scale = 1.0f;          ///< dL/dlogits = (softmax - target) * grad_scale
  float label_smoothing = 0.0f;
  double* sums = nullptr;           ///< sums[0] += loss, sums[1] += correct
  LossScratch scratch;              ///< linear_head_loss_partials(n) doubles, and a zeroed counter
};
/// Doubles of HeadLoss::scratch.partials for up to n rows.
size_t linear_head_loss_partials(int n);

/// From the forward's y: the loss, and g[l] = dL/d(layer l's output before its ReLU)
/// [n][width[l + 1]] for every layer (g[layers - 1]: dL/dlogits), and dx = dL/dx [n][width[0]]
/// when dx is not null.
void linear_head_backward(const LinearHead& h, const float* const* y, int n, const HeadLoss& loss, float* const* g,
                          float* dx, cudaStream_t stream);

}  // namespace dptrain::kernels
