#include "kernels/lenet5_step.h"

#include <cooperative_groups.h>
#include <cuda_pipeline_primitives.h>

#include <string>

#include "core/cuda_check.h"
#include "kernels/normalized_pixel.cuh"
#include "kernels/softmax_row.cuh"

namespace dptrain::kernels {

namespace {

namespace cg = cooperative_groups;

constexpr int kIn = 28, kPadIn = 32;  // conv1: 1 -> 6, 5x5, padding 2: 28x28, pooled to 14x14
constexpr int kC1 = 6, kP1 = 14, kQ1 = kP1 * kP1;
constexpr int kC2 = 16, kP2 = 5;      // conv2: 6 -> 16, 5x5: 14 -> 10, pooled to 5x5
constexpr int kF0 = kC2 * kP2 * kP2;  // 400
constexpr int kF1 = 120, kF2 = 84, kF3 = 10;

// The parameters packed densely, in state_dict order: the partial sums' layout (the model's
// buffers place each tensor at Lenet5Step::offsets).
constexpr int kW1 = 0, kB1 = kW1 + kC1 * 25, kW2 = kB1 + kC1, kB2 = kW2 + kC2 * kC1 * 25, kW3 = kB2 + kC2,
              kB3 = kW3 + kF1 * kF0, kW4 = kB3 + kF1, kB4 = kW4 + kF2 * kF1, kW5 = kB4 + kF2, kB5 = kW5 + kF3 * kF2,
              kParams = kB5 + kF3;  // 61,706
constexpr int kConvParams = kW3;    // 2,572: both convolutions' weights and biases
constexpr int kLinParams = kParams - kConvParams;
constexpr int kLinStride = (kLinParams + 3) / 4 * 4;  // a cluster's partial sums, 16-byte aligned
/// Where tensor t starts in that layout (t = kLenet5Tensors: the end).
__host__ __device__ constexpr int dense_start(int t) {
  constexpr int starts[kLenet5Tensors + 1] = {kW1, kB1, kW2, kB2, kW3, kB3, kW4, kB4, kW5, kB5, kParams};
  return starts[t];
}
constexpr bool dense_sizes_match() {
  for (int t = 0; t < kLenet5Tensors; ++t)
    if (dense_start(t + 1) - dense_start(t) != kLenet5TensorSizes[static_cast<size_t>(t)]) return false;
  return true;
}
static_assert(dense_sizes_match(), "kLenet5TensorSizes and the dense layout disagree");

// The kernels' view of Lenet5Step: plain arrays only.
struct Args {
  const float* params;
  int off[kLenet5Tensors];
  const float* x;
  const int32_t* labels;
  StepGather gather;  // gather.images null: x and labels hold the batch already
  int n;
  int head_per;  // samples a head cluster takes (the last may take fewer): HeadPlan
  float grad_scale;
  float label_smoothing;
  float* grads;
  double* sums;
  float *p1, *p2, *dp2, *partial_conv, *partial_lin, *correct;
  double* losses;
  unsigned char *a1, *a2;
};

// ---- 1. conv forward: a block a sample
constexpr int kConvThreads = 512;
struct ConvForwardSmem {
  float w1[kC1 * 25], b1[kC1], w2[kC2 * kC1 * 25], b2[kC2];
  float x[kPadIn * kPadIn];  // the image with conv1's padding (2 rows and columns of zeros, 2 spare)
  float p1[kC1 * kQ1];
  float4 part[2][kF0];  // conv2's four sums per pooled output, over each half of the input channels
};

// A pooled output's four sums: the 5x5 filter over a 6x6 patch (rows `stride` apart), one input channel.
__device__ __forceinline__ void pooled_sums(const float* patch, int stride, const float* w, float (&acc)[4]) {
#pragma unroll
  for (int ky = 0; ky < 6; ++ky) {
    float row[6];
#pragma unroll
    for (int k = 0; k < 6; ++k) row[k] = patch[ky * stride + k];
#pragma unroll
    for (int kx = 0; kx < 5; ++kx) {
      if (ky < 5) {
        const float wv = w[ky * 5 + kx];
        acc[0] += wv * row[kx];
        acc[1] += wv * row[kx + 1];
      }
      if (ky > 0) {
        const float wv = w[(ky - 1) * 5 + kx];
        acc[2] += wv * row[kx];
        acc[3] += wv * row[kx + 1];
      }
    }
  }
}

// The first maximum of four sums (PyTorch's max pooling) and its index.
__device__ __forceinline__ float pool_max(const float (&acc)[4], int& arg) {
  arg = 0;
  float m = acc[0];
#pragma unroll
  for (int k = 1; k < 4; ++k)
    if (acc[k] > m) m = acc[k], arg = k;
  return m;
}

__global__ void __launch_bounds__(kConvThreads) lenet5_conv_forward_kernel(const Args a) {
  extern __shared__ float4 smem4[];
  ConvForwardSmem& sm = *reinterpret_cast<ConvForwardSmem*>(smem4);
  const int tid = threadIdx.x;
  const size_t s = blockIdx.x;
  for (int i = tid; i < kC1 * 25; i += kConvThreads) sm.w1[i] = a.params[a.off[0] + i];
  for (int i = tid; i < kC1; i += kConvThreads) sm.b1[i] = a.params[a.off[1] + i];
  for (int i = tid; i < kC2 * kC1 * 25; i += kConvThreads) sm.w2[i] = a.params[a.off[2] + i];
  for (int i = tid; i < kC2; i += kConvThreads) sm.b2[i] = a.params[a.off[3] + i];
  if (a.gather.images != nullptr) {
    // The sample from the dataset, normalised as the gather kernel does, and kept in x and the
    // labels for conv backward and the head (the launches after this one).
    const uint32_t row = a.gather.order[a.gather.step->info.first_sample + s];
    const uint8_t* pixels = a.gather.images + static_cast<size_t>(row) * (kIn * kIn);
    float* image = a.gather.x + s * kIn * kIn;
    for (int q = tid; q < kPadIn * kPadIn; q += kConvThreads) {
      const int y = q / kPadIn - 2, x = q % kPadIn - 2;
      float v = 0.0f;
      if (y >= 0 && y < kIn && x >= 0 && x < kIn) {
        v = normalized_pixel(static_cast<float>(pixels[y * kIn + x]), a.gather.mean, a.gather.std);
        image[y * kIn + x] = v;
      }
      sm.x[q] = v;
    }
    if (tid == 0) a.gather.y[s] = a.gather.labels[row];
  } else {
    for (int q = tid; q < kPadIn * kPadIn; q += kConvThreads) {
      const int y = q / kPadIn - 2, x = q % kPadIn - 2;
      sm.x[q] = (y >= 0 && y < kIn && x >= 0 && x < kIn) ? a.x[s * kIn * kIn + y * kIn + x] : 0.0f;
    }
  }
  __syncthreads();
  // conv1 + ReLU + pooling: a pooled output a thread, the channel fastest: a warp's lanes read a few
  // patches (broadcast) and six filters (distinct banks), where neighbouring positions' patches
  // two columns apart would share banks.
  for (int i = tid; i < kC1 * kQ1; i += kConvThreads) {
    const int c = i % kC1, q = i / kC1, py = q / kP1, px = q % kP1, r = c * kQ1 + q;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    pooled_sums(sm.x + 2 * py * kPadIn + 2 * px, kPadIn, sm.w1 + c * 25, acc);
    int arg;
    const float v = fmaxf(pool_max(acc, arg) + sm.b1[c], 0.0f);
    sm.p1[r] = v;
    a.p1[s * (kC1 * kQ1) + r] = v;
    a.a1[s * (kC1 * kQ1) + r] = static_cast<unsigned char>(arg);
  }
  __syncthreads();
  // conv2: a pooled output's four sums over half the input channels a thread (800 threads' work),
  // the output channel fastest (16 filters in distinct banks, two patches a warp).
  for (int i = tid; i < 2 * kF0; i += kConvThreads) {
    const int h = i / kF0, o = i % kC2, q = (i % kF0) / kC2, py = q / 5, px = q % 5, r = o * 25 + q;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll 1
    for (int c = 3 * h; c < 3 * h + 3; ++c)
      pooled_sums(sm.p1 + c * kQ1 + 2 * py * kP1 + 2 * px, kP1, sm.w2 + (o * kC1 + c) * 25, acc);
    sm.part[h][r] = make_float4(acc[0], acc[1], acc[2], acc[3]);
  }
  __syncthreads();
  for (int r = tid; r < kF0; r += kConvThreads) {
    const float4 u = sm.part[0][r], v = sm.part[1][r];
    const float acc[4] = {u.x + v.x, u.y + v.y, u.z + v.z, u.w + v.w};
    int arg;
    a.p2[s * kF0 + r] = fmaxf(pool_max(acc, arg) + sm.b2[r / 25], 0.0f);
    a.a2[s * kF0 + r] = static_cast<unsigned char>(arg);
  }
}

// ---- 2. the linear head: a cluster of 8 blocks per tile of 16 samples (24 from 241 to 360)
constexpr int kCluster = 8, kHeadThreads = 512;
constexpr int kNarrowTile = 16, kWideTile = 24;
static_assert(kNarrowTile % 8 == 0 && kWideTile % 8 == 0, "the forward warps take eight samples each");
// How many clusters of 8 an H100 or H200 places on SMs of their own (its GPCs; the occupancy query
// gives 30 at two blocks an SM). Past it clusters share SMs and the head slows by half (24.4 us at
// 257 and 256 where 200 take 16.8, H200), so from 241 to 360 samples the head runs this many
// clusters of up to 24 samples, one block an SM. A constant, not a query: the plan, and so the
// order of the sums, depend on n alone.
constexpr int kLoneClusters = 15;
struct Slice {
  int begin, end;
};
__host__ __device__ constexpr Slice slice(int total, int k) {
  return {k * total / kCluster, (k + 1) * total / kCluster};
}
constexpr int max_slice(int total) {
  int m = 0;
  for (int k = 0; k < kCluster; ++k)
    m = slice(total, k).end - slice(total, k).begin > m ? slice(total, k).end - slice(total, k).begin : m;
  return m;
}
constexpr int kR1 = max_slice(kF1), kK1 = max_slice(kF0);  // fc1: 15 rows, 50 columns a block
constexpr int kR2 = max_slice(kF2), kK2 = max_slice(kF1);  // fc2: 11, 15
static_assert(kF0 % (2 * kCluster) == 0 && kF1 % kCluster == 0, "fc1's and fc2's column slices are all alike");
static_assert(kF0 % 4 == 0 && kF1 % 4 == 0 && kF2 % 4 == 0, "the weight gradients read their inputs as float4");
// The input gradients' split of the sum over j, in parts added in order.
constexpr int kInputGradParts = 4;
// Once fc1's forward is done its rows' space holds what comes after: the input gradients' partial
// sums, fc3's whole weight and bias (every block runs fc3 and the loss for all its samples alike,
// so fc2's input gradient needs no exchange), and the logits (then dL/dlogits).
template <int kTile>
struct HeadArena {
  static constexpr int kPartsAt = 0, kW5At = kInputGradParts * kTile * kK1, kB5At = kW5At + kF3 * kF2,
                       kLogitsAt = kB5At + kF3 + 2, kEnd = kLogitsAt + kTile * kF3;
  static_assert(kEnd <= kR1 * kF0, "the second phase fits where fc1's rows were");
  static_assert(kLogitsAt % 4 == 0 && kW5At % 4 == 0, "fc3's weight and the logits are 16-byte aligned");
};
static_assert(kF1 * kF0 % 4 == 0 && kF2 * kF1 % 4 == 0 && kF3 * kF2 % 4 == 0 && kK1 % 2 == 0,
              "the weights stage in 16-byte pieces, fc1's columns in 8-byte pairs");
// Activations are [sample][feature]; the gradients between layers are [feature][sample], so a
// thread reads four samples' values as one float4. A tile of 16 makes 110 KB (two blocks an SM);
// of 24, 136 KB (one).
template <int kTile>
struct HeadSmem {
  alignas(16) float w1r[kR1 * kF0];  // fc1's rows; once its forward is done, the arena above
  alignas(16) float w1c[kF1 * kK1];
  float b1r[kR1 + 1];
  alignas(16) float w2r[kR2 * kF1];
  float b2r[kR2 + 1], w2c[kF2 * kK2];
  alignas(16) float x0[kTile * kF0];
  alignas(16) float h1[kTile * kF1];
  alignas(16) float h2[kTile * kF2];
  alignas(16) float dh2[kF2 * kTile];
  alignas(16) float dh1[kF1 * kTile];
};

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900  // the head's device code (clusters: sm_90)
constexpr int kHeadWarps = kHeadThreads / 32;

// One step of warp_sum16: lanes with bit 2 * kHalf set keep the upper kHalf sums, the others the
// lower, each adding its partner's half.
template <int kHalf>
__device__ __forceinline__ void fold_sums(float (&acc)[16], int lane) {
  const bool up = (lane & (2 * kHalf)) != 0;
#pragma unroll
  for (int i = 0; i < kHalf; ++i) {
    const float send = up ? acc[i] : acc[i + kHalf];
    const float keep = up ? acc[i + kHalf] : acc[i];
    acc[i] = keep + __shfl_xor_sync(0xffffffffu, send, 2 * kHalf);
  }
}

// The warp's sums of acc[0..15] over its lanes, in a fixed order: lane L returns acc[L / 2]'s
// (16 shuffles where 16 separate reductions would take 80; every index known at compile time, so
// acc stays in registers).
__device__ __forceinline__ float warp_sum16(float (&acc)[16], int lane) {
  fold_sums<8>(acc, lane);
  fold_sums<4>(acc, lane);
  fold_sums<2>(acc, lane);
  fold_sums<1>(acc, lane);
  return acc[0] + __shfl_xor_sync(0xffffffffu, acc[0], 1);
}

// Copies count pieces of kWidth floats into shared memory, src + src_of(e) to dst + dst_of(e) (both
// 4 * kWidth-byte aligned), with every load of the thread in flight at once (cp.async: no registers
// held); wait with __pipeline_wait_prior. Wide pieces matter: a 4-byte copy an element made the
// staging 3 us of a lone cluster's 16, and 7 where two blocks share an SM.
template <int kWidth, typename SrcOf, typename DstOf>
__device__ __forceinline__ void copy_in(const float* src, float* dst, int count, int tid, SrcOf src_of, DstOf dst_of) {
  for (int e = tid; e < count; e += kHeadThreads) __pipeline_memcpy_async(dst + dst_of(e), src + src_of(e), 4 * kWidth);
}
// count contiguous floats in pieces of kWidth (count a multiple of kWidth).
template <int kWidth>
__device__ __forceinline__ void copy_in(const float* src, float* dst, int count, int tid) {
  for (int e = tid; e < count / kWidth; e += kHeadThreads)
    __pipeline_memcpy_async(dst + kWidth * e, src + kWidth * e, 4 * kWidth);
}

// A linear layer's rows and columns of this block, into shared memory: rows of kIns floats (a
// multiple of 4, w 16-byte aligned: lenet5_step checks) in 16-byte pieces; columns in 8-byte pairs
// where the slice's width and start are even (fc1's 50 columns a block; fc2's 15 go one by one).
template <int kIns, int kOuts>
__device__ __forceinline__ void stage_layer(const float* w, const float* b, Slice rows, Slice cols, float* wr, float* br,
                                            float* wc, int wc_stride, int tid) {
  constexpr int kColWidth = (kIns / kCluster) % 2 == 0 ? 2 : 1;  // slices alike: width kIns / kCluster
  const int nr = rows.end - rows.begin, pieces = (cols.end - cols.begin) / kColWidth;
  copy_in<4>(w + rows.begin * kIns, wr, nr * kIns, tid);
  copy_in<1>(b + rows.begin, br, nr, tid);
  copy_in<kColWidth>(
      w, wc, kOuts * pieces, tid, [&](int e) { return (e / pieces) * kIns + cols.begin + kColWidth * (e % pieces); },
      [&](int e) { return (e / pieces) * wc_stride + kColWidth * (e % pieces); });
}

// act(b[j] + sum_i W[j][i] x[s][i]) for `rows` of W (wr, br: those rows), for each sample, to
// store(s, j, value, lane): a warp per pair of rows and group of eight samples, lanes along i;
// lanes 2m and 2m + 1 both hold row j0 + m / 8's sum for sample m % 8 of the group.
template <int kTile, int kIns, bool kRelu, typename Store>
__device__ __forceinline__ void head_forward(const float* wr, const float* br, int nr, const float* x, int lane,
                                             int warp, Store store) {
  constexpr int kGroups = kTile / 8;
  for (int task = warp; task < (nr + 1) / 2 * kGroups; task += kHeadWarps) {
    const int j0 = task / kGroups * 2, group = task % kGroups;
    const bool second = j0 + 1 < nr;
    const float* w0 = wr + j0 * kIns;
    const float* w1 = wr + (second ? j0 + 1 : j0) * kIns;
    const float* xs = x + group * 8 * kIns;
    float acc[16];
#pragma unroll
    for (int k = 0; k < 16; ++k) acc[k] = 0.0f;
#pragma unroll 2
    for (int i = lane; i < kIns; i += 32) {
      const float a = w0[i], b = w1[i];
#pragma unroll
      for (int s = 0; s < 8; ++s) {
        const float xv = xs[s * kIns + i];
        acc[s] += a * xv;
        acc[8 + s] += b * xv;
      }
    }
    float v = warp_sum16(acc, lane);
    const int m = lane >> 1, j = j0 + m / 8;
    if (j < nr) {
      v += br[j];
      if (kRelu) v = fmaxf(v, 0.0f);
      store(group * 8 + m % 8, j, v, lane);
    }
  }
}

#endif

// This cluster's partial dW[j][i] = sum_s d(s, j) x[s][i] and db[j] = sum_s d(s, j) for this block's
// rows, into global memory (rows of kIns): a thread per kRows rows and 4 columns, x read as float4
// and d(s, j) the same for the whole warp.
template <int kTile, int kIns, int kRows, typename D>
__device__ __forceinline__ void head_weight_grad(D d, Slice rows, const float* x, int samples, float* pw, float* pb,
                                                 int tid) {
  constexpr int kQuads = kIns / 4;
  const int groups = (rows.end - rows.begin + kRows - 1) / kRows;
  for (int t = tid; t < groups * kQuads; t += kHeadThreads) {
    const int j0 = rows.begin + t / kQuads * kRows, q = t % kQuads;
    float4 acc[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc[r] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 4
    for (int s = 0; s < samples; ++s) {
      const float4 xv = reinterpret_cast<const float4*>(x + s * kIns)[q];
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const float dv = d(s, min(j0 + r, rows.end - 1));
        acc[r].x += dv * xv.x;
        acc[r].y += dv * xv.y;
        acc[r].z += dv * xv.z;
        acc[r].w += dv * xv.w;
      }
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r)
      if (j0 + r < rows.end) reinterpret_cast<float4*>(pw + (j0 + r) * kIns)[q] = acc[r];
  }
  for (int j = rows.begin + tid; j < rows.end; j += kHeadThreads) {
    float acc = 0.0f;
#pragma unroll 4
    for (int s = 0; s < samples; ++s) acc += d(s, j);
    pb[j] = acc;
  }
}

// Partial input gradients: part[p][s][ii] = sum over part p of j of W[j][cols.begin + ii] d[j][s]
// (d as [j][sample]): a thread per kCols columns, 4 samples and one of the parts.
template <int kTile, int kOuts, int kCols>
__device__ __forceinline__ void head_input_grad_parts(const float* wc, int wc_stride, const float* d, int ncols,
                                                      int quads, float* part, int tid) {
  const int col_groups = ncols / kCols;
  for (int t = tid; t < kInputGradParts * quads * col_groups; t += kHeadThreads) {
    const int cg4 = t % col_groups, sq = (t / col_groups) % quads, p = t / (col_groups * quads);
    const int ii = cg4 * kCols;
    float acc[4][kCols];
#pragma unroll
    for (int s = 0; s < 4; ++s)
#pragma unroll
      for (int c = 0; c < kCols; ++c) acc[s][c] = 0.0f;
#pragma unroll 3
    for (int j = p * kOuts / kInputGradParts; j < (p + 1) * kOuts / kInputGradParts; ++j) {
      float w[kCols];
      if constexpr (kCols == 2) {
        const float2 w2 = *reinterpret_cast<const float2*>(wc + j * wc_stride + ii);
        w[0] = w2.x, w[1] = w2.y;
      } else {
        w[0] = wc[j * wc_stride + ii];
      }
      const float4 dv = reinterpret_cast<const float4*>(d + j * kTile)[sq];
      const float ds[4] = {dv.x, dv.y, dv.z, dv.w};
#pragma unroll
      for (int s = 0; s < 4; ++s)
#pragma unroll
        for (int c = 0; c < kCols; ++c) acc[s][c] += w[c] * ds[s];
    }
#pragma unroll
    for (int s = 0; s < 4; ++s)
#pragma unroll
      for (int c = 0; c < kCols; ++c) part[(p * kTile + 4 * sq + s) * ncols + ii + c] = acc[s][c];
  }
}

// Clusters and distributed shared memory need sm_90 (Hopper): the build's older targets get a kernel
// that is never launched (lenet5_step_supported).
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
#define DPTRAIN_HEAD_CLUSTER __cluster_dims__(kCluster, 1, 1)
#else
#define DPTRAIN_HEAD_CLUSTER
#endif

template <int kTile>
__global__ void DPTRAIN_HEAD_CLUSTER __launch_bounds__(kHeadThreads, kTile == kNarrowTile ? 2 : 1)
    lenet5_head_kernel(const Args a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  (void)a;
  __trap();
#else
  const cg::cluster_group cluster = cg::this_cluster();
  extern __shared__ float4 smem4[];
  constexpr int kPartsAt = HeadArena<kTile>::kPartsAt, kW5At = HeadArena<kTile>::kW5At,
                kB5At = HeadArena<kTile>::kB5At, kLogitsAt = HeadArena<kTile>::kLogitsAt;
  HeadSmem<kTile>& sm = *reinterpret_cast<HeadSmem<kTile>*>(smem4);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int k = static_cast<int>(cluster.block_rank()), cl = static_cast<int>(blockIdx.x) / kCluster;
  const int first = cl * a.head_per, count = min(a.head_per, a.n - first);  // head_per <= kTile
  // The wide tile's clusters hold 17 to 24 samples: its weight gradients sum over those and its
  // input gradients take their fours only (the rest would add zeros). Tiles of 16 keep constant
  // bounds (runtime ones cost 0.25 us at 256, 1c30448).
  const int samples = kTile == kWideTile ? count : kTile, quads = (samples + 3) / 4;
  float* part = a.partial_lin + static_cast<size_t>(cl) * kLinStride;
  const Slice r1 = slice(kF1, k), c1 = slice(kF0, k), r2 = slice(kF2, k), c2 = slice(kF1, k), r3 = slice(kF3, k);
  const float* P = a.params;
  float* const arena = sm.w1r;
  float* const w5 = arena + kW5At;
  float* const lg = arena + kLogitsAt;
  // The weights first: only the update changes them, so they may load while conv forward ends.
  stage_layer<kF0, kF1>(P + a.off[4], P + a.off[5], r1, c1, sm.w1r, sm.b1r, sm.w1c, kK1, tid);
  stage_layer<kF1, kF2>(P + a.off[6], P + a.off[7], r2, c2, sm.w2r, sm.b2r, sm.w2c, kK2, tid);
  for (int e = tid; e < kTile * kF0 / 4; e += kHeadThreads) {
    if (e < count * kF0 / 4)
      __pipeline_memcpy_async(sm.x0 + 4 * e, a.p2 + static_cast<size_t>(first) * kF0 + 4 * e, 16);
    else
      reinterpret_cast<float4*>(sm.x0)[e] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  }
  __pipeline_commit();
  __pipeline_wait_prior(0);
  cluster.sync();  // every block has started (its shared memory may be written to) and staged its slices

  // fc1 and fc2 forward: each block's rows, pushed into every block (each lane of a pair to half).
  const auto push_h1 = [&](int s, int j, float v, int l) {
#pragma unroll
    for (int r = (l & 1) * (kCluster / 2); r < (l & 1) * (kCluster / 2) + kCluster / 2; ++r)
      cluster.map_shared_rank(sm.h1, r)[s * kF1 + r1.begin + j] = v;
  };
  head_forward<kTile, kF0, true>(sm.w1r, sm.b1r, r1.end - r1.begin, sm.x0, lane, warp, push_h1);
  __syncthreads();  // fc1's rows are read: the arena may be written
  // fc3's weight and bias, whole, into the arena (waited for after fc2's forward).
  copy_in<4>(P + a.off[8], w5, kF3 * kF2, tid);
  copy_in<1>(P + a.off[9], arena + kB5At, kF3, tid);
  __pipeline_commit();
  cluster.sync();
  const auto push_h2 = [&](int s, int j, float v, int l) {
#pragma unroll
    for (int r = (l & 1) * (kCluster / 2); r < (l & 1) * (kCluster / 2) + kCluster / 2; ++r)
      cluster.map_shared_rank(sm.h2, r)[s * kF2 + r2.begin + j] = v;
  };
  head_forward<kTile, kF1, true>(sm.w2r, sm.b2r, r2.end - r2.begin, sm.h1, lane, warp, push_h2);
  __pipeline_wait_prior(0);
  cluster.sync();

  // fc3 and the loss, in every block alike: the logits, then dL/dlogits (zero past the batch's end).
  head_forward<kTile, kF2, false>(w5, arena + kB5At, kF3, sm.h2, lane, warp, [&](int s, int j, float v, int l) {
    if ((l & 1) == 0) lg[s * kF3 + j] = v;
  });
  __syncthreads();
  if (tid < kTile) {
    const Smoothing smoothing(a.label_smoothing, kF3);
    float* z = lg + tid * kF3;
    const SoftmaxRow row = softmax_row_thread(z, kF3);
    const int label = tid < count ? a.labels[first + tid] : 0;
    if (k == 0 && tid < count) {
      a.losses[first + tid] = softmax_xent_loss(z[label], row, kF3, smoothing);
      a.correct[first + tid] = row.best_index == label ? 1.0f : 0.0f;
    }
    float g[kF3];
#pragma unroll
    for (int c = 0; c < kF3; ++c)
      g[c] = tid < count ? softmax_xent_grad(z, c, row, label, smoothing, a.grad_scale) : 0.0f;
#pragma unroll
    for (int c = 0; c < kF3; ++c) z[c] = g[c];
  }
  __syncthreads();

  // fc3's input gradient, whole, in every block; its weight gradient for this block's rows.
  for (int e = tid; e < kF2 * kTile; e += kHeadThreads) {
    const int i = e / kTile, s = e % kTile;
    float acc = 0.0f;
#pragma unroll
    for (int j = 0; j < kF3; ++j) acc += w5[j * kF2 + i] * lg[s * kF3 + j];
    sm.dh2[e] = sm.h2[s * kF2 + i] > 0.0f ? acc : 0.0f;
  }
  head_weight_grad<kTile, kF2, 2>([&](int s, int j) { return lg[s * kF3 + j]; }, r3, sm.h2, samples,
                                  part + (kW5 - kConvParams), part + (kB5 - kConvParams), tid);
  __syncthreads();
  // fc2: its weight gradient; its input gradient for this block's columns, into every block.
  head_weight_grad<kTile, kF1, 2>([&](int s, int j) { return sm.dh2[j * kTile + s]; }, r2, sm.h1, samples,
                                  part + (kW4 - kConvParams), part + (kB4 - kConvParams), tid);
  head_input_grad_parts<kTile, kF2, 1>(sm.w2c, kK2, sm.dh2, kK2, quads, arena + kPartsAt, tid);
  __syncthreads();
  for (int e = tid; e < 4 * quads * kK2; e += kHeadThreads) {  // samples fastest: conflict-free pushes
    const int s = e % (4 * quads), ii = e / (4 * quads), i = c2.begin + ii;
    const float* pp = arena + kPartsAt + s * kK2 + ii;
    float acc = pp[0];
#pragma unroll
    for (int p = 1; p < kInputGradParts; ++p) acc += pp[p * kTile * kK2];
    const float v = sm.h1[s * kF1 + i] > 0.0f ? acc : 0.0f;
#pragma unroll
    for (int r = 0; r < kCluster; ++r) cluster.map_shared_rank(sm.dh1, r)[i * kTile + s] = v;
  }
  cluster.sync();  // the last writes into other blocks; nothing reads another block's memory after it
  // fc1: its weight gradient; its input gradient goes to conv backward.
  head_weight_grad<kTile, kF0, 3>([&](int s, int j) { return sm.dh1[j * kTile + s]; }, r1, sm.x0, samples,
                                  part + (kW3 - kConvParams), part + (kB3 - kConvParams), tid);
  head_input_grad_parts<kTile, kF1, 2>(sm.w1c, kK1, sm.dh1, kK1, quads, arena + kPartsAt, tid);
  __syncthreads();
  for (int e = tid; e < count * kK1; e += kHeadThreads) {
    const int s = e / kK1, ii = e % kK1;
    const float* pp = arena + kPartsAt + e;
    float acc = pp[0];
#pragma unroll
    for (int p = 1; p < kInputGradParts; ++p) acc += pp[p * kTile * kK1];
    const int i = c1.begin + ii;
    a.dp2[static_cast<size_t>(first + s) * kF0 + i] = sm.x0[s * kF0 + i] > 0.0f ? acc : 0.0f;
  }
#endif
}
// ---- 3. conv backward: a block per group of samples
// At most this many blocks (two an SM on a 132-SM H100 or H200): each sums its samples' gradients in
// order, so the count is a function of n alone and the result the same on every GPU.
constexpr int kConvBackwardBlocks = 264;
struct ConvBackwardSmem {
  float w2[kC2 * kC1 * 25];
  float x[kPadIn * kPadIn];
  float p1[kC1 * kQ1];
  float dc2[kC2 * 18 * 18];  // conv2's gradient before pooling, 4 zeros on each side
  float tmp[3 * kC1 * kQ1];
  float dp1[kC1 * kQ1];
  float dp2[kF0];
  float g[kConvParams];
  int off1[kC1 * kQ1];  // the winner of each pooled conv1 output: its top-left input in x (padded rows)
  int off2[kF0];        // the winner of each pooled conv2 output: its position in conv2's input plane
};

__global__ void __launch_bounds__(kConvThreads, 2) lenet5_conv_backward_kernel(const Args a) {
  extern __shared__ float4 smem4[];
  ConvBackwardSmem& sm = *reinterpret_cast<ConvBackwardSmem*>(smem4);
  const int tid = threadIdx.x;
  for (int i = tid; i < kC2 * kC1 * 25; i += kConvThreads) sm.w2[i] = a.params[a.off[2] + i];
  for (int i = tid; i < kConvParams; i += kConvThreads) sm.g[i] = 0.0f;
  for (size_t s = blockIdx.x; s < static_cast<size_t>(a.n); s += gridDim.x) {
    __syncthreads();  // the last sample's readers are done
    for (int q = tid; q < kPadIn * kPadIn; q += kConvThreads) {
      const int y = q / kPadIn - 2, xx = q % kPadIn - 2;
      sm.x[q] = (y >= 0 && y < kIn && xx >= 0 && xx < kIn) ? a.x[s * kIn * kIn + y * kIn + xx] : 0.0f;
    }
    for (int q = tid; q < kC1 * kQ1; q += kConvThreads) {
      sm.p1[q] = a.p1[s * kC1 * kQ1 + q];
      const int w = a.a1[s * kC1 * kQ1 + q], r = q % kQ1;
      sm.off1[q] = (2 * (r / kP1) + (w >> 1)) * kPadIn + 2 * (r % kP1) + (w & 1);
    }
    for (int r = tid; r < kF0; r += kConvThreads) {
      sm.dp2[r] = a.dp2[s * kF0 + r];
      const int w = a.a2[s * kF0 + r], py = (r / 5) % 5, px = r % 5;
      sm.off2[r] = (2 * py + (w >> 1)) * kP1 + 2 * px + (w & 1);
    }
    for (int i = tid; i < kC2 * 18 * 18; i += kConvThreads) sm.dc2[i] = 0.0f;
    __syncthreads();
    for (int r = tid; r < kF0; r += kConvThreads) {
      const int o = r / 25, off = sm.off2[r], y = off / kP1, x = off % kP1;
      sm.dc2[o * 324 + (y + 4) * 18 + x + 4] = sm.dp2[r];
    }
    // conv2's weight and bias gradients: a thread per filter row (o, c, ky), its five taps over the 25
    // pooled outputs' winners (each winner's value and offset read once for five taps).
    for (int w = tid; w < kC2 * kC1 * 5 + kC2; w += kConvThreads) {
      if (w >= kC2 * kC1 * 5) {
        const int o = w - kC2 * kC1 * 5;
        float acc = 0.0f;
        for (int r = 0; r < 25; ++r) acc += sm.dp2[o * 25 + r];
        sm.g[kB2 + o] += acc;
        continue;
      }
      const int o = w / (kC1 * 5), c = (w / 5) % kC1, ky = w % 5;
      const float* g = sm.dp2 + o * 25;
      const int* off = sm.off2 + o * 25;
      const float* pc = sm.p1 + c * kQ1 + ky * kP1;
      float acc[5] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll 5
      for (int r = 0; r < 25; ++r) {
        const float gv = g[r];
        const float* row = pc + off[r];
#pragma unroll
        for (int kx = 0; kx < 5; ++kx) acc[kx] += gv * row[kx];
      }
#pragma unroll
      for (int kx = 0; kx < 5; ++kx) sm.g[kW2 + w * 5 + kx] += acc[kx];
    }
    __syncthreads();
    // conv2's input gradient: 7 outputs of a row a thread, over a third of the output channels.
    for (int item = tid; item < 3 * kC1 * kP1 * 2; item += kConvThreads) {
      const int og = item / (kC1 * kP1 * 2), rem = item % (kC1 * kP1 * 2), c = rem / (kP1 * 2), y = (rem / 2) % kP1,
                x0 = 7 * (rem % 2);
      float acc[7] = {0, 0, 0, 0, 0, 0, 0};
#pragma unroll 1
      for (int o = og * kC2 / 3; o < (og + 1) * kC2 / 3; ++o) {
        const float* wp = sm.w2 + (o * kC1 + c) * 25;
#pragma unroll
        for (int ky = 0; ky < 5; ++ky) {
          const float* row = sm.dc2 + o * 324 + (y - ky + 4) * 18 + x0;
          float v[11];
#pragma unroll
          for (int t = 0; t < 11; ++t) v[t] = row[t];
#pragma unroll
          for (int kx = 0; kx < 5; ++kx) {
            const float wv = wp[ky * 5 + kx];
#pragma unroll
            for (int t = 0; t < 7; ++t) acc[t] += wv * v[t + 4 - kx];
          }
        }
      }
      float* out = sm.tmp + og * (kC1 * kQ1) + c * kQ1 + y * kP1 + x0;
#pragma unroll
      for (int t = 0; t < 7; ++t) out[t] = acc[t];
    }
    __syncthreads();
    for (int q = tid; q < kC1 * kQ1; q += kConvThreads)
      sm.dp1[q] = sm.p1[q] > 0.0f ? (sm.tmp[q] + sm.tmp[kC1 * kQ1 + q]) + sm.tmp[2 * kC1 * kQ1 + q] : 0.0f;
    __syncthreads();
    // conv1's weight and bias gradients: a thread per (channel, tap, third of the pooled outputs).
    for (int item = tid; item < kC1 * 26 * 3; item += kConvThreads) {
      const int c = item / 78, tap = (item % 78) / 3, qg = item % 3;
      const float* g = sm.dp1 + c * kQ1;
      const int q0 = qg * kQ1 / 3, q1 = (qg + 1) * kQ1 / 3;
      float acc = 0.0f;
      if (tap == 25) {
        for (int q = q0; q < q1; ++q) acc += g[q];
      } else {
        const int* off = sm.off1 + c * kQ1;
        const float* xs = sm.x + (tap / 5) * kPadIn + tap % 5;
#pragma unroll 4
        for (int q = q0; q < q1; ++q) acc += g[q] * xs[off[q]];
      }
      sm.tmp[item] = acc;
    }
    __syncthreads();
    for (int t = tid; t < kC1 * 26; t += kConvThreads) {
      const float v = (sm.tmp[3 * t] + sm.tmp[3 * t + 1]) + sm.tmp[3 * t + 2];
      const int c = t / 26, tap = t % 26;
      if (tap < 25)
        sm.g[kW1 + c * 25 + tap] += v;
      else
        sm.g[kB1 + c] += v;
    }
  }
  __syncthreads();
  for (int i = tid; i < kConvParams; i += kConvThreads)
    a.partial_conv[static_cast<size_t>(blockIdx.x) * kConvParams + i] = sm.g[i];
}

// ---- 4. finish: the sums over the partials, into the model's buffers
constexpr int kFinishThreads = 256, kFinishGroups = kFinishThreads / 32;
constexpr int kConvFinishBlocks = (kConvParams + 31) / 32;  // 32 parameters a block, 8 groups of partials
constexpr int kLinFinishBlocks = (kLinParams + 31) / 32;

// Where dense parameter p lives in the model's buffers.
__device__ __forceinline__ int model_offset(const Args& a, int p) {
  int t = 0;
#pragma unroll
  for (int k = 1; k < kLenet5Tensors; ++k) t += p >= dense_start(k) ? 1 : 0;
  return a.off[t] + (p - dense_start(t));
}

// grads[p] = the sum over k < count of partial[k][p - first] for the 32 parameters from p0: warp w
// sums the w-th eighth of the partials (coalesced over the parameters), then the eighths in order.
__device__ __forceinline__ void sum_partials(const Args& a, const float* __restrict__ partial, int count, int stride,
                                             int first, int p0, int end, float (&part)[kFinishGroups][32]) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, p = p0 + lane;
  float g = 0.0f;
  if (p < end) {
#pragma unroll 4
    for (int k = w * count / kFinishGroups; k < (w + 1) * count / kFinishGroups; ++k)
      g += partial[static_cast<size_t>(k) * stride + (p - first)];
  }
  part[w][lane] = g;
  __syncthreads();
  if (w == 0 && p < end) {
    float t = part[0][lane];
    for (int k = 1; k < kFinishGroups; ++k) t += part[k][lane];
    a.grads[model_offset(a, p)] = t;
  }
}

__global__ void __launch_bounds__(kFinishThreads) lenet5_finish_kernel(const Args a, int conv_blocks, int clusters) {
  __shared__ float part[kFinishGroups][32];
  __shared__ double warp_loss[kFinishGroups], warp_correct[kFinishGroups];
  const int tid = threadIdx.x, lane = tid & 31;
  if (blockIdx.x < kConvFinishBlocks) {
    sum_partials(a, a.partial_conv, conv_blocks, kConvParams, 0, blockIdx.x * 32, kConvParams, part);
    return;
  }
  if (blockIdx.x < kConvFinishBlocks + kLinFinishBlocks) {
    sum_partials(a, a.partial_lin, clusters, kLinStride, kConvParams,
                 kConvParams + (blockIdx.x - kConvFinishBlocks) * 32, kParams, part);
    return;
  }
  // The last block: the loss sums, in an order fixed by n.
  double loss = 0.0, correct = 0.0;
  for (int i = tid; i < a.n; i += kFinishThreads) loss += a.losses[i], correct += a.correct[i];
  for (int off = 16; off > 0; off /= 2) {
    loss += __shfl_down_sync(0xffffffffu, loss, off);
    correct += __shfl_down_sync(0xffffffffu, correct, off);
  }
  if (lane == 0) warp_loss[tid / 32] = loss, warp_correct[tid / 32] = correct;
  __syncthreads();
  if (tid == 0) {
    double tl = 0.0, tc = 0.0;
    for (int w = 0; w < kFinishGroups; ++w) tl += warp_loss[w], tc += warp_correct[w];
    a.sums[0] += tl;
    a.sums[1] += tc;
  }
}

int conv_blocks(int n) { return n < kConvBackwardBlocks ? n : kConvBackwardBlocks; }
// The head's tile, cluster count and samples a cluster: tiles of 16, except where more than
// kLoneClusters of them would share SMs and kLoneClusters of 24 serve (241 to 360 samples: the
// samples spread evenly, so every cluster but the last takes ceil(n / 15)). Clusters never
// decrease with n (15 from 225 to 360), so the scratch for a batch serves every smaller one.
struct HeadPlan {
  int tile, clusters, per;
};
HeadPlan head_plan(int n) {
  if (n > kLoneClusters * kNarrowTile && n <= kLoneClusters * kWideTile)
    return {kWideTile, kLoneClusters, (n + kLoneClusters - 1) / kLoneClusters};
  return {kNarrowTile, (n + kNarrowTile - 1) / kNarrowTile, kNarrowTile};
}
int head_clusters(int n) { return head_plan(n).clusters; }

// The scratch's parts, in floats from its start (each a multiple of 4: 16-byte aligned).
struct Layout {
  size_t p1, p2, dp2, partial_conv, partial_lin, correct, losses, floats;
  size_t a1, a2, bytes;
};
constexpr size_t round4(size_t v) { return (v + 3) / 4 * 4; }
Layout layout(int n) {
  Layout l{};
  const size_t N = static_cast<size_t>(n);
  l.p1 = 0;
  l.p2 = l.p1 + round4(N * kC1 * kQ1);
  l.dp2 = l.p2 + round4(N * kF0);
  l.partial_conv = l.dp2 + round4(N * kF0);
  l.partial_lin = l.partial_conv + round4(static_cast<size_t>(conv_blocks(n)) * kConvParams);
  l.correct = l.partial_lin + static_cast<size_t>(head_clusters(n)) * kLinStride;
  l.losses = l.correct + round4(N);
  l.floats = l.losses + round4(2 * N);  // doubles
  l.a1 = 0;
  l.a2 = round4(N * kC1 * kQ1);
  l.bytes = l.a2 + round4(N * kF0);
  return l;
}

}  // namespace

