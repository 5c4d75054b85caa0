// A probe, not product code: lenet5's whole training step in four kernels plus the update, for issue
// 20's 70% line at batch 257 (docs/BENCHMARKS.md). The twenty-second session's three-kernel probe
// ran each sample's linear layers in its own block: every block read all 236 KB of weights from
// L2 (24 us of its 65 at 257). Here:
//   1. conv_forward: a block per sample: conv1 + ReLU + pool, conv2 + ReLU + pool (pooled values and
//      argmaxes to global memory);
//   2. head: a cluster of 8 blocks per 16 samples runs the linear layers forward, the loss and the
//      linear layers backward. Block k keeps slice k of every layer's rows (forward, weight
//      gradient) and of its columns (input gradient) in shared memory and pushes its outputs to the
//      other 7 blocks' shared memory (distributed shared memory), so the cluster reads the weights
//      from L2 once. Weight gradients go out as per-cluster partial sums;
//   3. conv_backward: a block per group of samples (at most 264 blocks, a function of n alone):
//      conv2's weight and input gradients, conv1's weight gradient, accumulated over its samples;
//   4. finish: every gradient summed over the partials in a fixed order; the loss sums;
// then SGD with Nesterov momentum and weight decay (lenet5's recipe).
// Every sum has a fixed order, so the result is the same on every run and GPU.
//
//   nvcc -O3 -arch=sm_90 -std=c++17 bench/fused_lenet5_step_probe.cu -o /tmp/probe && /tmp/probe
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

namespace cg = cooperative_groups;

#define CK(x)                                                                                   \
  do {                                                                                          \
    cudaError_t e_ = (x);                                                                       \
    if (e_ != cudaSuccess) {                                                                    \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                             \
    }                                                                                           \
  } while (0)

