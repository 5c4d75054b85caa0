// Which of cuDNN's convolution algorithms a run accepts, decided from the algorithm itself, so that
// a recorded choice can be confirmed without cuDNN's heuristic query. That query finalises an engine
// for every algorithm of the direction and costs 80 to 180 ms the first time a process makes it (an
// H100, cuDNN 9.14: one engine's finalisation alone took 82 ms); a warm plan that confirms each
// recorded algorithm with this table and one workspace query pays none of it.
// - deterministic: as cuDNN documents each algorithm (the backward ones that accumulate with atomics
//   are not); ConvRulesGpu.DeterminismTableMatchesCudnnHeuristics holds it to what cuDNN reports.
// - exact (train.exact_convolutions): no FFT or Winograd algorithm, whose transforms round
//   differently from a sum of products. Their error is about 1e-6 relative, harmless to training,
//   but under Adadelta it grows to 6e-4 of the parameters in 10 steps against the CPU reference.
// - never: cuDNN's non-fused Winograd, whose outputs on 5x5 kernels err by 3e-4 to 1.6e-3 relative
//   in both maths (the shape sweep on an H200, cuDNN 9.14), past float32's tolerance (1e-4) and
//   close to TF32's (2e-3). The planning check would drop it anyway, with a warning in every run.
//   On 3x3 filters it is within tolerance (4.7e-5 at worst over the long sweep's 2,000 shapes) and
//   is mnist_cnn's fastest float32 forward (8 us of the step), but offered there it moved the default
//   14-epoch run to 99.07% and `GpuCpuDriftStaysRoundingSized`'s SGD run past 1e-4 (an H100,
//   2026-12-06): not offered on any filter.
#pragma once

#include <cudnn.h>

#include <cstddef>
#include <optional>
#include <type_traits>

#include "core/cuda_context.h"
#include "layers/cuda/conv_executor.h"

namespace dptrain {

struct AlgoRules {
  bool deterministic = true;
  bool exact = false;
};

inline AlgoRules algo_rules(const CudaOptions& o) { return {o.deterministic, o.exact_convolutions}; }

inline bool transforms(cudnnConvolutionFwdAlgo_t a) {
  return a == CUDNN_CONVOLUTION_FWD_ALGO_FFT || a == CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING ||
         a == CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD || a == CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED;
}
inline bool transforms(cudnnConvolutionBwdDataAlgo_t a) {
  return a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT || a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING ||
         a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD || a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED;
}
inline bool transforms(cudnnConvolutionBwdFilterAlgo_t a) {
  return a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT || a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING ||
         a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED;
}

inline bool inexact(cudnnConvolutionFwdAlgo_t a) { return a == CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED; }
inline bool inexact(cudnnConvolutionBwdDataAlgo_t a) { return a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED; }
inline bool inexact(cudnnConvolutionBwdFilterAlgo_t a) {
  return a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED;
}

inline bool deterministic(cudnnConvolutionFwdAlgo_t) { return true; }
inline bool deterministic(cudnnConvolutionBwdDataAlgo_t a) { return a != CUDNN_CONVOLUTION_BWD_DATA_ALGO_0; }
inline bool deterministic(cudnnConvolutionBwdFilterAlgo_t a) {
  return a != CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0 && a != CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3;
}

inline int algo_count(cudnnConvolutionFwdAlgo_t) { return CUDNN_CONVOLUTION_FWD_ALGO_COUNT; }
inline int algo_count(cudnnConvolutionBwdDataAlgo_t) { return CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT; }
inline int algo_count(cudnnConvolutionBwdFilterAlgo_t) { return CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT; }

/// Whether the run's rules accept algorithm `a` of a direction, whatever its workspace.
template <typename AlgoEnum>
bool rules_allow(AlgoEnum a, AlgoRules rules) {
  return !inexact(a) && (!rules.deterministic || deterministic(a)) && (!rules.exact || !transforms(a));
}

/// A heuristic or Find result the rules accept, whatever its workspace.
template <typename Perf>
bool eligible(const Perf& r, AlgoRules rules) {
  return r.status == CUDNN_STATUS_SUCCESS && rules_allow(r.algo, rules) &&
         (!rules.deterministic || r.determinism == CUDNN_DETERMINISTIC);
}

/// The same, within the workspace cap.
template <typename Perf>
bool allowed(const Perf& r, AlgoRules rules) {
  return eligible(r, rules) && r.memory <= kMaxConvWorkspace;
}

/// cuDNN's workspace for algorithm `algo` on batch `b`, or nothing if cuDNN does not support the
/// algorithm there. One engine is finalised, not every algorithm's.
template <typename AlgoEnum>
std::optional<size_t> cudnn_workspace(const ConvExecutor& exec, const ConvBatch& b, AlgoEnum algo, cudnnHandle_t h) {
  size_t bytes = 0;
  cudnnStatus_t status;
  if constexpr (std::is_same_v<AlgoEnum, cudnnConvolutionFwdAlgo_t>)
    status = cudnnGetConvolutionForwardWorkspaceSize(h, b.x, exec.filter_desc(), exec.conv_desc(), b.y, algo, &bytes);
  else if constexpr (std::is_same_v<AlgoEnum, cudnnConvolutionBwdDataAlgo_t>)
    status =
        cudnnGetConvolutionBackwardDataWorkspaceSize(h, exec.filter_desc(), b.y, exec.conv_desc(), b.x, algo, &bytes);
  else
    status = cudnnGetConvolutionBackwardFilterWorkspaceSize(h, b.x, b.y, exec.conv_desc(), exec.filter_desc(), algo,
                                                            &bytes);
  if (status != CUDNN_STATUS_SUCCESS) return std::nullopt;
  return bytes;
}

}  // namespace dptrain
