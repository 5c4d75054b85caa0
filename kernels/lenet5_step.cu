#include "kernels/lenet5_step.h"

#include <cooperative_groups.h>

#include <string>

#include "core/cuda_check.h"
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
  int n;
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
  for (int q = tid; q < kPadIn * kPadIn; q += kConvThreads) {
    const int y = q / kPadIn - 2, x = q % kPadIn - 2;
    sm.x[q] = (y >= 0 && y < kIn && x >= 0 && x < kIn) ? a.x[s * kIn * kIn + y * kIn + x] : 0.0f;
  }
  __syncthreads();
  // conv1 + ReLU + pooling: a pooled output a thread.
  for (int r = tid; r < kC1 * kQ1; r += kConvThreads) {
    const int c = r / kQ1, py = (r / kP1) % kP1, px = r % kP1;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    pooled_sums(sm.x + 2 * py * kPadIn + 2 * px, kPadIn, sm.w1 + c * 25, acc);
    int arg;
    const float v = fmaxf(pool_max(acc, arg) + sm.b1[c], 0.0f);
    sm.p1[r] = v;
    a.p1[s * (kC1 * kQ1) + r] = v;
    a.a1[s * (kC1 * kQ1) + r] = static_cast<unsigned char>(arg);
  }
  __syncthreads();
  // conv2: a pooled output's four sums over half the input channels a thread (800 threads' work).
  for (int i = tid; i < 2 * kF0; i += kConvThreads) {
    const int h = i / kF0, r = i % kF0, o = r / 25, py = (r / 5) % 5, px = r % 5;
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

// ---- 2. the linear head: a cluster of 8 blocks per 16 samples
constexpr int kCluster = 8, kHeadSamples = 16, kHeadThreads = 512;
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
constexpr int kR3 = max_slice(kF3), kK3 = max_slice(kF2);  // fc3: 2, 11
struct HeadSmem {
  float w1r[kR1 * kF0], b1r[kR1 + 1], w1c[kF1 * kK1];
  float w2r[kR2 * kF1], b2r[kR2 + 1], w2c[kF2 * kK2];
  float w3r[kR3 * kF2], b3r[kR3 + 2], w3c[kF3 * kK3 + 2];
  float x0[kHeadSamples * kF0], h1[kHeadSamples * kF1], h2[kHeadSamples * kF2], lg[kHeadSamples * kF3];
  float dh2[kHeadSamples * kF2], dh1[kHeadSamples * kF1];
};

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900  // the head's device code (clusters: sm_90)
constexpr int kHeadWarps = kHeadThreads / 32;

// The warp's sums of acc[0..15] over its lanes, in a fixed order: lane L returns acc[L / 2]'s
// (16 shuffles where 16 separate reductions would take 80).
__device__ __forceinline__ float warp_sum16(float (&acc)[16], int lane) {
#pragma unroll
  for (int half = 8; half >= 1; half /= 2) {
    const bool up = (lane & (2 * half)) != 0;
#pragma unroll
    for (int i = 0; i < half; ++i) {
      const float send = up ? acc[i] : acc[i + half];
      const float keep = up ? acc[i + half] : acc[i];
      acc[i] = keep + __shfl_xor_sync(0xffffffffu, send, 2 * half);
    }
  }
  return acc[0] + __shfl_xor_sync(0xffffffffu, acc[0], 1);
}

// out[s][j] = act(b[j] + sum_i W[j][i] x[s][i]) for this block's rows, written into every block of
// the cluster. A warp a row, lanes along i.
template <int kIns, bool kRelu>
__device__ __forceinline__ void head_forward(const cg::cluster_group& cluster, const float* wr, const float* br,
                                             Slice rows, const float* x, float* out, int outs, int lane, int warp) {
  for (int jj = warp; jj < rows.end - rows.begin; jj += kHeadWarps) {
    float acc[16];
#pragma unroll
    for (int s = 0; s < 16; ++s) acc[s] = 0.0f;
    const float* w = wr + jj * kIns;
#pragma unroll 2
    for (int i = lane; i < kIns; i += 32) {
      const float wv = w[i];
#pragma unroll
      for (int s = 0; s < 16; ++s) acc[s] += wv * x[s * kIns + i];
    }
    float v = warp_sum16(acc, lane) + br[jj];
    if (kRelu) v = fmaxf(v, 0.0f);
    // Lanes 2s and 2s + 1 hold sample s: each writes to half the cluster.
    const int s = lane >> 1, r0 = (lane & 1) * (kCluster / 2);
#pragma unroll
    for (int r = r0; r < r0 + kCluster / 2; ++r) cluster.map_shared_rank(out, r)[s * outs + rows.begin + jj] = v;
  }
}

#endif

// This cluster's partial dW[j][i] = sum_s d[s][j] x[s][i] and db[j] = sum_s d[s][j] for this block's
// rows, into global memory (rows of kIns).
template <int kIns>
__device__ __forceinline__ void head_weight_grad(const float* d, int outs, Slice rows, const float* x, float* pw,
                                                 float* pb, int tid) {
  const int count = (rows.end - rows.begin) * kIns;
  for (int e = tid; e < count; e += kHeadThreads) {
    const int j = rows.begin + e / kIns, i = e % kIns;
    float acc = 0.0f;
#pragma unroll
    for (int s = 0; s < 16; ++s) acc += d[s * outs + j] * x[s * kIns + i];
    pw[j * kIns + i] = acc;
  }
  for (int j = rows.begin + tid; j < rows.end; j += kHeadThreads) {
    float acc = 0.0f;
#pragma unroll
    for (int s = 0; s < 16; ++s) acc += d[s * outs + j];
    pb[j] = acc;
  }
}

// din[s][i] = (act[s][i] > 0) sum_j W[j][i] d[s][j] for this block's columns: store(s, i, value).
template <int kOuts, typename Store>
__device__ __forceinline__ void head_input_grad(const float* wc, int wc_stride, const float* d, Slice cols,
                                                const float* act, int ins, int tid, Store store) {
  const int n = cols.end - cols.begin;
  for (int e = tid; e < kHeadSamples * n; e += kHeadThreads) {
    const int s = e / n, ii = e % n;
    float acc = 0.0f;
#pragma unroll 8
    for (int j = 0; j < kOuts; ++j) acc += wc[j * wc_stride + ii] * d[s * kOuts + j];
    const int i = cols.begin + ii;
    store(s, i, act[s * ins + i] > 0.0f ? acc : 0.0f);
  }
}

// A linear layer's rows and columns of this block, into shared memory.
template <int kIns, int kOuts>
__device__ __forceinline__ void stage_layer(const float* __restrict__ w, const float* __restrict__ b, Slice rows,
                                            Slice cols, float* wr, float* br, float* wc, int wc_stride, int tid) {
  const int nr = rows.end - rows.begin, nc = cols.end - cols.begin;
  for (int e = tid; e < nr * kIns; e += kHeadThreads) wr[e] = w[rows.begin * kIns + e];
  for (int e = tid; e < nr; e += kHeadThreads) br[e] = b[rows.begin + e];
  for (int e = tid; e < kOuts * nc; e += kHeadThreads) {
    const int j = e / nc, ii = e % nc;
    wc[j * wc_stride + ii] = w[j * kIns + cols.begin + ii];
  }
}

// Clusters and distributed shared memory need sm_90 (Hopper): the build's older targets get a kernel
// that is never launched (lenet5_step_supported).
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
#define DPTRAIN_HEAD_CLUSTER __cluster_dims__(kCluster, 1, 1)
#else
#define DPTRAIN_HEAD_CLUSTER
#endif

__global__ void DPTRAIN_HEAD_CLUSTER __launch_bounds__(kHeadThreads, 2) lenet5_head_kernel(const Args a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  (void)a;
  __trap();
#else
  const cg::cluster_group cluster = cg::this_cluster();
  extern __shared__ float4 smem4[];
  HeadSmem& sm = *reinterpret_cast<HeadSmem*>(smem4);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int k = static_cast<int>(cluster.block_rank()), cl = static_cast<int>(blockIdx.x) / kCluster;
  const int first = cl * kHeadSamples, count = min(kHeadSamples, a.n - first);
  float* part = a.partial_lin + static_cast<size_t>(cl) * kLinParams;
  const Slice r1 = slice(kF1, k), c1 = slice(kF0, k), r2 = slice(kF2, k), c2 = slice(kF1, k), r3 = slice(kF3, k),
              c3 = slice(kF2, k);
  const float* P = a.params;
  stage_layer<kF0, kF1>(P + a.off[4], P + a.off[5], r1, c1, sm.w1r, sm.b1r, sm.w1c, kK1, tid);
  stage_layer<kF1, kF2>(P + a.off[6], P + a.off[7], r2, c2, sm.w2r, sm.b2r, sm.w2c, kK2, tid);
  stage_layer<kF2, kF3>(P + a.off[8], P + a.off[9], r3, c3, sm.w3r, sm.b3r, sm.w3c, kK3, tid);
  for (int e = tid; e < kHeadSamples * kF0; e += kHeadThreads)
    sm.x0[e] = e < count * kF0 ? a.p2[static_cast<size_t>(first) * kF0 + e] : 0.0f;
  cluster.sync();  // every block has started (its shared memory may be written to) and staged its slices

  head_forward<kF0, true>(cluster, sm.w1r, sm.b1r, r1, sm.x0, sm.h1, kF1, lane, warp);
  cluster.sync();
  head_forward<kF1, true>(cluster, sm.w2r, sm.b2r, r2, sm.h1, sm.h2, kF2, lane, warp);
  cluster.sync();
  head_forward<kF2, false>(cluster, sm.w3r, sm.b3r, r3, sm.h2, sm.lg, kF3, lane, warp);
  cluster.sync();

  // The loss, in every block alike: the logits become dL/dlogits, zero past the batch's end.
  if (tid < kHeadSamples) {
    const Smoothing smoothing(a.label_smoothing, kF3);
    float* z = sm.lg + tid * kF3;
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

  head_weight_grad<kF2>(sm.lg, kF3, r3, sm.h2, part + (kW5 - kConvParams), part + (kB5 - kConvParams), tid);
  head_input_grad<kF3>(sm.w3c, kK3, sm.lg, c3, sm.h2, kF2, tid, [&](int s, int i, float v) {
#pragma unroll
    for (int r = 0; r < kCluster; ++r) cluster.map_shared_rank(sm.dh2, r)[s * kF2 + i] = v;
  });
  cluster.sync();
  head_weight_grad<kF1>(sm.dh2, kF2, r2, sm.h1, part + (kW4 - kConvParams), part + (kB4 - kConvParams), tid);
  head_input_grad<kF2>(sm.w2c, kK2, sm.dh2, c2, sm.h1, kF1, tid, [&](int s, int i, float v) {
#pragma unroll
    for (int r = 0; r < kCluster; ++r) cluster.map_shared_rank(sm.dh1, r)[s * kF1 + i] = v;
  });
  cluster.sync();  // the last writes into other blocks; nothing reads another block's memory after it
  head_weight_grad<kF0>(sm.dh1, kF1, r1, sm.x0, part + (kW3 - kConvParams), part + (kB3 - kConvParams), tid);
  head_input_grad<kF1>(sm.w1c, kK1, sm.dh1, c1, sm.x0, kF0, tid, [&](int s, int i, float v) {
    if (s < count) a.dp2[static_cast<size_t>(first + s) * kF0 + i] = v;
  });
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
    // conv2's weight and bias gradients: a thread a weight, over the 25 pooled outputs' winners.
    for (int w = tid; w < kC2 * kC1 * 25 + kC2; w += kConvThreads) {
      if (w >= kC2 * kC1 * 25) {
        const int o = w - kC2 * kC1 * 25;
        float acc = 0.0f;
        for (int r = 0; r < 25; ++r) acc += sm.dp2[o * 25 + r];
        sm.g[kB2 + o] += acc;
        continue;
      }
      const int o = w / 150, c = (w / 25) % kC1, ky = (w % 25) / 5, kx = w % 5;
      const float* g = sm.dp2 + o * 25;
      const int* off = sm.off2 + o * 25;
      const float* pc = sm.p1 + c * kQ1 + ky * kP1 + kx;
      float acc = 0.0f;
#pragma unroll
      for (int r = 0; r < 25; ++r) acc += g[r] * pc[off[r]];
      sm.g[kW2 + w] += acc;
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
    sum_partials(a, a.partial_lin, clusters, kLinParams, kConvParams,
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
int head_clusters(int n) { return (n + kHeadSamples - 1) / kHeadSamples; }

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
  l.correct = l.partial_lin + round4(static_cast<size_t>(head_clusters(n)) * kLinParams);
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

void lenet5_step(const Lenet5Step& p, cudaStream_t stream) {
  static const bool supported = lenet5_step_supported();
  if (!supported) throw CudaError("lenet5_step: needs thread block clusters (compute capability 9.0 or later)");
  if (!lenet5_step_fits(p.n))
    throw CudaError("lenet5_step: a batch of " + std::to_string(p.n) + " is outside 1.." +
                    std::to_string(kLenet5MaxBatch));
  if (reinterpret_cast<uintptr_t>(p.scratch) % 16 != 0)
    throw CudaError("lenet5_step: the scratch is not 16-byte aligned");
  static const bool configured = [] {
    CUDA_CHECK(cudaFuncSetAttribute(lenet5_conv_forward_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(sizeof(ConvForwardSmem))));
    CUDA_CHECK(cudaFuncSetAttribute(lenet5_head_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(sizeof(HeadSmem))));
    CUDA_CHECK(cudaFuncSetAttribute(lenet5_conv_backward_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(sizeof(ConvBackwardSmem))));
    return true;
  }();
  (void)configured;
  const Layout l = layout(p.n);
  Args a{};
  a.params = p.params;
  for (int t = 0; t < kLenet5Tensors; ++t) a.off[t] = p.offsets[static_cast<size_t>(t)];
  a.x = p.x;
  a.labels = p.labels;
  a.n = p.n;
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
  lenet5_conv_forward_kernel<<<p.n, kConvThreads, sizeof(ConvForwardSmem), stream>>>(a);
  CUDA_CHECK_LAUNCH();
  lenet5_head_kernel<<<head_clusters(p.n) * kCluster, kHeadThreads, sizeof(HeadSmem), stream>>>(a);
  CUDA_CHECK_LAUNCH();
  lenet5_conv_backward_kernel<<<conv_blocks(p.n), kConvThreads, sizeof(ConvBackwardSmem), stream>>>(a);
  CUDA_CHECK_LAUNCH();
  lenet5_finish_kernel<<<kConvFinishBlocks + kLinFinishBlocks + 1, kFinishThreads, 0, stream>>>(a, conv_blocks(p.n),
                                                                                                head_clusters(p.n));
  CUDA_CHECK_LAUNCH();
}

}  // namespace dptrain::kernels