namespace {

constexpr int kIn = 28, kPadIn = 32;  // conv1: 1 -> 6, 5x5, pad 2: 28x28, pooled to 14x14
constexpr int kC1 = 6, kP1 = 14, kQ1 = kP1 * kP1;
constexpr int kC2 = 16, kP2 = 5;  // conv2: 6 -> 16, 5x5: 14 -> 10, pooled to 5x5
constexpr int kF0 = kC2 * kP2 * kP2;  // 400
constexpr int kF1 = 120, kF2 = 84, kF3 = 10;

// The flat parameter buffer, in PyTorch's state_dict order.
constexpr int kW1 = 0, kB1 = kW1 + kC1 * 25, kW2 = kB1 + kC1, kB2 = kW2 + kC2 * kC1 * 25, kW3 = kB2 + kC2,
              kB3 = kW3 + kF1 * kF0, kW4 = kB3 + kF1, kB4 = kW4 + kF2 * kF1, kW5 = kB4 + kF2, kB5 = kW5 + kF3 * kF2,
              kParams = kB5 + kF3;  // 61,706
constexpr int kConvParams = kW3;    // 2,572: conv1's and conv2's weights and biases
constexpr int kLinParams = kParams - kConvParams;

// ---------------------------------------------------------------- 1. conv forward
constexpr int kConvThreads = 512;
struct ConvFwdSmem {
  float cw[kConvParams];
  float x[kPadIn * kPadIn];
  float p1[kC1 * kQ1];
  float4 part[2][kF0];
};

__global__ void __launch_bounds__(kConvThreads) conv_forward_kernel(const float* __restrict__ xg, const float* __restrict__ P,
                                                                     float* __restrict__ p1g, unsigned char* __restrict__ a1g,
                                                                     float* __restrict__ p2g, unsigned char* __restrict__ a2g) {
  extern __shared__ float4 smem4[];
  ConvFwdSmem& sm = *reinterpret_cast<ConvFwdSmem*>(smem4);
  const int tid = threadIdx.x, s = blockIdx.x;
  for (int i = tid; i < kConvParams; i += kConvThreads) sm.cw[i] = P[i];
  for (int q = tid; q < kPadIn * kPadIn; q += kConvThreads) {
    const int y = q / kPadIn - 2, xx = q % kPadIn - 2;
    sm.x[q] = (y >= 0 && y < kIn && xx >= 0 && xx < kIn) ? xg[static_cast<size_t>(s) * kIn * kIn + y * kIn + xx] : 0.0f;
  }
  __syncthreads();
  const float *w1 = sm.cw + kW1, *b1 = sm.cw + kB1, *w2 = sm.cw + kW2, *b2 = sm.cw + kB2;
  // conv1 + ReLU + 2x2 max pooling: one pooled output a thread (a 6x6 patch, four sums).
  for (int r = tid; r < kC1 * kQ1; r += kConvThreads) {
    const int c = r / kQ1, py = (r / kP1) % kP1, px = r % kP1;
    float acc[4] = {0, 0, 0, 0};
    const float* xs = sm.x + (2 * py) * kPadIn + 2 * px;
    const float* wc = w1 + c * 25;
#pragma unroll
    for (int ky = 0; ky < 6; ++ky) {
      float row[6];
#pragma unroll
      for (int k = 0; k < 6; ++k) row[k] = xs[ky * kPadIn + k];
#pragma unroll
      for (int kx = 0; kx < 5; ++kx) {
        if (ky < 5) {
          const float w = wc[ky * 5 + kx];
          acc[0] += w * row[kx];
          acc[1] += w * row[kx + 1];
        }
        if (ky > 0) {
          const float w = wc[(ky - 1) * 5 + kx];
          acc[2] += w * row[kx];
          acc[3] += w * row[kx + 1];
        }
      }
    }
    int a = 0;
    float m = acc[0];
#pragma unroll
    for (int k = 1; k < 4; ++k)
      if (acc[k] > m) m = acc[k], a = k;
    const float v = fmaxf(m + b1[c], 0.0f);
    sm.p1[r] = v;
    p1g[static_cast<size_t>(s) * (kC1 * kQ1) + r] = v;
    a1g[static_cast<size_t>(s) * (kC1 * kQ1) + r] = static_cast<unsigned char>(a);
  }
  __syncthreads();
  // conv2: the four sums of each pooled output over half the input channels, a thread each.
  for (int i = tid; i < 2 * kF0; i += kConvThreads) {
    const int h = i / kF0, r = i % kF0, o = r / 25, py = (r / 5) % 5, px = r % 5;
    float acc[4] = {0, 0, 0, 0};
#pragma unroll 1
    for (int c = 3 * h; c < 3 * h + 3; ++c) {
      const float* pc = sm.p1 + c * kQ1 + 2 * py * kP1 + 2 * px;
      const float* wc = w2 + (o * kC1 + c) * 25;
#pragma unroll
      for (int ky = 0; ky < 6; ++ky) {
        float row[6];
#pragma unroll
        for (int k = 0; k < 6; ++k) row[k] = pc[ky * kP1 + k];
#pragma unroll
        for (int kx = 0; kx < 5; ++kx) {
          if (ky < 5) {
            const float w = wc[ky * 5 + kx];
            acc[0] += w * row[kx];
            acc[1] += w * row[kx + 1];
          }
          if (ky > 0) {
            const float w = wc[(ky - 1) * 5 + kx];
            acc[2] += w * row[kx];
            acc[3] += w * row[kx + 1];
          }
        }
      }
    }
    sm.part[h][r] = make_float4(acc[0], acc[1], acc[2], acc[3]);
  }
  __syncthreads();
  for (int r = tid; r < kF0; r += kConvThreads) {
    const float4 u = sm.part[0][r], v = sm.part[1][r];
    const float acc[4] = {u.x + v.x, u.y + v.y, u.z + v.z, u.w + v.w};
    int a = 0;
    float m = acc[0];
#pragma unroll
    for (int k = 1; k < 4; ++k)
      if (acc[k] > m) m = acc[k], a = k;
    p2g[static_cast<size_t>(s) * kF0 + r] = fmaxf(m + b2[r / 25], 0.0f);
    a2g[static_cast<size_t>(s) * kF0 + r] = static_cast<unsigned char>(a);
  }
}

// ---------------------------------------------------------------- 2. the linear head, a cluster per 16 samples
constexpr int kCluster = 8, kHeadSamples = 16, kHeadThreads = 512, kHeadWarps = kHeadThreads / 32;
struct Slice {
  int begin, end;
};
__host__ __device__ constexpr Slice slice(int total, int k) { return {k * total / kCluster, (k + 1) * total / kCluster}; }
constexpr int max_slice(int total) {
  int m = 0;
  for (int k = 0; k < kCluster; ++k) m = slice(total, k).end - slice(total, k).begin > m ? slice(total, k).end - slice(total, k).begin : m;
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

// The warp's sums of acc[0..15] over its lanes: lane L returns the sum of acc[L / 2] (16 shuffles,
// a fixed order).
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

// out[s][j] = act(b[j] + sum_i W[j][i] x[s][i]) for this block's rows, pushed to every block of the
// cluster. A warp a row; lanes along i.
template <int kIns, bool kRelu>
__device__ __forceinline__ void head_forward(const cg::cluster_group& cluster, const float* wr, const float* br, Slice rows,
                                             const float* x, float* out, int outs, int lane, int warp) {
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
    // Lanes 2s and 2s + 1 hold sample s: each pushes to half the cluster.
    const int s = lane >> 1, r0 = (lane & 1) * (kCluster / 2);
#pragma unroll
    for (int r = r0; r < r0 + kCluster / 2; ++r) cluster.map_shared_rank(out, r)[s * outs + rows.begin + jj] = v;
  }
}

// This cluster's partial of dW[j][i] = sum_s d[s][j] x[s][i] and db[j] = sum_s d[s][j], for this
// block's rows (global memory, rows of kIns).
template <int kIns>
__device__ __forceinline__ void head_weight_grad(const float* d, int outs, Slice rows, const float* x, float* pw, float* pb,
                                                 int tid) {
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

// din[s][i] = (act[s][i] > 0) sum_j W[j][i] d[s][j] for this block's columns; store(s, i, value).
template <int kOuts, typename Store>
__device__ __forceinline__ void head_input_grad(const float* wc, int wc_stride, const float* d, Slice cols, const float* act,
                                                int ins, int tid, Store store) {
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

template <int kIns, int kOuts>
__device__ __forceinline__ void stage_layer(const float* __restrict__ W, const float* __restrict__ b, Slice rows, Slice cols,
                                            float* wr, float* br, float* wc, int wc_stride, int tid) {
  const int nr = rows.end - rows.begin, nc = cols.end - cols.begin;
  for (int e = tid; e < nr * kIns; e += kHeadThreads) wr[e] = W[rows.begin * kIns + e];
  for (int e = tid; e < nr; e += kHeadThreads) br[e] = b[rows.begin + e];
  for (int e = tid; e < kOuts * nc; e += kHeadThreads) {
    const int j = e / nc, ii = e % nc;
    wc[j * wc_stride + ii] = W[j * kIns + cols.begin + ii];
  }
}

__global__ void __cluster_dims__(kCluster, 1, 1) __launch_bounds__(kHeadThreads, 2)
    head_kernel(const float* __restrict__ P, const float* __restrict__ p2g, const int* __restrict__ labels, float grad_scale,
                int n, float* __restrict__ partial_lin, float* __restrict__ dp2g, float* __restrict__ losses,
                float* __restrict__ correct) {
  const cg::cluster_group cluster = cg::this_cluster();
  extern __shared__ float4 smem4[];
  HeadSmem& sm = *reinterpret_cast<HeadSmem*>(smem4);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int k = static_cast<int>(cluster.block_rank()), cl = blockIdx.x / kCluster;
  const int first = cl * kHeadSamples, count = min(kHeadSamples, n - first);
  float* part = partial_lin + static_cast<size_t>(cl) * kLinParams - 0;
  const Slice r1 = slice(kF1, k), c1 = slice(kF0, k), r2 = slice(kF2, k), c2 = slice(kF1, k), r3 = slice(kF3, k),
              c3 = slice(kF2, k);
  stage_layer<kF0, kF1>(P + kW3, P + kB3, r1, c1, sm.w1r, sm.b1r, sm.w1c, kK1, tid);
  stage_layer<kF1, kF2>(P + kW4, P + kB4, r2, c2, sm.w2r, sm.b2r, sm.w2c, kK2, tid);
  stage_layer<kF2, kF3>(P + kW5, P + kB5, r3, c3, sm.w3r, sm.b3r, sm.w3c, kK3, tid);
  for (int e = tid; e < kHeadSamples * kF0; e += kHeadThreads)
    sm.x0[e] = e < count * kF0 ? p2g[static_cast<size_t>(first) * kF0 + e] : 0.0f;
  cluster.sync();  // every block has started (its shared memory may be written) and staged

  head_forward<kF0, true>(cluster, sm.w1r, sm.b1r, r1, sm.x0, sm.h1, kF1, lane, warp);
  cluster.sync();
  head_forward<kF1, true>(cluster, sm.w2r, sm.b2r, r2, sm.h1, sm.h2, kF2, lane, warp);
  cluster.sync();
  head_forward<kF2, false>(cluster, sm.w3r, sm.b3r, r3, sm.h2, sm.lg, kF3, lane, warp);
  cluster.sync();

  // The loss, in every block (the same values): the logits become dL/dlogits; none past count.
  if (tid < kHeadSamples) {
    float* z = sm.lg + tid * kF3;
    float best = z[0];
    int best_index = 0;
    for (int c = 1; c < kF3; ++c)
      if (z[c] > best) best = z[c], best_index = c;
    float sum = 0.0f;
    for (int c = 0; c < kF3; ++c) sum += expf(z[c] - best);
    const float log_z = logf(sum);
    const int label = tid < count ? labels[first + tid] : 0;
    if (k == 0 && tid < count) {
      losses[first + tid] = (best - z[label]) + log_z;
      correct[first + tid] = best_index == label ? 1.0f : 0.0f;
    }
    for (int c = 0; c < kF3; ++c)
      z[c] = tid < count ? (expf((z[c] - best) - log_z) - (c == label ? 1.0f : 0.0f)) * grad_scale : 0.0f;
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
  cluster.sync();
  head_weight_grad<kF0>(sm.dh1, kF1, r1, sm.x0, part + (kW3 - kConvParams), part + (kB3 - kConvParams), tid);
  head_input_grad<kF1>(sm.w1c, kK1, sm.dh1, c1, sm.x0, kF0, tid, [&](int s, int i, float v) {
    if (s < count) dp2g[static_cast<size_t>(first + s) * kF0 + i] = v;
  });
}

// ---------------------------------------------------------------- 3. conv backward, a block per group of samples
constexpr int kConvBwdMaxBlocks = 264;
struct ConvBwdSmem {
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

__global__ void __launch_bounds__(kConvThreads, 2)
    conv_backward_kernel(const float* __restrict__ xg, const float* __restrict__ P, const float* __restrict__ p1g,
                         const unsigned char* __restrict__ a1g, const float* __restrict__ dp2g,
                         const unsigned char* __restrict__ a2g, float* __restrict__ partial_conv, int n) {
  extern __shared__ float4 smem4[];
  ConvBwdSmem& sm = *reinterpret_cast<ConvBwdSmem*>(smem4);
  const int tid = threadIdx.x;
  for (int i = tid; i < kC2 * kC1 * 25; i += kConvThreads) sm.w2[i] = P[kW2 + i];
  for (int i = tid; i < kConvParams; i += kConvThreads) sm.g[i] = 0.0f;
  for (int s = blockIdx.x; s < n; s += gridDim.x) {
    __syncthreads();  // the last sample's readers are done
    for (int q = tid; q < kPadIn * kPadIn; q += kConvThreads) {
      const int y = q / kPadIn - 2, xx = q % kPadIn - 2;
      sm.x[q] = (y >= 0 && y < kIn && xx >= 0 && xx < kIn) ? xg[static_cast<size_t>(s) * kIn * kIn + y * kIn + xx] : 0.0f;
    }
    for (int q = tid; q < kC1 * kQ1; q += kConvThreads) {
      sm.p1[q] = p1g[static_cast<size_t>(s) * kC1 * kQ1 + q];
      const int a = a1g[static_cast<size_t>(s) * kC1 * kQ1 + q], r = q % kQ1;
      sm.off1[q] = (2 * (r / kP1) + (a >> 1)) * kPadIn + 2 * (r % kP1) + (a & 1);
    }
    for (int r = tid; r < kF0; r += kConvThreads) {
      sm.dp2[r] = dp2g[static_cast<size_t>(s) * kF0 + r];
      const int a = a2g[static_cast<size_t>(s) * kF0 + r], py = (r / 5) % 5, px = r % 5;
      sm.off2[r] = (2 * py + (a >> 1)) * kP1 + 2 * px + (a & 1);
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
      if (tap < 25) sm.g[kW1 + c * 25 + tap] += v;
      else sm.g[kB1 + c] += v;
    }
  }
  __syncthreads();
  for (int i = tid; i < kConvParams; i += kConvThreads) partial_conv[static_cast<size_t>(blockIdx.x) * kConvParams + i] = sm.g[i];
}

// ---------------------------------------------------------------- 4. finish: the sums over partials
constexpr int kFinishThreads = 256, kFinishGroups = kFinishThreads / 32;
constexpr int kConvFinishBlocks = (kConvParams + 31) / 32;  // 32 parameters a block, 8 groups of partials
constexpr int kLinFinishBlocks = (kLinParams + 31) / 32;

// grad[p] = sum over k < count of partial[k][p]: a block per 32 parameters, warp w summing the
// w-th eighth of the partials (coalesced over the parameters), then the eighths in order.
__device__ __forceinline__ void sum_partials(const float* __restrict__ partial, int count, int stride, int p0, int params,
                                             float* __restrict__ grad, float (&part)[kFinishGroups][32]) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, p = p0 + lane;
  float g = 0.0f;
  if (p < params) {
#pragma unroll 4
    for (int k = w * count / kFinishGroups; k < (w + 1) * count / kFinishGroups; ++k)
      g += partial[static_cast<size_t>(k) * stride + p];
  }
  part[w][lane] = g;
  __syncthreads();
  if (w == 0 && p < params) {
    float t = part[0][lane];
    for (int k = 1; k < kFinishGroups; ++k) t += part[k][lane];
    grad[p] = t;
  }
}

__global__ void __launch_bounds__(kFinishThreads) finish_kernel(const float* __restrict__ partial_conv, int conv_blocks,
                                                                 const float* __restrict__ partial_lin, int clusters,
                                                                 const float* __restrict__ losses,
                                                                 const float* __restrict__ correct, int n,
                                                                 float* __restrict__ grad, double* __restrict__ sums) {
  __shared__ float part[kFinishGroups][32];
  const int tid = threadIdx.x, lane = tid & 31;
  if (blockIdx.x < kConvFinishBlocks) {
    sum_partials(partial_conv, conv_blocks, kConvParams, blockIdx.x * 32, kConvParams, grad, part);
    return;
  }
  if (blockIdx.x < kConvFinishBlocks + kLinFinishBlocks) {
    sum_partials(partial_lin, clusters, kLinParams, (blockIdx.x - kConvFinishBlocks) * 32, kLinParams, grad + kConvParams,
                 part);
    return;
  }
  __shared__ double wl[kFinishGroups], wc[kFinishGroups];
  double l = 0.0, c = 0.0;
  for (int i = tid; i < n; i += kFinishThreads) l += losses[i], c += correct[i];
  for (int off = 16; off > 0; off /= 2) l += __shfl_down_sync(0xffffffffu, l, off), c += __shfl_down_sync(0xffffffffu, c, off);
  if (lane == 0) wl[tid / 32] = l, wc[tid / 32] = c;
  __syncthreads();
  if (tid == 0) {
    double tl = 0.0, tc = 0.0;
    for (int w = 0; w < kFinishGroups; ++w) tl += wl[w], tc += wc[w];
    sums[0] += tl;
    sums[1] += tc;
  }
}

__global__ void sgd_kernel(const float* __restrict__ grad, float* __restrict__ P, float* __restrict__ velocity, float lr,
                           float momentum, float weight_decay) {
  const int p = blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= kParams) return;
  const float g = grad[p] + weight_decay * P[p];
  const float v = momentum * velocity[p] + g;
  velocity[p] = v;
  P[p] -= lr * (g + momentum * v);
}

// ---------------------------------------------------------------- host reference, double precision
struct HostGrads {
  double loss = 0;
  std::vector<double> g = std::vector<double>(kParams, 0.0);
};

HostGrads reference_step(const std::vector<float>& P, const float* x, const int* labels, int n) {
  HostGrads out;
  auto w = [&](int off, int i) { return static_cast<double>(P[off + i]); };
  for (int s = 0; s < n; ++s) {
    const float* xs = x + static_cast<size_t>(s) * kIn * kIn;
    auto xp = [&](int y, int xx) { return (y >= 0 && y < kIn && xx >= 0 && xx < kIn) ? double(xs[y * kIn + xx]) : 0.0; };
    std::vector<double> p1(kC1 * kQ1), p2(kF0), h1(kF1), h2(kF2), lg(kF3);
    std::vector<int> a1(kC1 * kQ1), a2(kF0);
    for (int c = 0; c < kC1; ++c)
      for (int q = 0; q < kQ1; ++q) {
        double m = -1e300;
        for (int a = 0; a < 4; ++a) {
          const int y = 2 * (q / kP1) + (a >> 1), xx = 2 * (q % kP1) + (a & 1);
          double acc = 0;
          for (int ky = 0; ky < 5; ++ky)
            for (int kx = 0; kx < 5; ++kx) acc += w(kW1, c * 25 + ky * 5 + kx) * xp(y + ky - 2, xx + kx - 2);
          if (a == 0 || acc > m) m = acc, a1[c * kQ1 + q] = a;
        }
        p1[c * kQ1 + q] = std::max(m + w(kB1, c), 0.0);
      }
    for (int o = 0; o < kC2; ++o)
      for (int r = 0; r < 25; ++r) {
        double m = -1e300;
        for (int a = 0; a < 4; ++a) {
          const int oy = 2 * (r / 5) + (a >> 1), ox = 2 * (r % 5) + (a & 1);
          double acc = 0;
          for (int c = 0; c < kC1; ++c)
            for (int ky = 0; ky < 5; ++ky)
              for (int kx = 0; kx < 5; ++kx) acc += w(kW2, (o * kC1 + c) * 25 + ky * 5 + kx) * p1[c * kQ1 + (oy + ky) * kP1 + ox + kx];
          if (a == 0 || acc > m) m = acc, a2[o * 25 + r] = a;
        }
        p2[o * 25 + r] = std::max(m + w(kB2, o), 0.0);
      }
    auto dense = [&](int wo, int bo, const std::vector<double>& in, std::vector<double>& o, bool relu) {
      for (size_t j = 0; j < o.size(); ++j) {
        double acc = w(bo, static_cast<int>(j));
        for (size_t i = 0; i < in.size(); ++i) acc += w(wo, static_cast<int>(j * in.size() + i)) * in[i];
        o[j] = relu ? std::max(acc, 0.0) : acc;
      }
    };
    dense(kW3, kB3, p2, h1, true);
    dense(kW4, kB4, h1, h2, true);
    dense(kW5, kB5, h2, lg, false);
    double m = *std::max_element(lg.begin(), lg.end()), sum = 0;
    for (double v : lg) sum += std::exp(v - m);
    out.loss += (std::log(sum) + m - lg[labels[s]]) / n;
    std::vector<double> d3(kF3), dh2(kF2), dh1(kF1), dp2(kF0), dp1(kC1 * kQ1, 0.0);
    for (int k = 0; k < kF3; ++k) d3[k] = (std::exp(lg[k] - m) / sum - (k == labels[s] ? 1.0 : 0.0)) / n;
    auto back = [&](int wo, int bo, const std::vector<double>& d, const std::vector<double>& in, std::vector<double>& din) {
      for (size_t j = 0; j < d.size(); ++j) {
        out.g[bo + j] += d[j];
        for (size_t i = 0; i < in.size(); ++i) out.g[wo + j * in.size() + i] += d[j] * in[i];
      }
      for (size_t i = 0; i < in.size(); ++i) {
        double acc = 0;
        for (size_t j = 0; j < d.size(); ++j) acc += w(wo, static_cast<int>(j * in.size() + i)) * d[j];
        din[i] = in[i] > 0 ? acc : 0.0;
      }
    };
    back(kW5, kB5, d3, h2, dh2);
    back(kW4, kB4, dh2, h1, dh1);
    back(kW3, kB3, dh1, p2, dp2);
    for (int o = 0; o < kC2; ++o)
      for (int r = 0; r < 25; ++r) {
        const double g = dp2[o * 25 + r];
        const int a = a2[o * 25 + r], oy = 2 * (r / 5) + (a >> 1), ox = 2 * (r % 5) + (a & 1);
        out.g[kB2 + o] += g;
        for (int c = 0; c < kC1; ++c)
          for (int ky = 0; ky < 5; ++ky)
            for (int kx = 0; kx < 5; ++kx) {
              out.g[kW2 + (o * kC1 + c) * 25 + ky * 5 + kx] += g * p1[c * kQ1 + (oy + ky) * kP1 + ox + kx];
              dp1[c * kQ1 + (oy + ky) * kP1 + ox + kx] += g * w(kW2, (o * kC1 + c) * 25 + ky * 5 + kx);
            }
      }
    for (int c = 0; c < kC1; ++c)
      for (int q = 0; q < kQ1; ++q) {
        const double g = p1[c * kQ1 + q] > 0 ? dp1[c * kQ1 + q] : 0.0;
        const int a = a1[c * kQ1 + q], y = 2 * (q / kP1) + (a >> 1), xx = 2 * (q % kP1) + (a & 1);
        out.g[kB1 + c] += g;
        for (int ky = 0; ky < 5; ++ky)
          for (int kx = 0; kx < 5; ++kx) out.g[kW1 + c * 25 + ky * 5 + kx] += g * xp(y + ky - 2, xx + kx - 2);
      }
  }
  return out;
}


double rel_error(const std::vector<float>& got, const std::vector<double>& ref, int begin, int end) {
  double num = 0, den = 0;
  for (int i = begin; i < end; ++i) num += (got[i] - ref[i]) * (got[i] - ref[i]), den += ref[i] * ref[i];
  return std::sqrt(num / std::max(den, 1e-300));
}

constexpr int kMaxN = 8192;
struct Device {
  float *x, *P, *velocity, *p1, *p2, *dp2, *partial_conv, *partial_lin, *losses, *correct, *grad;
  unsigned char *a1, *a2;
  int* labels;
  double* sums;
};

int conv_blocks(int n) { return std::min(n, kConvBwdMaxBlocks); }
int head_clusters(int n) { return (n + kHeadSamples - 1) / kHeadSamples; }

void launch_conv_forward(const Device& d, int n, cudaStream_t st) {
  conv_forward_kernel<<<n, kConvThreads, sizeof(ConvFwdSmem), st>>>(d.x, d.P, d.p1, d.a1, d.p2, d.a2);
}
void launch_head(const Device& d, int n, cudaStream_t st) {
  head_kernel<<<head_clusters(n) * kCluster, kHeadThreads, sizeof(HeadSmem), st>>>(d.P, d.p2, d.labels, 1.0f / n, n,
                                                                                  d.partial_lin, d.dp2, d.losses, d.correct);
}
void launch_conv_backward(const Device& d, int n, cudaStream_t st) {
  conv_backward_kernel<<<conv_blocks(n), kConvThreads, sizeof(ConvBwdSmem), st>>>(d.x, d.P, d.p1, d.a1, d.dp2, d.a2,
                                                                                   d.partial_conv, n);
}
void launch_finish(const Device& d, int n, cudaStream_t st) {
  finish_kernel<<<kConvFinishBlocks + kLinFinishBlocks + 1, kFinishThreads, 0, st>>>(
      d.partial_conv, conv_blocks(n), d.partial_lin, head_clusters(n), d.losses, d.correct, n, d.grad, d.sums);
}
void launch_sgd(const Device& d, cudaStream_t st, float lr) {
  sgd_kernel<<<(kParams + 255) / 256, 256, 0, st>>>(d.grad, d.P, d.velocity, lr, 0.9f, 5e-4f);
}
void launch_step(const Device& d, int n, cudaStream_t st, bool update) {
  launch_conv_forward(d, n, st);
  launch_head(d, n, st);
  launch_conv_backward(d, n, st);
  launch_finish(d, n, st);
  if (update) launch_sgd(d, st, 0.0f);
  CK(cudaGetLastError());
}

// Mean time of one launch of `what` (a graph of 20 in a row, replayed).
template <typename F>
double time_graph(F what, int reps) {
  cudaStream_t stream;
  CK(cudaStreamCreate(&stream));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  for (int i = 0; i < 20; ++i) what(stream);
  CK(cudaStreamEndCapture(stream, &graph));
  CK(cudaGraphInstantiate(&exec, graph, 0));
  for (int i = 0; i < 3; ++i) CK(cudaGraphLaunch(exec, stream));
  CK(cudaStreamSynchronize(stream));
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  CK(cudaEventRecord(a, stream));
  for (int i = 0; i < reps; ++i) CK(cudaGraphLaunch(exec, stream));
  CK(cudaEventRecord(b, stream));
  CK(cudaEventSynchronize(b));
  float ms = 0;
  CK(cudaEventElapsedTime(&ms, a, b));
  CK(cudaGraphExecDestroy(exec));
  CK(cudaGraphDestroy(graph));
  CK(cudaStreamDestroy(stream));
  return 1000.0 * ms / (reps * 20);
}

void measure(const Device& d, int n) {
  const int reps = n >= 4096 ? 5 : 30;
  const double k1 = time_graph([&](cudaStream_t st) { launch_conv_forward(d, n, st); }, reps);
  const double k2 = time_graph([&](cudaStream_t st) { launch_head(d, n, st); }, reps);
  const double k3 = time_graph([&](cudaStream_t st) { launch_conv_backward(d, n, st); }, reps);
  const double k4 = time_graph([&](cudaStream_t st) { launch_finish(d, n, st); }, reps);
  const double k5 = time_graph([&](cudaStream_t st) { launch_sgd(d, st, 0.0f); }, reps);
  const double step = time_graph([&](cudaStream_t st) { launch_step(d, n, st, true); }, reps);
  std::printf("n=%5d: step %8.2f us (%6.0fk images/s); conv fwd %7.2f, head %7.2f (%d clusters), conv bwd %7.2f (%d blocks), "
              "finish %6.2f, sgd %5.2f us\n",
              n, step, n / step * 1e3, k1, k2, head_clusters(n), k3, conv_blocks(n), k4, k5);
}

}  // namespace

int main(int argc, char** argv) {
  const bool check_only = argc > 1 && std::string(argv[1]) == "check";
  std::mt19937 rng(1);
  std::vector<float> P(kParams);
  auto fill = [&](int off, int count, int fan_in) {
    std::uniform_real_distribution<float> u(-1.0f / std::sqrt(float(fan_in)), 1.0f / std::sqrt(float(fan_in)));
    for (int i = 0; i < count; ++i) P[off + i] = u(rng);
  };
  fill(kW1, kC1 * 25, 25), fill(kB1, kC1, 25), fill(kW2, kC2 * 150, 150), fill(kB2, kC2, 150);
  fill(kW3, kF1 * kF0, kF0), fill(kB3, kF1, kF0), fill(kW4, kF2 * kF1, kF1), fill(kB4, kF2, kF1);
  fill(kW5, kF3 * kF2, kF2), fill(kB5, kF3, kF2);
  std::vector<float> xs(static_cast<size_t>(kMaxN) * kIn * kIn);
  std::uniform_real_distribution<float> ux(-0.42f, 2.8f);  // normalised MNIST's range
  for (float& v : xs) v = ux(rng);
  std::vector<int> labels(kMaxN);
  for (int i = 0; i < kMaxN; ++i) labels[i] = static_cast<int>(rng() % 10);

  Device d{};
  const size_t N = kMaxN;
  CK(cudaMalloc(&d.x, xs.size() * sizeof(float)));
  CK(cudaMalloc(&d.P, kParams * sizeof(float)));
  CK(cudaMalloc(&d.velocity, kParams * sizeof(float)));
  CK(cudaMalloc(&d.p1, N * kC1 * kQ1 * sizeof(float)));
  CK(cudaMalloc(&d.a1, N * kC1 * kQ1));
  CK(cudaMalloc(&d.p2, N * kF0 * sizeof(float)));
  CK(cudaMalloc(&d.a2, N * kF0));
  CK(cudaMalloc(&d.dp2, N * kF0 * sizeof(float)));
  CK(cudaMalloc(&d.partial_conv, static_cast<size_t>(kConvBwdMaxBlocks) * kConvParams * sizeof(float)));
  CK(cudaMalloc(&d.partial_lin, static_cast<size_t>(head_clusters(kMaxN)) * kLinParams * sizeof(float)));
  CK(cudaMalloc(&d.losses, N * sizeof(float)));
  CK(cudaMalloc(&d.correct, N * sizeof(float)));
  CK(cudaMalloc(&d.grad, kParams * sizeof(float)));
  CK(cudaMalloc(&d.labels, N * sizeof(int)));
  CK(cudaMalloc(&d.sums, 2 * sizeof(double)));
  CK(cudaMemcpy(d.x, xs.data(), xs.size() * sizeof(float), cudaMemcpyHostToDevice));
  CK(cudaMemcpy(d.P, P.data(), kParams * sizeof(float), cudaMemcpyHostToDevice));
  CK(cudaMemset(d.velocity, 0, kParams * sizeof(float)));
  CK(cudaMemcpy(d.labels, labels.data(), N * sizeof(int), cudaMemcpyHostToDevice));
  CK(cudaFuncSetAttribute(conv_forward_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(sizeof(ConvFwdSmem))));
  CK(cudaFuncSetAttribute(head_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(sizeof(HeadSmem))));
  CK(cudaFuncSetAttribute(conv_backward_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(sizeof(ConvBwdSmem))));

  int fwd_blocks = 0, bwd_blocks = 0, head_blocks = 0, clusters = 0;
  CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&fwd_blocks, conv_forward_kernel, kConvThreads, sizeof(ConvFwdSmem)));
  CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&bwd_blocks, conv_backward_kernel, kConvThreads, sizeof(ConvBwdSmem)));
  CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&head_blocks, head_kernel, kHeadThreads, sizeof(HeadSmem)));
  {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(kCluster * 64);
    cfg.blockDim = dim3(kHeadThreads);
    cfg.dynamicSmemBytes = sizeof(HeadSmem);
    CK(cudaOccupancyMaxActiveClusters(&clusters, head_kernel, &cfg));
  }
  cudaFuncAttributes fa{};
  auto regs = [&](const void* f) { CK(cudaFuncGetAttributes(&fa, f)); return fa.numRegs; };
  std::printf("shared memory: conv fwd %zu B (%d blocks an SM, %d regs), head %zu B (%d an SM, %d regs, %d clusters of 8 at once), "
              "conv bwd %zu B (%d an SM, %d regs)\n",
              sizeof(ConvFwdSmem), fwd_blocks, regs((const void*)conv_forward_kernel), sizeof(HeadSmem), head_blocks,
              regs((const void*)head_kernel), clusters, sizeof(ConvBwdSmem), bwd_blocks, regs((const void*)conv_backward_kernel));

  bool all_ok = true;
  for (int n : check_only ? std::vector<int>{1, 7, 70} : std::vector<int>{1, 7, 70, 257, 300}) {
    const HostGrads ref = reference_step(P, xs.data(), labels.data(), n);
    CK(cudaMemset(d.sums, 0, 2 * sizeof(double)));
    launch_step(d, n, nullptr, false);
    CK(cudaDeviceSynchronize());
    std::vector<float> g(kParams);
    double sums[2];
    CK(cudaMemcpy(g.data(), d.grad, kParams * sizeof(float), cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(sums, d.sums, sizeof(sums), cudaMemcpyDeviceToHost));
    const double loss = sums[0] / n;
    const int bounds[] = {kW1, kB1, kW2, kB2, kW3, kB3, kW4, kB4, kW5, kB5, kParams};
    const char* names[] = {"conv1.w", "conv1.b", "conv2.w", "conv2.b", "fc1.w", "fc1.b", "fc2.w", "fc2.b", "fc3.w", "fc3.b"};
    double worst = 0;
    std::printf("check n=%d: loss %.6f (host %.6f), correct %.0f", n, loss, ref.loss, sums[1]);
    for (int t = 0; t < 10; ++t) {
      const double e = rel_error(g, ref.g, bounds[t], bounds[t + 1]);
      worst = std::max(worst, e);
      std::printf(" %s %.1e", names[t], e);
    }
    const bool ok = worst < 1e-4 && std::abs(loss - ref.loss) < 1e-5 * std::max(1.0, ref.loss);
    all_ok = all_ok && ok;
    std::printf(" -> %s\n", ok ? "ok" : "WRONG");
    // Determinism: a second run gives the same bits.
    launch_step(d, n, nullptr, false);
    std::vector<float> g2(kParams);
    CK(cudaMemcpy(g2.data(), d.grad, kParams * sizeof(float), cudaMemcpyDeviceToHost));
    if (g2 != g) std::printf("  NOT bit for bit on a second run\n"), all_ok = false;
  }
  std::printf("gradient check: %s\n", all_ok ? "all ok" : "FAILED");
  if (!check_only)
    for (int n : {64, 128, 256, 257, 512, 1000, 2048, 4096, 8192}) measure(d, n);
  return all_ok ? 0 : 1;
}
