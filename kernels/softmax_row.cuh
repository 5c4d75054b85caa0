// One sample's softmax cross-entropy as a warp computes it, lanes over the classes. Shared by the
// loss kernel and the classifier's fused backward (kernels/classifier_kernels.h), so that both give
// the same loss and dL/dlogits bit for bit.
#pragma once

#include <cfloat>

namespace dptrain::kernels {

struct SoftmaxRow {
  float lse;       ///< log sum exp of the logits
  int best_index;  ///< the first maximum, as torch.argmax
};

/// Every lane of the warp returns the same row summary.
__device__ __forceinline__ SoftmaxRow softmax_row(const float* x, int classes, int lane) {
  // First maximum: compare (value, -index) so ties go to the lowest index.
  float best = -FLT_MAX;
  int best_index = classes;
  for (int c = lane; c < classes; c += 32)
    if (x[c] > best || (x[c] == best && c < best_index)) best = x[c], best_index = c;
  for (int off = 16; off > 0; off /= 2) {
    const float ob = __shfl_xor_sync(0xffffffffu, best, off);
    const int oi = __shfl_xor_sync(0xffffffffu, best_index, off);
    if (ob > best || (ob == best && oi < best_index)) best = ob, best_index = oi;
  }
  float z = 0.0f;
  for (int c = lane; c < classes; c += 32) z += expf(x[c] - best);
  for (int off = 16; off > 0; off /= 2) z += __shfl_xor_sync(0xffffffffu, z, off);
  return {best + logf(z), best_index};
}

/// dL/dlogit c: (softmax - onehot(label)) * grad_scale.
__device__ __forceinline__ float softmax_xent_grad(const float* x, int c, const SoftmaxRow& row, int label,
                                                   float grad_scale) {
  return (expf(x[c] - row.lse) - (c == label ? 1.0f : 0.0f)) * grad_scale;
}

}  // namespace dptrain::kernels
