// RowEpilogue: what a linear forward applies to each output after its sum (the skinny GEMMs, the
// narrow classifier kernels): the bias, an absorbed ReLU, an absorbed dropout.
#pragma once

#include "kernels/fused_dropout.h"

namespace dptrain::kernels {

/// Applied to c[row][col] of a row-major [rows][n] output: + bias[col], ReLU, times the dropout
/// factor of element row * n + col (kernels/fused_dropout.h). Default: nothing.
struct RowEpilogue {
  const float* bias = nullptr;
  bool relu = false;
  FusedDropout dropout;
};

#ifdef __CUDACC__
__device__ __forceinline__ float apply_epilogue(float v, int row, int col, int n, const RowEpilogue& e) {
  if (e.bias != nullptr) v += __ldg(e.bias + col);
  if (e.relu) v = v > 0.0f ? v : 0.0f;
  return v * dropout_factor(e.dropout, static_cast<long>(row) * n + col);
}
#endif

}  // namespace dptrain::kernels