Lenet5ScratchSize lenet5_step_scratch(int n) {
  const Layout l = layout(n < 1 ? 1 : n);
  return {l.floats, l.bytes};
}

bool lenet5_step_fits(int n) { return n >= 1 && n <= kLenet5MaxBatch; }

bool lenet5_step_supported() {
  int device = 0, major = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  return major >= 9;
}

namespace {

Args make_args(const Lenet5Step& p) {
  const Layout l = layout(p.n);
  Args a{};
  a.params = p.params;
  for (int t = 0; t < kLenet5Tensors; ++t) a.off[t] = p.offsets[static_cast<size_t>(t)];
  a.x = p.x;
  a.labels = p.labels;
  a.gather = p.gather;
  a.n = p.n;
  a.head_per = head_plan(p.n).per;
  a.grad_scale = p.grad_scale;
  a.label_smoothing = p.label_smoothing;
  a.grads = p.grads;
  a.sums = p.sums;
  a.p1 = p.scratch + l.p1;
  a.p2 = p.scratch + l.p2;
  a.dp2 = p.scratch + l.dp2;
  a.partial_conv = p.scratch + l.partial_conv;
  a.partial_lin = p.scratch + l.partial_lin;
  a.correct = p.scratch + l.correct;
  a.losses = reinterpret_cast<double*>(p.scratch + l.losses);
  a.a1 = p.scratch_bytes + l.a1;
  a.a2 = p.scratch_bytes + l.a2;
  return a;
}

// The four launches, each queued after the one before it.
void launch_conv_forward(const Args& a, cudaStream_t stream) {
  lenet5_conv_forward_kernel<<<a.n, kConvThreads, sizeof(ConvForwardSmem), stream>>>(a);
  CUDA_CHECK_LAUNCH();
}
void launch_head(const Args& a, cudaStream_t stream) {
  const HeadPlan plan = head_plan(a.n);
  const int blocks = plan.clusters * kCluster;
  if (plan.tile == kWideTile)
    lenet5_head_kernel<kWideTile><<<blocks, kHeadThreads, sizeof(HeadSmem<kWideTile>), stream>>>(a);
  else
    lenet5_head_kernel<kNarrowTile><<<blocks, kHeadThreads, sizeof(HeadSmem<kNarrowTile>), stream>>>(a);
  CUDA_CHECK_LAUNCH();
}
void launch_conv_backward(const Args& a, cudaStream_t stream) {
  lenet5_conv_backward_kernel<<<conv_blocks(a.n), kConvThreads, sizeof(ConvBackwardSmem), stream>>>(a);
  CUDA_CHECK_LAUNCH();
}
void launch_finish(const Args& a, cudaStream_t stream) {
  lenet5_finish_kernel<<<kConvFinishBlocks + kLinFinishBlocks + 1, kFinishThreads, 0, stream>>>(a, conv_blocks(a.n),
                                                                                                 head_clusters(a.n));
  CUDA_CHECK_LAUNCH();
}

void configure_kernels() {
  static const bool configured = [] {
    CUDA_CHECK(cudaFuncSetAttribute(lenet5_conv_forward_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(sizeof(ConvForwardSmem))));
    CUDA_CHECK(cudaFuncSetAttribute(lenet5_head_kernel<kNarrowTile>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(sizeof(HeadSmem<kNarrowTile>))));
    CUDA_CHECK(cudaFuncSetAttribute(lenet5_head_kernel<kWideTile>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(sizeof(HeadSmem<kWideTile>))));
    CUDA_CHECK(cudaFuncSetAttribute(lenet5_conv_backward_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(sizeof(ConvBackwardSmem))));
    return true;
  }();
  (void)configured;
}

}  // namespace

