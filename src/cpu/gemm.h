// Row-major GEMM through OpenBLAS: C[m x n] = alpha * op(A) op(B) + beta * C, op = transpose or not.
#pragma once

namespace dptrain::cpu {

template <typename T>
void gemm(bool trans_a, bool trans_b, int m, int n, int k, T alpha, const T* a, int lda, const T* b, int ldb, T beta,
          T* c, int ldc);

}  // namespace dptrain::cpu
