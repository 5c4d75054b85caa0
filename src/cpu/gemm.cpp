#include "cpu/gemm.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <limits>
#include <stdexcept>

namespace dptrain::cpu {

namespace {

blasint to_blas(int64_t v) {
  if (v < 0 || v > std::numeric_limits<blasint>::max()) throw std::length_error("gemm: dimension out of BLAS range");
  return static_cast<blasint>(v);
}

void blas_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
               const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, to_blas(m), to_blas(n),
              to_blas(k), alpha, a, to_blas(lda), b, to_blas(ldb), beta, c, to_blas(ldc));
}

void blas_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const double* a, int64_t lda,
               const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, to_blas(m), to_blas(n),
              to_blas(k), alpha, a, to_blas(lda), b, to_blas(ldb), beta, c, to_blas(ldc));
}

// OpenBLAS must not start its own threads under ours; done once, before the first parallel GEMM.
void keep_blas_single_threaded() {
  static const bool once = [] {
    // OpenBLAS's OpenMP build implements this with omp_set_num_threads: keep our pool's size.
    const int ours = omp_get_max_threads();
    openblas_set_num_threads(1);
    omp_set_num_threads(ours);
    return true;
  }();
  (void)once;
}

// Blocks are multiples of this many rows/columns so the BLAS kernels see full register tiles.
constexpr int64_t kBlockQuantum = 16;
// C is cut into at most this many blocks, however many threads there are: more would pack the
// shared operand again for each block (fc1's 2.4 MB input, for one).
constexpr int64_t kMaxBlocks = 4;
// Below this many multiply-adds a parallel region costs more than it saves.
constexpr int64_t kParallelMinWork = int64_t{1} << 18;

}  // namespace

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
          const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  keep_blas_single_threaded();
  if (m * n * k < kParallelMinWork) {
    blas_gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  // Split the longer side of C; A (or B) is shared read-only by every block. The blocks depend on
  // the shape only, and OpenBLAS computes each the same way whichever thread runs it.
  const bool split_columns = n >= m;
  const int64_t extent = split_columns ? n : m;
  const int64_t quanta = (extent + kBlockQuantum - 1) / kBlockQuantum;
  const int64_t blocks = std::min(kMaxBlocks, quanta);
  const int threads = omp_in_parallel() ? 1 : static_cast<int>(std::min<int64_t>(omp_get_max_threads(), blocks));
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t begin = std::min(extent, quanta * blk / blocks * kBlockQuantum);
    const int64_t end = std::min(extent, quanta * (blk + 1) / blocks * kBlockQuantum);
    if (end <= begin) continue;
    if (split_columns) {
      const T* bb = trans_b ? b + begin * ldb : b + begin;
      blas_gemm(trans_a, trans_b, m, end - begin, k, alpha, a, lda, bb, ldb, beta, c + begin, ldc);
    } else {
      const T* ab = trans_a ? a + begin : a + begin * lda;
      blas_gemm(trans_a, trans_b, end - begin, n, k, alpha, ab, lda, b, ldb, beta, c + begin * ldc, ldc);
    }
  }
}

template <typename T>
void gemm_on_this_thread(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
                         int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  keep_blas_single_threaded();
  blas_gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t,
                          float, float*, int64_t);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t, const double*,
                           int64_t, double, double*, int64_t);
template void gemm_on_this_thread<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t,
                                         const float*, int64_t, float, float*, int64_t);
template void gemm_on_this_thread<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t,
                                          const double*, int64_t, double, double*, int64_t);

}  // namespace dptrain::cpu
