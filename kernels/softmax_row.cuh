// One sample's softmax cross-entropy, as a warp computes it (lanes over the classes) or as one
// thread does (few classes), and the block's loss sums. Shared by the loss kernel and the
// classifier's fused backward (kernels/classifier_kernels.h), so that both give the same loss and
// dL/dlogits bit for bit.
#pragma once

#include <cfloat>

namespace dptrain::kernels {

// The row is kept as (max, log z), z = sum exp(x - max), not as lse = max + log z: with logits of
// 1e8 the sum max + log z rounds to max, and exp(x - lse) would lose log z entirely;
// exp((x - max) - log z) keeps it (the CPU loss computes the same way).
struct SoftmaxRow {
  float max;       ///< the largest logit
  float log_z;     ///< log sum exp(x - max)
  float sum;       ///< sum of the logits (label smoothing's uniform part)
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
  float z = 0.0f, sum = 0.0f;
  for (int c = lane; c < classes; c += 32) z += expf(x[c] - best), sum += x[c];
  for (int off = 16; off > 0; off /= 2) {
    z += __shfl_xor_sync(0xffffffffu, z, off);
    sum += __shfl_xor_sync(0xffffffffu, sum, off);
  }
  return {best, logf(z), sum, best_index};
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
  float z = 0.0f, sum = 0.0f;
#pragma unroll 4
  for (int c = 0; c < classes; ++c) z += expf(x[c] - best), sum += x[c];
  return {best, logf(z), sum, best_index};
}

/// The block's sums of each thread's loss and correct count, in a fixed order (a shuffle tree per
/// warp, then the warps in order); the totals are valid in thread 0. Every thread of the block calls
/// it; a second call in the same block needs a __syncthreads() after thread 0 has read the first's.
template <int kWarps>
__device__ __forceinline__ void block_loss_sums(double& loss, double& correct) {
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
  loss = tl;
  correct = tc;
}

/// sums[0] += the block's loss, sums[1] += its correct count (block_loss_sums' order).
template <int kWarps>
__device__ __forceinline__ void add_block_sums(double loss, double correct, double* sums) {
  block_loss_sums<kWarps>(loss, correct);
  if (threadIdx.x != 0) return;
  sums[0] += loss;
  sums[1] += correct;
}

/// sums[0] += the loss, sums[1] += the correct count of `count` blocks, whose (loss, correct) pairs
/// other blocks of this launch wrote to `partials` (read from L2): pair b is taken by thread b modulo
/// the block's threads, then add_block_sums' order.
template <int kWarps>
__device__ __forceinline__ void add_partial_loss_sums(const double* partials, int count, double* sums) {
  double loss = 0.0, correct = 0.0;
  for (int b = threadIdx.x; b < count; b += 32 * kWarps) {
    loss += __ldcg(partials + 2 * b);
    correct += __ldcg(partials + 2 * b + 1);
  }
  add_block_sums<kWarps>(loss, correct, sums);
}

/// Label smoothing e over C classes as the loss uses it: the target is (1 - e) onehot + e / C
/// (torch.nn.CrossEntropyLoss(label_smoothing=e)). e = 0: on = 1, off = 0, today's loss exactly.
struct Smoothing {
  float eps, on, off;
  __host__ __device__ Smoothing(float e, int classes) : eps(e), on(1.0f - e), off(e / static_cast<float>(classes)) {}
};

/// dL/dlogit c: (softmax - target) * grad_scale.
__device__ __forceinline__ float softmax_xent_grad(const float* x, int c, const SoftmaxRow& row, int label,
                                                   const Smoothing& sm, float grad_scale) {
  return (expf((x[c] - row.max) - row.log_z) - (c == label ? sm.on : 0.0f) - sm.off) * grad_scale;
}

/// The sample's loss, -sum target * log_softmax: (1 - e) (lse - x[label]) + e (lse - mean x).
__device__ __forceinline__ double softmax_xent_loss(float x_label, const SoftmaxRow& row, int classes,
                                                    const Smoothing& sm) {
  const double nll = static_cast<double>((row.max - x_label) + row.log_z);
  if (sm.eps == 0.0f) return nll;
  const double uniform = static_cast<double>(row.max) + static_cast<double>(row.log_z) -
                         static_cast<double>(row.sum) / classes;
  return (1.0 - sm.eps) * nll + static_cast<double>(sm.eps) * uniform;
}

}  // namespace dptrain::kernels
