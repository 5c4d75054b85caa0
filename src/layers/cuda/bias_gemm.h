// A linear layer's forward in one cuBLASLt call: y[n, fo] = x[n, fi] W[fo, fi]^T + b, with the ReLU
// after it when the layer absorbed one (cuBLASLt's BIAS and RELU_BIAS epilogues). Before, cuBLAS's
// GEMM (often a split-K GEMM and its reduce) was followed by dptrain's bias kernel: one launch more
// per layer on the step's critical path, where the batch is past the skinny GEMMs or in TF32
// (lenet5 at batch 257: three bias kernels of 1.3 to 1.5 us, each with a launch gap).
//
// The algorithm is cuBLASLt's heuristic first choice, as cublasSgemm takes it, for the rows, the
// math (float32, or TF32 tensor cores) and the alignment of the four pointers (the parameters are
// views into one flat buffer, so a layer's weights need not be 16-byte aligned). The query runs on
// the host, once per (rows, alignment): LinearCuda::plan prepares each planned batch size before a
// step is captured; a case not prepared is queried at its first run.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "core/cuda_raii.h"

namespace dptrain {

class BiasGemm {
 public:
  BiasGemm(int out_features, int in_features, bool relu, bool tf32);
  BiasGemm(BiasGemm&&) noexcept = default;
  BiasGemm& operator=(BiasGemm&&) noexcept = default;

  /// Chooses cuBLASLt's algorithm for n rows whose four pointers and workspace share `alignment`
  /// bytes (see alignment_of); returns whether one serves. Host only; set-up, not the hot path.
  bool prepare(cublasLtHandle_t lt, int n, uint32_t alignment, size_t workspace_bytes) {
    return planned(lt, n, alignment, workspace_bytes).served;
  }
  /// The largest power of two, at most 16, that divides the address (null: 16).
  static uint32_t alignment_of(const void* p);

  /// Queues y = act(x W^T + b) for n rows on `stream`. Returns false, having queued nothing, where
  /// cuBLASLt offers no algorithm for the case (the caller then runs the GEMM and the bias apart).
  bool run(cublasLtHandle_t lt, const float* x, const float* w, const float* b, float* y, int n, void* workspace,
           size_t workspace_bytes, cudaStream_t stream);

 private:
  /// One planned case: its row count, the pointers' common alignment and cuBLASLt's choice.
  struct Case {
    int n = 0;
    uint32_t alignment = 0;
    size_t workspace_bytes = 0;
    CublasLtLayout x, y;
    cublasLtMatmulAlgo_t algo{};
    bool served = false;
  };
  Case& planned(cublasLtHandle_t lt, int n, uint32_t alignment, size_t workspace_bytes);

  int out_ = 0, in_ = 0;
  bool relu_ = false, tf32_ = false;
  CublasLtMatmulDesc desc_;  // created at the first run (cuBLAS is loaded by then)
  CublasLtLayout w_;
  std::vector<Case> cases_;
};

}  // namespace dptrain
