// Row-major GEMM on the host through OpenBLAS's cblas, for float and double: the one place the
// CPU backend calls BLAS, so the layers read as matrix algebra.
//
// Threading: the CPU backend has one thread pool, OpenMP's. OpenBLAS is kept single-threaded:
// two pools that both spin-wait on the same cores (OpenBLAS's pthreads and OpenMP's) slowed a
// 2-core training step threefold. gemm() cuts C into column (or row) blocks, at most four, whose
// edges depend on the shape alone, and runs them on the OpenMP threads; the cut never crosses the
// K dimension. So results are the same on any thread count.
#pragma once

#include <cstdint>

namespace dptrain::cpu {

/// C[m x n] = alpha * op(A) * op(B) + beta * C, row-major; op(X) = X^T when trans_x.
/// lda/ldb/ldc are the row strides of A, B, C as stored. Runs on the OpenMP threads when called
/// outside a parallel region, else on the calling thread (the same blocks either way).
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
          const T* b, int64_t ldb, T beta, T* c, int64_t ldc);

/// The same product as one OpenBLAS call on the calling thread, for callers that spread their
/// own work over the threads (convolutions, sample by sample).
template <typename T>
void gemm_on_this_thread(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
                         int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc);

}  // namespace dptrain::cpu
