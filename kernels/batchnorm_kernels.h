// CUDA kernels of batchnorm2d / batchnorm1d (layers/batchnorm.h; the CPU reference is
// layers/cpu/batchnorm_cpu.cpp). Tensors are NCHW with `spatial` = H*W positions per channel (1
// for batchnorm1d). A local batch of n samples is cut into `groups` groups of `group` samples (the
// last may be short); sync mode is one group of all n whose sums are exchanged between the
// kernels by the caller.
//
// Deterministic: every sum runs in double, each thread over a fixed set of elements and then a
// fixed shared-memory tree, never through atomics, so a step repeats bit for bit (resume) and
// does not depend on anything but its inputs. No kernel allocates or syncs the host: all run
// inside the captured step.
#pragma once

#include <cuda_runtime_api.h>

#include "core/host_device.h"

namespace dptrain::kernels {

/// Shapes of one batchnorm call.
struct BatchNormShape {
  int n = 0;        ///< samples in the local batch (0: an idle rank)
  int channels = 0;
  int spatial = 1;  ///< positions per channel and sample
  int group = 0;    ///< samples per group; 0: sync (one group of all n)
  DPTRAIN_HD int groups() const { return group == 0 ? 1 : (n + group - 1) / group; }
};

/// sums[g * C + c] = sum of x over group g, channel c. Sync: also sums[C] = n * spatial (the
/// count, which the exchange turns into the global one).
void batchnorm_sums(const float* x, const BatchNormShape& s, float* sums, cudaStream_t stream);
/// mean[g * C + c] = sums / m (m: the group's count, sync: sums[C]); sq[g * C + c] = sum of
/// (x - mean)^2 over the group.
void batchnorm_centered(const float* x, const BatchNormShape& s, const float* sums, float* mean, float* sq,
                        cudaStream_t stream);
/// invstd = 1 / sqrt(sq / m + eps); partial[c] = sum over groups of mean, partial[C + c] = sum of
/// the unbiased variances (biased when m = 1), partial[2C] = the number of groups (0 when n = 0
/// outside sync).
void batchnorm_finish_stats(const BatchNormShape& s, const float* sums, const float* sq, const float* mean,
                            float eps, float* invstd, float* partial, cudaStream_t stream);
// relu: the layer absorbed the ReLU after it (Layer::absorb_following_relu): forward writes
// max(y, 0), and backward's dy is masked by relu_out > 0 (relu_out: the layer's output after the
// ReLU; null: no ReLU), the CPU ReLU's rule.

/// y = (x - mean) * invstd * w + b with the group's statistics, then max(., 0) when relu.
void batchnorm_normalize(const float* x, const BatchNormShape& s, const float* mean, const float* invstd,
                         const float* w, const float* b, bool relu, float* y, cudaStream_t stream);
/// Evaluation: y = (x - running_mean) / sqrt(running_var + eps) * w + b, then max(., 0) when relu.
void batchnorm_eval(const float* x, const BatchNormShape& s, const float* running_mean, const float* running_var,
                    float eps, const float* w, const float* b, bool relu, float* y, cudaStream_t stream);
/// running = (1 - momentum) running + momentum * partial / groups (mean and var; nothing when no
/// group), tracked += 1.
void batchnorm_running_update(const float* partial, int channels, float momentum, float* running_mean,
                              float* running_var, float* tracked, cudaStream_t stream);
/// bsums[g * 2C + c] = sum of dy, bsums[g * 2C + C + c] = sum of dy * xhat over group g.
void batchnorm_backward_sums(const float* x, const float* dy, const float* relu_out, const BatchNormShape& s,
                             const float* mean, const float* invstd, float* bsums, cudaStream_t stream);
/// dw[c] = sum over groups of bsums' dy * xhat sums, db[c] of its dy sums, in group order.
void batchnorm_param_grads(const float* bsums, const BatchNormShape& s, float* dw, float* db, cudaStream_t stream);
/// dx = w * invstd * (dy - sum_dy / m - xhat * sum_dyxhat / m) with the group's sums (sync: the
/// exchanged ones and m = sums[C]).
void batchnorm_input_grad(const float* x, const float* dy, const float* relu_out, const BatchNormShape& s,
                          const float* mean, const float* invstd, const float* bsums, const float* sums, const float* w,
                          float* dx, cudaStream_t stream);

}  // namespace dptrain::kernels
