// Block tile 64 x 64, 256 threads of 4 x 4 outputs, k in steps of 16 staged through shared memory
// by cp.async (16-byte copies where rows allow), kStages steps in flight (a step's products take
// less time than a load's latency). Each operand is staged in its global layout, so that one copy
// moves four neighbours: a row-major [rows][k] operand as [row][k] (pitch 20), a [k][rows] one as
// [k][row] (pitch 68).
// A thread reads four k at a time of its four rows and four columns (float4s) for 64 FMAs; its
// columns are neighbours, except for a [col][k] B, where they are 16 apart so that the eight
// lanes of a float4 phase read distinct banks.
#include <algorithm>
#include <climits>
#include <cstdint>
#include <string>

#include "core/cuda_check.h"
#include "kernels/cp_async.cuh"
#include "kernels/skinny_gemm.h"

namespace dptrain::kernels {

namespace {

constexpr int kTile = 64, kDepth = 16, kThreads = 256, kStages = 4;
constexpr int kRowPitch = kDepth + 4;  // [row][k] staging
constexpr int kKPitch = kTile + 4;     // [k][row] staging
constexpr int kOperandFloats = kTile * kRowPitch > kDepth * kKPitch ? kTile * kRowPitch : kDepth * kKPitch;
// Blocks a split GEMM aims at: about one wave on current GPUs. A constant, so that the split (and
// the rounding) is the same on every GPU.
constexpr int kTargetBlocks = 128;
constexpr int kMinSlice = 32;  // k per slice at least: two steps

/// One thread's 16-byte share of staging an operand: where it reads (at the block's first k) and
/// writes, how far a step moves the read, and the bounds it checks. wide: one 16-byte copy (rows of
/// 16-byte multiples, aligned); else four 4-byte ones, each checked (fc2's 10 outputs).
struct OperandCopy {
  const float* base;
  const float* src;
  long step;     // floats between consecutive steps' reads
  int dst;       // offset in the stage's buffer
  int kk;        // k of the copy within a step
  int valid;     // of its 4 elements, how many exist along the rows (0 or 4 for a [rows][k] operand)
  bool along_k;  // its 4 elements are neighbours in k ([rows][k]), else in rows ([k][rows])
  bool wide;

