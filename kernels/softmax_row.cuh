// One sample's softmax cross-entropy, as a warp computes it (lanes over the classes) or as one
// thread does (few classes), and the block's loss sums. Shared by the loss kernel and the
// classifier's fused backward (kernels/classifier_kernels.h), so that both give the same loss and
// dL/dlogits bit for bit.
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

/// Up to this many classes a thread takes a sample alone (softmax_row_thread): a warp per sample
/// would spend its time in chains of shuffles, one sample after another.
constexpr int kSerialClasses = 32;

/// softmax_row by one thread, classes in order (the same first maximum).
__device__ __forceinline__ SoftmaxRow softmax_row_thread(const float* x, int classes) {
  float best = -FLT_MAX;
  int best_index = classes;
#pragma unroll 4
  for (int c = 0; c < classes; ++c)
    if (x[c] > best) best = x[c], best_index = c;
  float z = 0.0f;
#pragma unroll 4
  for (int c = 0; c < classes; ++c) z += expf(x[c] - best);
  return {best + logf(z), best_index};
}

/// sums[0] += the block's loss, sums[1] += its correct count: each thread's values, added by a
/// shuffle tree per warp and the warps in order (a fixed order). Every thread of the block calls it.
template <int kWarps>
__device__ __forceinline__ void add_block_sums(double loss, double correct, double* sums) {
  __shared__ double warp_loss[kWarps], warp_correct[kWarps];
  for (int off = 16; off > 0; off /= 2) {
    loss += __shfl_down_sync(0xffffffffu, loss, off);
    correct += __shfl_down_sync(0xffffffffu, correct, off);
  }
  if (threadIdx.x % 32 == 0) warp_loss[threadIdx.x / 32] = loss, warp_correct[threadIdx.x / 32] = correct;
  __syncthreads();
  if (threadIdx.x != 0) return;
  double tl = 0.0, tc = 0.0;
  for (int w = 0; w < kWarps; ++w) tl += warp_loss[w], tc += warp_correct[w];
  sums[0] += tl;
  sums[1] += tc;
}

/// dL/dlogit c: (softmax - onehot(label)) * grad_scale.
__device__ __forceinline__ float softmax_xent_grad(const float* x, int c, const SoftmaxRow& row, int label,
                                                   float grad_scale) {
  return (expf(x[c] - row.lse) - (c == label ? 1.0f : 0.0f)) * grad_scale;
}

}  // namespace dptrain::kernels
