// A probe, not product code: what could a fused small-network training step do for issue 20's 70%
// line at lenet5's batch 257? The layered step runs 27 graph nodes there, 21 of them dependent, and
// its fixed cost (about 79 us) is what the line cannot afford (docs/BENCHMARKS.md, twenty-second
// session). This file runs lenet5's whole step in three kernels:
//   1. sample_kernel: one block per S samples runs the forward, the loss and the input-gradient path
//      (linear layers, conv2's pooled gradient, conv2's input gradient masked by conv1's ReLU and
//      pooling) in shared memory, and saves what the weight gradients need;
//   2. partial_kernel: the weight and bias gradients of all five layers as partial sums over chunks
//      of samples, one block per (task, chunk), in a fixed order (no atomics);
//   3. update_kernel: one thread per parameter sums the chunks in order and applies SGD with
//      Nesterov momentum and weight decay (lenet5's recipe) - or, for the check, writes the gradient.
// It checks the loss and every gradient against a double-precision host reference, then times
// each kernel and the three-kernel graph at several batch sizes. Kernels 1 and 2 are first drafts:
// the timings say where the time goes, not how fast a fused step can be. Not built by CMake.
//
// Build and run on the device machine:
//   nvcc -O3 -arch=sm_90 -std=c++17 bench/fused_lenet5_step_probe.cu -o /tmp/probe && /tmp/probe
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#define CK(x)                                                                                   \
  do {                                                                                          \
    cudaError_t e_ = (x);                                                                       \
    if (e_ != cudaSuccess) {                                                                    \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                             \
    }                                                                                           \
  } while (0)

