// cpu::gemm against a plain triple loop in double, for every transpose combination, with C large
// enough to be cut into blocks along rows and along columns, and with beta accumulating.
#include <gtest/gtest.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "cpu/gemm.h"
#include "gradient_checker.h"

namespace dptrain {
namespace {

using testing::random_vector;

/// Row-major op(X)[r][c] of X stored with row stride ld.
double at(const std::vector<float>& x, bool trans, int64_t ld, int64_t r, int64_t c) {
  return trans ? x[static_cast<size_t>(c * ld + r)] : x[static_cast<size_t>(r * ld + c)];
}

void check(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float beta, bool on_this_thread) {
  const int64_t lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 5, ldc = n + 2;
  auto floats = [](size_t count, uint32_t seed) {
    const std::vector<double> v = random_vector(count, seed);
    return std::vector<float>(v.begin(), v.end());
  };
  const std::vector<float> a = floats(static_cast<size_t>((ta ? k : m) * lda), 1);
  const std::vector<float> b = floats(static_cast<size_t>((tb ? n : k) * ldb), 2);
  const std::vector<float> c0 = floats(static_cast<size_t>(m * ldc), 3);
  std::vector<float> c = c0;
  if (on_this_thread) cpu::gemm_on_this_thread<float>(ta, tb, m, n, k, 0.5f, a.data(), lda, b.data(), ldb, beta, c.data(), ldc);
  else cpu::gemm<float>(ta, tb, m, n, k, 0.5f, a.data(), lda, b.data(), ldb, beta, c.data(), ldc);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < ldc; ++j) {
      const size_t idx = static_cast<size_t>(i * ldc + j);
      if (j >= n) {
        EXPECT_EQ(c[idx], c0[idx]) << "padding of row " << i << " was written";
        continue;
      }
      double want = beta * double(c0[idx]);
      for (int64_t p = 0; p < k; ++p) want += 0.5 * at(a, ta, lda, i, p) * at(b, tb, ldb, p, j);
      ASSERT_NEAR(c[idx], want, 1e-4) << "ta " << ta << " tb " << tb << " m " << m << " n " << n << " at " << i << "," << j;
    }
}

TEST(Gemm, MatchesTripleLoopCutByRowsAndByColumns) {
  // (m, n, k): columns cut (n >= m), rows cut (m > n), a ragged last block, and one too small to cut.
  for (auto [m, n, k] : {std::tuple<int64_t, int64_t, int64_t>{33, 150, 80}, {170, 40, 64}, {90, 10, 700}, {7, 9, 5}})
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        check(ta, tb, m, n, k, 0.0f, false);
        check(ta, tb, m, n, k, 1.0f, false);
        check(ta, tb, m, n, k, 0.0f, true);
      }
}

}  // namespace
}  // namespace dptrain
