#include "layers/cuda/bias_gemm.h"

#include <algorithm>

#include "core/cuda_check.h"

namespace dptrain {

namespace {

CublasLtLayout make_layout(uint64_t rows, uint64_t cols, int64_t ld) {
  cublasLtMatrixLayout_t layout = nullptr;
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout, CUDA_R_32F, rows, cols, ld));
  return CublasLtLayout(layout);
}

}  // namespace

uint32_t BiasGemm::alignment_of(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  return a == 0 ? 16u : static_cast<uint32_t>(std::min<uintptr_t>(16u, a & (~a + 1)));
}

BiasGemm::BiasGemm(int out_features, int in_features, bool relu, bool tf32)
    : out_(out_features), in_(in_features), relu_(relu), tf32_(tf32) {}

// cuBLAS is column-major: it reads the row-major y[n, fo] as y^T[fo, n], W[fo, fi] as W^T[fi, fo] and
// x[n, fi] as x^T[fi, n], so y^T = op(W^T) x^T with op a transpose; the bias runs along y^T's rows.
BiasGemm::Case& BiasGemm::planned(cublasLtHandle_t lt, int n, uint32_t alignment, size_t workspace_bytes) {
  for (Case& c : cases_)
    if (c.n == n && c.alignment == alignment && c.workspace_bytes == workspace_bytes) return c;
  if (desc_.get() == nullptr) {
    cublasLtMatmulDesc_t desc = nullptr;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc, tf32_ ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F, CUDA_R_32F));
    desc_ = CublasLtMatmulDesc(desc);
    const cublasOperation_t transpose = CUBLAS_OP_T, plain = CUBLAS_OP_N;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSA, &transpose, sizeof(transpose)));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSB, &plain, sizeof(plain)));
    const cublasLtEpilogue_t epilogue = relu_ ? CUBLASLT_EPILOGUE_RELU_BIAS : CUBLASLT_EPILOGUE_BIAS;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
    w_ = make_layout(static_cast<uint64_t>(in_), static_cast<uint64_t>(out_), in_);
  }
  Case c;
  c.n = n;
  c.alignment = alignment;
  c.workspace_bytes = workspace_bytes;
  c.x = make_layout(static_cast<uint64_t>(in_), static_cast<uint64_t>(n), in_);
  c.y = make_layout(static_cast<uint64_t>(out_), static_cast<uint64_t>(n), out_);
  cublasLtMatmulPreference_t raw = nullptr;
  CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&raw));
  const CublasLtPreference pref(raw);
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes,
                                                    sizeof(workspace_bytes)));
  for (const auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                          CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &alignment, sizeof(alignment)));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  // NOT_SUPPORTED: no algorithm for this case; the caller runs the GEMM and the bias kernel.
  const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(lt, desc_, w_, c.x, c.y, c.y, pref, 1, &result, &found);
  if (status != CUBLAS_STATUS_NOT_SUPPORTED) CUBLAS_CHECK(status);
  c.served = status == CUBLAS_STATUS_SUCCESS && found > 0 && result.state == CUBLAS_STATUS_SUCCESS &&
             result.workspaceSize <= workspace_bytes;
  c.algo = result.algo;
  cases_.push_back(std::move(c));
  return cases_.back();
}

bool BiasGemm::run(cublasLtHandle_t lt, const float* x, const float* w, const float* b, float* y, int n,
                   void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  const uint32_t alignment =
      std::min({alignment_of(x), alignment_of(w), alignment_of(b), alignment_of(y), alignment_of(workspace)});
  const Case& c = planned(lt, n, alignment, workspace_bytes);
  if (!c.served) return false;
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &b, sizeof(b)));
  constexpr float kOne = 1.0f, kZero = 0.0f;
  CUBLAS_CHECK(cublasLtMatmul(lt, desc_, &kOne, w, w_, x, c.x, &kZero, y, c.y, y, c.y, &c.algo, workspace,
                              workspace_bytes, stream));
  return true;
}

}  // namespace dptrain