void lenet5_step(const Lenet5Step& p, cudaStream_t stream) {
  static const bool supported = lenet5_step_supported();
  if (!supported) throw CudaError("lenet5_step: needs thread block clusters (compute capability 9.0 or later)");
  if (!lenet5_step_fits(p.n))
    throw CudaError("lenet5_step: a batch of " + std::to_string(p.n) + " is outside 1.." +
                    std::to_string(kLenet5MaxBatch));
  if (reinterpret_cast<uintptr_t>(p.scratch) % 16 != 0)
    throw CudaError("lenet5_step: the scratch is not 16-byte aligned");
  if (reinterpret_cast<uintptr_t>(p.params) % 16 != 0 || p.offsets[4] % 4 != 0 || p.offsets[6] % 4 != 0 ||
      p.offsets[8] % 4 != 0)
    throw CudaError("lenet5_step: the linear layers' weights are not 16-byte aligned in the parameters");
  if (p.gather.images != nullptr) {
    const StepGather& g = p.gather;
    if (g.pixels != kIn * kIn || g.labels == nullptr || g.order == nullptr || g.step == nullptr)
      throw CudaError("lenet5_step: the gather must name labels, an order and a step state, at 28x28 pixels (got " +
                      std::to_string(g.pixels) + ")");
    if (g.x != p.x || g.y != p.labels)
      throw CudaError("lenet5_step: the gather must write the batch and labels the pass reads");
  }
  configure_kernels();
  const Args a = make_args(p);
  launch_conv_forward(a, stream);
  launch_head(a, stream);
  launch_conv_backward(a, stream);
  launch_finish(a, stream);
}

}  // namespace dptrain::kernels