  // kAlongK: global rows run along k ([rows][k]); else [k][rows]. ld: the global row length.
  template <bool kAlongK>
  __device__ static OperandCopy make(const float* base, int tid, int r0, int rows, int k0, int ld) {
    const bool wide = ld % 4 == 0 && reinterpret_cast<uintptr_t>(base) % 16 == 0;
    if constexpr (kAlongK) {
      const int r = tid / (kDepth / 4), kk = tid % (kDepth / 4) * 4;
      return {base, base + static_cast<long>(r0 + r) * ld + k0 + kk, kDepth, r * kRowPitch + kk, kk,
              r0 + r < rows ? 4 : 0, true, wide};
    } else {
      const int kk = tid / (kTile / 4), r = tid % (kTile / 4) * 4;
      return {base, base + static_cast<long>(k0 + kk) * ld + r0 + r, static_cast<long>(kDepth) * ld,
              kk * kKPitch + r, kk, max(0, min(4, rows - r0 - r)), false, wide};
    }
  }
  __device__ void issue(float* buf, int step_index, int k_step0, int k1) const {
    const float* at = src + step_index * step;
    if (wide) {  // 4 | rows: a run of 4 is all there or all missing
      const bool ok = valid > 0 && k_step0 + kk < k1;
      cp_async16(buf + dst, ok ? at : base, ok);
      return;
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const bool ok = along_k ? valid > 0 && k_step0 + kk + e < k1 : e < valid && k_step0 + kk < k1;
      cp_async4(buf + dst + e, ok ? at + e : base, ok);
    }
  }
};

// Block (column tile, row tile, slice of k). partials: write the slice's sums to
// partials + slice * m * n (the epilogue runs after the slices are added); null: apply it here.
template <bool kTransA, bool kTransB>
__global__ void __launch_bounds__(kThreads) skinny_gemm_kernel(SkinnyGemm g, RowEpilogue epilogue, int slice,
                                                              float* __restrict__ partials) {
  __shared__ __align__(16) float as[kStages][kOperandFloats];
  __shared__ __align__(16) float bs[kStages][kOperandFloats];
  const int m0 = blockIdx.y * kTile, n0 = blockIdx.x * kTile;
  const int k0 = blockIdx.z * slice, k1 = min(g.k, k0 + slice), steps = (k1 - k0 + kDepth - 1) / kDepth;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const OperandCopy a_copy = OperandCopy::make<!kTransA>(g.a, tid, m0, g.m, k0, kTransA ? g.m : g.k);
  const OperandCopy b_copy = OperandCopy::make<kTransB>(g.b, tid, n0, g.n, k0, kTransB ? g.k : g.n);
  const auto col_of = [&](int j) { return kTransB ? tx + 16 * j : tx * 4 + j; };
  const auto stage = [&](int step) {
    a_copy.issue(as[step % kStages], step, k0 + step * kDepth, k1);
    b_copy.issue(bs[step % kStages], step, k0 + step * kDepth, k1);
  };

  float acc[4][4] = {};
#pragma unroll
  for (int step = 0; step < kStages - 1; ++step) {
    if (step < steps) stage(step);
    cp_async_commit();
  }
  for (int step = 0; step < steps; ++step) {
    cp_async_wait<kStages - 2>();  // this thread's copies of `step` have landed
    __syncthreads();               // everyone's have, and everyone is done with step - 1's buffer
    if (step + kStages - 1 < steps) stage(step + kStages - 1);  // into step - 1's buffer
    cp_async_commit();
    const float* sa = as[step % kStages];
    const float* sb = bs[step % kStages];
#pragma unroll
    for (int k4 = 0; k4 < kDepth; k4 += 4) {
      float a[4][4], b[4][4];  // a[i][q]: row i at k k4 + q; b[q][j]
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        if constexpr (kTransA) {
          const float4 v = *reinterpret_cast<const float4*>(sa + (k4 + t) * kKPitch + ty * 4);
          a[0][t] = v.x, a[1][t] = v.y, a[2][t] = v.z, a[3][t] = v.w;
        } else {
          const float4 v = *reinterpret_cast<const float4*>(sa + (ty * 4 + t) * kRowPitch + k4);
          a[t][0] = v.x, a[t][1] = v.y, a[t][2] = v.z, a[t][3] = v.w;
        }
        if constexpr (kTransB) {
          const float4 v = *reinterpret_cast<const float4*>(sb + col_of(t) * kRowPitch + k4);
          b[0][t] = v.x, b[1][t] = v.y, b[2][t] = v.z, b[3][t] = v.w;
        } else {
          const float4 v = *reinterpret_cast<const float4*>(sb + (k4 + t) * kKPitch + tx * 4);
          b[t][0] = v.x, b[t][1] = v.y, b[t][2] = v.z, b[t][3] = v.w;
        }
      }
#pragma unroll
      for (int q = 0; q < 4; ++q)
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i][q], b[q][j], acc[i][j]);
    }
  }

#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int row = m0 + ty * 4 + i;
    if (row >= g.m) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int col = n0 + col_of(j);
      if (col >= g.n) continue;
      if (partials != nullptr)
        partials[(static_cast<long>(blockIdx.z) * g.m + row) * g.n + col] = acc[i][j];
      else
        g.c[static_cast<long>(row) * g.n + col] = apply_epilogue(acc[i][j], row, col, g.n, epilogue);
    }
  }
}

// kReduceLanes lanes per output: lane l adds slices l, l + kReduceLanes, ... in order (independent
// loads in flight), then a shuffle tree adds the lanes; then the epilogue. A fixed order.
constexpr int kReduceLanes = 8;