namespace {

constexpr int kIn = 28, kPadIn = 32;        // conv1: 1 -> 6, 5x5, pad 2: 28x28, pooled to 14x14
constexpr int kC1 = 6, kP1 = 14, kQ1 = kP1 * kP1;
constexpr int kC2 = 16, kP2 = 5;  // conv2: 6 -> 16, 5x5: 14 -> 10, pooled to 5x5
constexpr int kF0 = kC2 * kP2 * kP2;        // 400
constexpr int kF1 = 120, kF2 = 84, kF3 = 10;

// The flat parameter buffer, in PyTorch's state_dict order.
constexpr int kW1 = 0, kB1 = kW1 + kC1 * 25, kW2 = kB1 + kC1, kB2 = kW2 + kC2 * kC1 * 25, kW3 = kB2 + kC2,
              kB3 = kW3 + kF1 * kF0, kW4 = kB3 + kF1, kB4 = kW4 + kF2 * kF1, kW5 = kB4 + kF2, kB5 = kW5 + kF3 * kF2,
              kParams = kB5 + kF3;  // 61,706

// What sample_kernel saves a sample (floats): pool1's output and its masked gradient, pool2's output
// and its masked gradient, fc1's and fc2's outputs and masked gradients, dlogits; and the argmax
// bytes of both poolings.
constexpr int kSP1 = 0, kSDP1 = kSP1 + kC1 * kQ1, kSP2 = kSDP1 + kC1 * kQ1, kSDP2 = kSP2 + kF0, kSH1 = kSDP2 + kF0,
              kSDH1 = kSH1 + kF1, kSH2 = kSDH1 + kF1, kSDH2 = kSH2 + kF2, kSD3 = kSDH2 + kF2, kSaved = kSD3 + kF3 + 2;
constexpr int kArg = kC1 * kQ1 + kF0;  // bytes: pool1's, then pool2's

struct SampleSmem {
  float x[kPadIn * kPadIn];
  float p1[kC1 * kQ1];
  float p2[kF0];
  float h1[kF1], h2[kF2], lg[kF3];
  float dh2[kF2], dh1[kF1], dp2[kF0];
  float dc2[kC2 * 18 * 18];  // conv2's gradient before pooling, 4 zeros on each side
  unsigned char a1[kC1 * kQ1], a2[kF0];
};
constexpr int kConvWeights = kB2 + kC2 + 4;  // conv weights and biases staged first, rounded up to 4 floats

template <int S, int kThreads>
__global__ void __launch_bounds__(kThreads) sample_kernel(const float* __restrict__ x, const int* __restrict__ labels,
                                                          const float* __restrict__ P, float* __restrict__ saved,
                                                          unsigned char* __restrict__ argmax, float* __restrict__ losses,
                                                          int n) {
  extern __shared__ float4 smem4[];
  float* cw = reinterpret_cast<float*>(smem4);
  const float *w1 = cw + kW1, *b1 = cw + kB1, *w2 = cw + kW2, *b2 = cw + kB2;
  SampleSmem* sm = reinterpret_cast<SampleSmem*>(cw + kConvWeights);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, warps = kThreads / 32;
  const int first = blockIdx.x * S;
  const int count = min(S, n - first);

  for (int i = tid; i < kB2 + kC2; i += kThreads) cw[i] = P[i];
  for (int i = tid; i < S * kPadIn * kPadIn; i += kThreads) {
    const int s = i / (kPadIn * kPadIn), q = i % (kPadIn * kPadIn), y = q / kPadIn - 2, xx = q % kPadIn - 2;
    float v = 0.0f;
    if (s < count && y >= 0 && y < kIn && xx >= 0 && xx < kIn) v = x[static_cast<size_t>(first + s) * kIn * kIn + y * kIn + xx];
    sm[s].x[q] = v;
  }
  for (int i = tid; i < S * kC2 * 18 * 18; i += kThreads) sm[i / (kC2 * 324)].dc2[i % (kC2 * 324)] = 0.0f;
  __syncthreads();

  // conv1 + ReLU + 2x2 max pooling: one pooled output a thread (6 rows of 6 inputs, four sums).
  for (int i = tid; i < S * kC1 * kQ1; i += kThreads) {
    const int s = i / (kC1 * kQ1), r = i % (kC1 * kQ1), c = r / kQ1, py = (r / kP1) % kP1, px = r % kP1;
    float acc[4] = {0, 0, 0, 0};
    const float* xs = sm[s].x + (2 * py) * kPadIn + 2 * px;
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
    sm[s].p1[r] = fmaxf(m + b1[c], 0.0f);
    sm[s].a1[r] = static_cast<unsigned char>(a);
  }
  __syncthreads();

  // conv2 + ReLU + 2x2 max pooling: one pooled output a thread.
  for (int i = tid; i < S * kF0; i += kThreads) {
    const int s = i / kF0, r = i % kF0, o = r / 25, py = (r / 5) % 5, px = r % 5;
    float acc[4] = {0, 0, 0, 0};
    const float* wo = w2 + o * kC1 * 25;
#pragma unroll 1
    for (int c = 0; c < kC1; ++c) {
      const float* pc = sm[s].p1 + c * kQ1 + 2 * py * kP1 + 2 * px;
      const float* wc = wo + c * 25;
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
    int a = 0;
    float m = acc[0];
#pragma unroll
    for (int k = 1; k < 4; ++k)
      if (acc[k] > m) m = acc[k], a = k;
    sm[s].p2[r] = fmaxf(m + b2[o], 0.0f);
    sm[s].a2[r] = static_cast<unsigned char>(a);
  }
  __syncthreads();

  // Linear layers: a warp per output row, lanes along the row (a row read once for the S samples).
  auto dense = [&](const float* __restrict__ Wm, const float* __restrict__ b, int outs, int ins, auto in_of, auto out_of,
                   bool relu) {
    for (int j = warp; j < outs; j += warps) {
      float acc[S];
#pragma unroll
      for (int s = 0; s < S; ++s) acc[s] = 0.0f;
#pragma unroll 4
      for (int i = lane; i < ins; i += 32) {
        const float w = __ldg(Wm + j * ins + i);
#pragma unroll
        for (int s = 0; s < S; ++s) acc[s] += w * in_of(s)[i];
      }
#pragma unroll
      for (int s = 0; s < S; ++s) {
        float v = acc[s];
        for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
        if (lane == 0) out_of(s)[j] = relu ? fmaxf(v + b[j], 0.0f) : v + b[j];
      }
    }
    __syncthreads();
  };
  dense(P + kW3, P + kB3, kF1, kF0, [&](int s) { return sm[s].p2; }, [&](int s) { return sm[s].h1; }, true);
  dense(P + kW4, P + kB4, kF2, kF1, [&](int s) { return sm[s].h1; }, [&](int s) { return sm[s].h2; }, true);
  dense(P + kW5, P + kB5, kF3, kF2, [&](int s) { return sm[s].h2; }, [&](int s) { return sm[s].lg; }, false);

  // Softmax cross-entropy; the logits become dlogits (the batch mean's gradient). A warp a sample.
  for (int s = warp; s < S; s += warps) {
    if (s >= count) continue;
    float v = lane < kF3 ? sm[s].lg[lane] : -INFINITY, m = v;
    for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
    float e = lane < kF3 ? __expf(v - m) : 0.0f, sum = e;
    for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    const int label = labels[first + s];
    if (lane == 0) losses[first + s] = logf(sum) + m - sm[s].lg[label];
    if (lane < kF3) sm[s].lg[lane] = (e / sum - (lane == label ? 1.0f : 0.0f)) / n;
  }
  __syncthreads();

  // Backward through the linear layers: a thread an input, down W's columns (coalesced across threads).
  auto dense_t = [&](const float* __restrict__ Wm, int outs, int ins, auto dout_of, auto din_of, auto act_of) {
    for (int i = tid; i < S * ins; i += kThreads) {
      const int s = i / ins, k = i % ins;
      float acc = 0.0f;
      const float* d = dout_of(s);
#pragma unroll 8
      for (int j = 0; j < outs; ++j) acc += __ldg(Wm + j * ins + k) * d[j];
      din_of(s)[k] = act_of(s)[k] > 0.0f ? acc : 0.0f;
    }
    __syncthreads();
  };
  dense_t(P + kW5, kF3, kF2, [&](int s) { return sm[s].lg; }, [&](int s) { return sm[s].dh2; }, [&](int s) { return sm[s].h2; });
  dense_t(P + kW4, kF2, kF1, [&](int s) { return sm[s].dh2; }, [&](int s) { return sm[s].dh1; }, [&](int s) { return sm[s].h1; });
  dense_t(P + kW3, kF1, kF0, [&](int s) { return sm[s].dh1; }, [&](int s) { return sm[s].dp2; }, [&](int s) { return sm[s].p2; });
  for (int i = tid; i < S * kF0; i += kThreads) {
    const int s = i / kF0, r = i % kF0, o = r / 25, py = (r / 5) % 5, px = r % 5, a = sm[s].a2[r];
    sm[s].dc2[o * 324 + (4 + 2 * py + (a >> 1)) * 18 + 4 + 2 * px + (a & 1)] = sm[s].dp2[r];
  }
  __syncthreads();

  // conv2's input gradient, masked by conv1's ReLU (pool1's output > 0); two adjacent outputs a thread.
  for (int i = tid; i < S * kC1 * kP1 * (kP1 / 2); i += kThreads) {
    const int s = i / (kC1 * kP1 * 7), r = i % (kC1 * kP1 * 7), c = r / (kP1 * 7), y = (r / 7) % kP1, x0 = 2 * (r % 7);
    float acc0 = 0.0f, acc1 = 0.0f;
#pragma unroll 1
    for (int o = 0; o < kC2; ++o) {
      const float* wo = w2 + (o * kC1 + c) * 25;
      const float* d = sm[s].dc2 + o * 324;
#pragma unroll
      for (int ky = 0; ky < 5; ++ky) {
        const float* row = d + (y - ky + 4) * 18 + x0;
        float v[6];
#pragma unroll
        for (int k = 0; k < 6; ++k) v[k] = row[k];
#pragma unroll
        for (int kx = 0; kx < 5; ++kx) {
          const float w = wo[ky * 5 + kx];
          acc0 += w * v[4 - kx];
          acc1 += w * v[5 - kx];
        }
      }
    }
    if (s < count) {
      float* o = saved + static_cast<size_t>(first + s) * kSaved;
      const int q = c * kQ1 + y * kP1 + x0;
      o[kSDP1 + q] = sm[s].p1[q] > 0.0f ? acc0 : 0.0f;
      o[kSDP1 + q + 1] = sm[s].p1[q + 1] > 0.0f ? acc1 : 0.0f;
    }
  }
  // The rest of what the weight gradients need.
  for (int s = 0; s < count; ++s) {
    float* o = saved + static_cast<size_t>(first + s) * kSaved;
    unsigned char* a = argmax + static_cast<size_t>(first + s) * kArg;
    for (int i = tid; i < kC1 * kQ1; i += kThreads) o[kSP1 + i] = sm[s].p1[i], a[i] = sm[s].a1[i];
    for (int i = tid; i < kF0; i += kThreads) o[kSP2 + i] = sm[s].p2[i], o[kSDP2 + i] = sm[s].dp2[i], a[kC1 * kQ1 + i] = sm[s].a2[i];
    for (int i = tid; i < kF1; i += kThreads) o[kSH1 + i] = sm[s].h1[i], o[kSDH1 + i] = sm[s].dh1[i];
    for (int i = tid; i < kF2; i += kThreads) o[kSH2 + i] = sm[s].h2[i], o[kSDH2 + i] = sm[s].dh2[i];
    for (int i = tid; i < kF3; i += kThreads) o[kSD3 + i] = sm[s].lg[i];
  }
}

// ---- weight gradients: partial sums over chunks of kChunk samples ----
constexpr int kGroup = 8;  // samples staged at a time (conv tasks); a chunk (kChunk samples) is a template argument
constexpr int kPartialThreads = 256;
struct FcTask {
  int a_off, b_off, J, I, w_off, b_param, tiles_i, first_tile;  // dW[j][i] = sum_n A[n][j] B[n][i]; column I: bias
};
constexpr int kTileJ = 32, kTileI = 64;
__host__ __device__ constexpr int tiles(int J, int I) { return ((J + kTileJ - 1) / kTileJ) * ((I + 1 + kTileI - 1) / kTileI); }
constexpr int kFcTiles = tiles(kF1, kF0) + tiles(kF2, kF1) + tiles(kF3, kF2);  // 28 + 6 + 2
constexpr int kTasks = kFcTiles + kC2 + kC1;                                    // + conv2 per output, conv1 per channel
constexpr size_t kPartialSmem = sizeof(float) * kGroup * (kC1 * kQ1 + 25 + 4) + kGroup * (kC1 * kQ1);  // the largest task's (fc tiles: at most 32 x 96 floats)

template <int kChunk>
__global__ void __launch_bounds__(kPartialThreads) partial_kernel(const float* __restrict__ x, const float* __restrict__ saved,
                                                                  const unsigned char* __restrict__ argmax,
                                                                  float* __restrict__ partial, int n) {
  extern __shared__ float4 smem4[];
  float* sm = reinterpret_cast<float*>(smem4);
  const int tid = threadIdx.x, task = blockIdx.x % kTasks, chunk = blockIdx.x / kTasks;
  const int n0 = chunk * kChunk, n1 = min(n, n0 + kChunk);
  float* out = partial + static_cast<size_t>(chunk) * kParams;

  if (task < kFcTiles) {
    const FcTask fc[3] = {{kSDH1, kSP2, kF1, kF0, kW3, kB3, (kF0 + kTileI) / kTileI, 0},
                          {kSDH2, kSH1, kF2, kF1, kW4, kB4, (kF1 + kTileI) / kTileI, tiles(kF1, kF0)},
                          {kSD3, kSH2, kF3, kF2, kW5, kB5, (kF2 + kTileI) / kTileI, tiles(kF1, kF0) + tiles(kF2, kF1)}};
    const FcTask& t = task >= fc[2].first_tile ? fc[2] : task >= fc[1].first_tile ? fc[1] : fc[0];
    const int tile = task - t.first_tile, j0 = (tile / t.tiles_i) * kTileJ, i0 = (tile % t.tiles_i) * kTileI;
    float* As = sm;                    // [kChunk][kTileJ]
    float* Bs = sm + kChunk * kTileJ;  // [kChunk][kTileI]
    for (int e = tid; e < kChunk * kTileJ; e += kPartialThreads) {
      const int s = e / kTileJ, j = j0 + e % kTileJ;
      As[e] = (n0 + s < n1 && j < t.J) ? saved[static_cast<size_t>(n0 + s) * kSaved + t.a_off + j] : 0.0f;
    }
    for (int e = tid; e < kChunk * kTileI; e += kPartialThreads) {
      const int s = e / kTileI, i = i0 + e % kTileI;
      float v = 0.0f;
      if (n0 + s < n1) v = i < t.I ? saved[static_cast<size_t>(n0 + s) * kSaved + t.b_off + i] : (i == t.I ? 1.0f : 0.0f);
      Bs[e] = v;
    }
    __syncthreads();
    const int jl = tid / 8;
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
#pragma unroll 4
    for (int s = 0; s < kChunk; ++s) {
      const float a = As[s * kTileJ + jl];
#pragma unroll
      for (int k = 0; k < 8; ++k) acc[k] += a * Bs[s * kTileI + (tid % 8) + 8 * k];
    }
    const int j = j0 + jl;
    if (j < t.J)
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        const int i = i0 + (tid % 8) + 8 * k;
        if (i < t.I) out[t.w_off + j * t.I + i] = acc[k];
        if (i == t.I) out[t.b_param + j] = acc[k];
      }
    return;
  }
  if (task < kFcTiles + kC2) {  // conv2, output channel o: thread (c, ky, kx), thread 150 the bias
    const int o = task - kFcTiles;
    float* p1s = sm;                     // [kGroup][6][14][14]
    float* gs = sm + kGroup * kC1 * kQ1;  // [kGroup][25]
    unsigned char* as = reinterpret_cast<unsigned char*>(gs + kGroup * 25);
    float acc = 0.0f;
    const int c = tid / 25, ky = (tid % 25) / 5, kx = tid % 5;
    for (int g0 = n0; g0 < n1; g0 += kGroup) {
      const int gn = min(kGroup, n1 - g0);
      __syncthreads();
      for (int e = tid; e < gn * kC1 * kQ1; e += kPartialThreads)
        p1s[e] = saved[static_cast<size_t>(g0 + e / (kC1 * kQ1)) * kSaved + kSP1 + e % (kC1 * kQ1)];
      for (int e = tid; e < gn * 25; e += kPartialThreads) {
        const size_t s = static_cast<size_t>(g0 + e / 25);
        gs[e] = saved[s * kSaved + kSDP2 + o * 25 + e % 25];
        as[e] = argmax[s * kArg + kC1 * kQ1 + o * 25 + e % 25];
      }
      __syncthreads();
      if (tid < 150) {
        for (int s = 0; s < gn; ++s)
          for (int r = 0; r < 25; ++r) {
            const float g = gs[s * 25 + r];
            const int a = as[s * 25 + r], oy = 2 * (r / 5) + (a >> 1), ox = 2 * (r % 5) + (a & 1);
            acc += g * p1s[s * kC1 * kQ1 + c * kQ1 + (oy + ky) * kP1 + ox + kx];
          }
      } else if (tid == 150) {
        for (int s = 0; s < gn; ++s)
          for (int r = 0; r < 25; ++r) acc += gs[s * 25 + r];
      }
    }
    if (tid < 150) out[kW2 + o * 150 + tid] = acc;
    if (tid == 150) out[kB2 + o] = acc;
    return;
  }
  {  // conv1, channel c: thread (group of pooled positions, tap), tap 25 the bias; groups summed in order
    const int c = task - kFcTiles - kC2;
    constexpr int kTaps = 26, kQGroups = 9, kQPer = (kQ1 + kQGroups - 1) / kQGroups;  // 22
    float* xs = sm;                            // [kGroup][32][32]
    float* gs = sm + kGroup * kPadIn * kPadIn;  // [kGroup][196]
    unsigned char* as = reinterpret_cast<unsigned char*>(gs + kGroup * kQ1);
    float* sums = sm;  // reused at the end: [kQGroups][kTaps]
    const int qg = tid / kTaps, tap = tid % kTaps, ky = tap / 5, kx = tap % 5;
    float acc = 0.0f;
    for (int g0 = n0; g0 < n1; g0 += kGroup) {
      const int gn = min(kGroup, n1 - g0);
      __syncthreads();
      for (int e = tid; e < gn * kPadIn * kPadIn; e += kPartialThreads) {
        const int s = e / (kPadIn * kPadIn), q = e % (kPadIn * kPadIn), y = q / kPadIn - 2, xx = q % kPadIn - 2;
        xs[e] = (y >= 0 && y < kIn && xx >= 0 && xx < kIn) ? x[static_cast<size_t>(g0 + s) * kIn * kIn + y * kIn + xx] : 0.0f;
      }
      for (int e = tid; e < gn * kQ1; e += kPartialThreads) {
        const size_t s = static_cast<size_t>(g0 + e / kQ1);
        gs[e] = saved[s * kSaved + kSDP1 + c * kQ1 + e % kQ1];
        as[e] = argmax[s * kArg + c * kQ1 + e % kQ1];
      }
      __syncthreads();
      if (qg < kQGroups)
        for (int s = 0; s < gn; ++s)
          for (int q = qg * kQPer; q < min(kQ1, (qg + 1) * kQPer); ++q) {
            const float g = gs[s * kQ1 + q];
            if (tap == 25) {
              acc += g;
              continue;
            }
            const int a = as[s * kQ1 + q], y = 2 * (q / kP1) + (a >> 1), xx = 2 * (q % kP1) + (a & 1);
            acc += g * xs[s * kPadIn * kPadIn + (y + ky) * kPadIn + xx + kx];
          }
    }
    __syncthreads();
    if (qg < kQGroups) sums[qg * kTaps + tap] = acc;
    __syncthreads();
    if (tid < kTaps) {
      float t = 0.0f;
      for (int g = 0; g < kQGroups; ++g) t += sums[g * kTaps + tid];
      if (tid < 25) out[kW1 + c * 25 + tid] = t;
      else out[kB1 + c] = t;
    }
  }
}

// Sums the chunks in order; grad != null: writes the gradient (the check); else SGD, Nesterov momentum, weight decay.
__global__ void update_kernel(const float* __restrict__ partial, int chunks, float* __restrict__ grad, float* __restrict__ P,
                              float* __restrict__ velocity, float lr, float momentum, float weight_decay) {
  const int p = blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= kParams) return;
  float g = 0.0f;
  for (int c = 0; c < chunks; ++c) g += partial[static_cast<size_t>(c) * kParams + p];
  if (grad != nullptr) {
    grad[p] = g;
    return;
  }
  g += weight_decay * P[p];
  const float v = momentum * velocity[p] + g;
  velocity[p] = v;
  P[p] -= lr * (g + momentum * v);
}

