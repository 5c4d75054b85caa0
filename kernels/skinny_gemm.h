// GEMMs of the linear layers at training batch sizes. One side of each product is the batch (tens
// of rows), so the work is a few hundred MFLOP over a weight matrix that is read once, and the time
// is latency and memory traffic. cuBLAS's choices for these shapes ran far from that bound in
// mnist_cnn's step (H200, inside the step's graph: fc1's input gradient 24.7 us, its forward 12.0
// us plus a 4.7 us split-K reduction plus the bias kernel); these tiled kernels are short and
// deterministic. Every output adds its products in k order within a slice of k; split slices are
// added in slice order, and the split count is a function of the shape alone.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "kernels/row_epilogue.h"

namespace dptrain::kernels {

/// A GEMM c[m][n] = sum_k a(m, k) b(k, n), c row-major. a: row-major [m][k], or [k][m] when
/// trans_a; b: row-major [k][n], or [n][k] when trans_b.
struct SkinnyGemm {
  const float* a;
  bool trans_a;
  const float* b;
  bool trans_b;
  float* c;
  int m, n, k;
};

/// Whether skinny_gemm serves g: m, n, k >= 1, k <= INT_MAX / 2, m n <= INT_MAX / 2, n k and m k <= INT_MAX,
/// ceil(m / 64) <= 65535 (grid.y). Any pointers: operands whose rows are a multiple of 4 floats, at a
/// 16-byte aligned address, are staged with 16-byte copies, others with 4-byte ones (checked per call).
bool skinny_gemm_fits(const SkinnyGemm& g);
/// Slices of k the GEMM is split into (1: none).
int skinny_gemm_splits(int m, int n, int k);
/// Floats of `partials` that skinny_gemm needs for any m up to max_m.
size_t skinny_gemm_partials(int max_m, int n, int k);
/// Runs g, then the epilogue. partials: skinny_gemm_partials(g.m, g.n, g.k) floats, or null to
/// leave k unsplit.
void skinny_gemm(const SkinnyGemm& g, const RowEpilogue& epilogue, float* partials, cudaStream_t stream);

}  // namespace dptrain::kernels