__global__ void skinny_gemm_reduce_kernel(const float* __restrict__ partials, int splits, SkinnyGemm g,
                                          RowEpilogue epilogue) {
  const long total = static_cast<long>(g.m) * g.n;
  const long i = (blockIdx.x * long{blockDim.x} + threadIdx.x) / kReduceLanes;
  const int lane = threadIdx.x % kReduceLanes;
  float v = 0.0f;
  if (i < total)
#pragma unroll 4
    for (int s = lane; s < splits; s += kReduceLanes) v += partials[s * total + i];
#pragma unroll
  for (int off = kReduceLanes / 2; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off, kReduceLanes);
  if (lane == 0 && i < total) {
    const int row = static_cast<int>(i / g.n);
    g.c[i] = apply_epilogue(v, row, static_cast<int>(i - static_cast<long>(row) * g.n), g.n, epilogue);
  }
}

int tiles(int extent) { return (extent + kTile - 1) / kTile; }

/// k per slice: a multiple of the staging depth.
int slice_for(int k, int splits) { return ((k + splits - 1) / splits + kDepth - 1) / kDepth * kDepth; }

template <bool kTransA, bool kTransB>
void launch(const SkinnyGemm& g, const RowEpilogue& epilogue, int splits, float* partials, cudaStream_t stream) {
  const int slice = slice_for(g.k, splits);
  const dim3 grid(static_cast<unsigned>(tiles(g.n)), static_cast<unsigned>(tiles(g.m)), static_cast<unsigned>(splits));
  skinny_gemm_kernel<kTransA, kTransB><<<grid, kThreads, 0, stream>>>(g, epilogue, slice,
                                                                       splits > 1 ? partials : nullptr);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

bool skinny_gemm_fits(const SkinnyGemm& g) {
  // k <= INT_MAX / 2: a slice's end (k0 + slice, slices rounded up to kDepth) stays an int.
  return g.m > 0 && g.n > 0 && g.k > 0 && g.k <= INT_MAX / 2 && static_cast<long>(g.m) * g.n <= INT_MAX / 2 &&
         static_cast<long>(g.n) * g.k <= INT_MAX && static_cast<long>(g.m) * g.k <= INT_MAX && tiles(g.m) <= 65535;
}

int skinny_gemm_splits(int m, int n, int k) {
  const int blocks = tiles(m) * tiles(n);
  const int splits = std::max(1, std::min(kTargetBlocks / blocks, k / kMinSlice));
  return (k + slice_for(k, splits) - 1) / slice_for(k, splits);  // no empty slice after rounding
}

size_t skinny_gemm_partials(int max_m, int n, int k) {
  size_t most = 0;
  for (int m = 1; m <= max_m; ++m) {
    const int splits = skinny_gemm_splits(m, n, k);
    if (splits > 1) most = std::max(most, static_cast<size_t>(splits) * m * n);
  }
  return most;
}

void skinny_gemm(const SkinnyGemm& g, const RowEpilogue& epilogue, float* partials, cudaStream_t stream) {
  if (!skinny_gemm_fits(g))
    throw CudaError("skinny_gemm: a " + std::to_string(g.m) + "x" + std::to_string(g.n) + "x" + std::to_string(g.k) +
                    " GEMM is too large for its 32-bit indexing");
  const int splits = partials != nullptr ? skinny_gemm_splits(g.m, g.n, g.k) : 1;
  if (g.trans_a && g.trans_b) launch<true, true>(g, epilogue, splits, partials, stream);
  if (g.trans_a && !g.trans_b) launch<true, false>(g, epilogue, splits, partials, stream);
  if (!g.trans_a && g.trans_b) launch<false, true>(g, epilogue, splits, partials, stream);
  if (!g.trans_a && !g.trans_b) launch<false, false>(g, epilogue, splits, partials, stream);
  if (splits == 1) return;
  const long total = static_cast<long>(g.m) * g.n;
  constexpr int kReduceThreads = 256;
  const long blocks = (total * kReduceLanes + kReduceThreads - 1) / kReduceThreads;  // every lane of a warp shuffles
  skinny_gemm_reduce_kernel<<<static_cast<unsigned>(blocks), kReduceThreads, 0, stream>>>(partials, splits, g, epilogue);
  CUDA_CHECK_LAUNCH();
}

}  // namespace dptrain::kernels