// ---- host reference, double precision ----
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

struct Device {
  float *x, *P, *velocity, *saved, *partial, *grad, *losses;
  unsigned char* argmax;
  int* labels;
};

template <int S, int kThreads, int kChunk>
void launch_step(const Device& d, int n, cudaStream_t stream, bool check) {
  const size_t smem = sizeof(float) * kConvWeights + S * sizeof(SampleSmem);
  sample_kernel<S, kThreads><<<(n + S - 1) / S, kThreads, smem, stream>>>(d.x, d.labels, d.P, d.saved, d.argmax, d.losses, n);
  const int chunks = (n + kChunk - 1) / kChunk;
  partial_kernel<kChunk><<<chunks * kTasks, kPartialThreads, kPartialSmem, stream>>>(d.x, d.saved, d.argmax, d.partial, n);
  update_kernel<<<(kParams + 255) / 256, 256, 0, stream>>>(d.partial, chunks, check ? d.grad : nullptr, d.P, d.velocity,
                                                            0.05f, 0.9f, 5e-4f);
}

template <int S, int kThreads>
void set_up() {
  const size_t smem = sizeof(float) * kConvWeights + S * sizeof(SampleSmem);
  CK(cudaFuncSetAttribute(sample_kernel<S, kThreads>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
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

template <int S, int kThreads, int kChunk>
void measure(const Device& d, int n) {
  const int reps = n >= 4096 ? 5 : 30, chunks = (n + kChunk - 1) / kChunk;
  const size_t smem = sizeof(float) * kConvWeights + S * sizeof(SampleSmem);
  const double k1 = time_graph([&](cudaStream_t st) {
    sample_kernel<S, kThreads><<<(n + S - 1) / S, kThreads, smem, st>>>(d.x, d.labels, d.P, d.saved, d.argmax, d.losses, n);
  }, reps);
  const double k2 = time_graph([&](cudaStream_t st) {
    partial_kernel<kChunk><<<chunks * kTasks, kPartialThreads, kPartialSmem, st>>>(d.x, d.saved, d.argmax, d.partial, n);
  }, reps);
  const double k3 = time_graph([&](cudaStream_t st) {
    update_kernel<<<(kParams + 255) / 256, 256, 0, st>>>(d.partial, chunks, nullptr, d.P, d.velocity, 0.0f, 0.9f, 5e-4f);
  }, reps);
  // The step: the three kernels in a row (lr 0 so that the weights stay as they are).
  const double step = time_graph([&](cudaStream_t st) {
    sample_kernel<S, kThreads><<<(n + S - 1) / S, kThreads, smem, st>>>(d.x, d.labels, d.P, d.saved, d.argmax, d.losses, n);
    partial_kernel<kChunk><<<chunks * kTasks, kPartialThreads, kPartialSmem, st>>>(d.x, d.saved, d.argmax, d.partial, n);
    update_kernel<<<(kParams + 255) / 256, 256, 0, st>>>(d.partial, chunks, nullptr, d.P, d.velocity, 0.0f, 0.9f, 5e-4f);
  }, reps);
  std::printf("S=%d threads=%4d chunk=%2d n=%5d: step %8.2f us (%6.0fk images/s); sample kernel %8.2f, partial sums %7.2f, update %6.2f us\n",
              S, kThreads, kChunk, n, step, n / step * 1e3, k1, k2, k3);
}

}  // namespace

int main() {
  const int kMaxN = 8192;
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
  const int max_chunks = kMaxN / 4;  // the smallest chunk: 4 samples
  CK(cudaMalloc(&d.x, xs.size() * sizeof(float)));
  CK(cudaMalloc(&d.P, kParams * sizeof(float)));
  CK(cudaMalloc(&d.velocity, kParams * sizeof(float)));
  CK(cudaMalloc(&d.saved, static_cast<size_t>(kMaxN) * kSaved * sizeof(float)));
  CK(cudaMalloc(&d.argmax, static_cast<size_t>(kMaxN) * kArg));
  CK(cudaMalloc(&d.partial, static_cast<size_t>(max_chunks) * kParams * sizeof(float)));
  CK(cudaMalloc(&d.grad, kParams * sizeof(float)));
  CK(cudaMalloc(&d.losses, kMaxN * sizeof(float)));
  CK(cudaMalloc(&d.labels, kMaxN * sizeof(int)));
  CK(cudaMemcpy(d.x, xs.data(), xs.size() * sizeof(float), cudaMemcpyHostToDevice));
  CK(cudaMemcpy(d.P, P.data(), kParams * sizeof(float), cudaMemcpyHostToDevice));
  CK(cudaMemset(d.velocity, 0, kParams * sizeof(float)));
  CK(cudaMemcpy(d.labels, labels.data(), kMaxN * sizeof(int), cudaMemcpyHostToDevice));
  CK(cudaFuncSetAttribute(partial_kernel<4>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kPartialSmem)));
  CK(cudaFuncSetAttribute(partial_kernel<8>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kPartialSmem)));
  CK(cudaFuncSetAttribute(partial_kernel<32>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kPartialSmem)));
  set_up<1, 512>();
  set_up<2, 512>();
  set_up<1, 256>();
  std::printf("partial sums: %d tasks a chunk, %zu B of shared memory a block\n", kTasks, kPartialSmem);

  // The check: loss and every gradient against the host's, at a few batch sizes and both kernel shapes.
  bool all_ok = true;
  for (int n : {1, 7, 70, 257}) {
    const HostGrads ref = reference_step(P, xs.data(), labels.data(), n);
    for (int variant = 0; variant < 2; ++variant) {
      CK(cudaMemset(d.grad, 0, kParams * sizeof(float)));
      if (variant == 0) launch_step<1, 512, 8>(d, n, nullptr, true);
      else launch_step<2, 512, 4>(d, n, nullptr, true);
      CK(cudaDeviceSynchronize());
      std::vector<float> g(kParams), losses(n);
      CK(cudaMemcpy(g.data(), d.grad, kParams * sizeof(float), cudaMemcpyDeviceToHost));
      CK(cudaMemcpy(losses.data(), d.losses, n * sizeof(float), cudaMemcpyDeviceToHost));
      double loss = 0;
      for (float l : losses) loss += l / n;
      const int bounds[] = {kW1, kB1, kW2, kB2, kW3, kB3, kW4, kB4, kW5, kB5, kParams};
      const char* names[] = {"conv1.w", "conv1.b", "conv2.w", "conv2.b", "fc1.w", "fc1.b", "fc2.w", "fc2.b", "fc3.w", "fc3.b"};
      double worst = 0;
      std::printf("check n=%d S=%d: loss %.6f (host %.6f)", n, variant + 1, loss, ref.loss);
      for (int t = 0; t < 10; ++t) {
        const double e = rel_error(g, ref.g, bounds[t], bounds[t + 1]);
        worst = std::max(worst, e);
        std::printf(" %s %.1e", names[t], e);
      }
      const bool ok = worst < 1e-4 && std::abs(loss - ref.loss) < 1e-5 * std::max(1.0, ref.loss);
      all_ok = all_ok && ok;
      std::printf(" -> %s\n", ok ? "ok" : "WRONG");
    }
  }
  std::printf("gradient check: %s\n", all_ok ? "all ok" : "FAILED");

  for (int n : {64, 257, 1000, 2048, 8192}) {
    measure<1, 512, 32>(d, n);
    measure<1, 512, 8>(d, n);
    measure<1, 512, 4>(d, n);
    measure<2, 512, 8>(d, n);
  }
  return all_ok ? 0 : 1;
}
