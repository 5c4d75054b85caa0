// Implicit-GEMM 3x3 convolutions on tensor cores (see conv_mma.h). Fragment layouts are those of
// mma.sync.m16n8k8 with TF32 operands: lane = 4 * group + quad; A (16 x 8, row-major) holds rows
// group and group + 8, columns quad and quad + 4; B (8 x 8) rows quad and quad + 4, column group;
// C rows group and group + 8, columns 2 quad and 2 quad + 1.
// Operands are rounded to TF32 (and split into hi and lo) once, where they are staged: the weights
// by a small kernel per call, inputs and output gradients in shared memory after each stage lands.
// - Forward: M = output positions of one sample (a linear run of kPositions, across rows), N =
//   output channels, K = input channels x taps, staged 8 channels at a time; one k8 step is 8
//   channels at one tap. The input gradient is the forward convolution of dy with transposed,
//   flipped weights.
// - Filter gradient: M = output channels, N = 32 input channels x 9 taps, K = positions, 96 per
//   unit (sample and run of positions); blocks take chunks of units and write partial sums that a
//   second kernel adds in a fixed order.
#include <algorithm>
#include <cstdint>

#include "core/cuda_check.h"
#include "kernels/conv_mma.h"
#include "kernels/conv_shared.cuh"

namespace dptrain::kernels {

namespace {

using namespace conv_shared;

constexpr int kChunk = 8;            // forward: input channels staged per pipeline step (one k8 step per tap)
constexpr int kFilterChannels = 32;  // filter gradient: input channels per block
constexpr int kUnit = 96;            // filter gradient: positions per unit (12 k8 steps)
constexpr int kUnitStride = kUnit + 4;  // staged dy row: 4 mod 32 floats, so A fragments hit 32 banks
// Filter gradient: the number of blocks is a function of the shape only (never of the GPU), so the summation order and
// the result are the same on every GPU. Blocks are long-lived (one an SM), so counts past one wave of an H100's or
// H200's 132 SMs pay for a partial wave: 128 blocks (one wave) up to 6,000 units, 256 (two) up to 12,288, then 512
// (four). More, shorter blocks retire sooner and let the input gradient running beside them onto the SMs (H100, mnist_cnn
// tf32, a step: -1.3 to -2.5% at batch 1000 with 250 or 256 blocks, -1.2 to -3.5% at 2048 and -2.5 to -2.8% at 8192
// with 512); below 6,000 units they only add partial sums to the finish: at batch 257, 256 blocks made the step 7%
// slower, and at 608 the pair with 152 blocks (a second wave of 24) lost to cuDNN's pair (674 us) where 128 blocks'
// took 609 us. Monotone in the batch, so the scratch of the largest batch serves every smaller one.
constexpr int kFilterBlocksOneWave = 128, kFilterBlocksTwoWaves = 256, kFilterBlocksFourWaves = 512;
constexpr long long kUnitsForTwoWaves = 6000, kUnitsForFourWaves = 12288;
constexpr int kFilterTotals = 2 * 9 * 4;  // filter gradient: a thread's float32 totals (2 x 9 fragments of 4)

__device__ __forceinline__ uint32_t tf32_bits(float v) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(v));
  return r;
}

__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/// run[i][j] += a[i] * b[j] for a warp's tile of fragments; split math adds the two small cross products before
/// the large one. Product-major order: the kM x kN mma's of one product are independent, so the tensor cores
/// never wait on the one before (each accumulator still sees its three products in the same order).
template <MmaMath kMath, int kM, int kN>
__device__ __forceinline__ void mma_tile(float (&run)[kM][kN][4], const uint32_t (&ahi)[kM][4],
                                         const uint32_t (&alo)[kM][4], const uint32_t (&bhi)[kN][2],
                                         const uint32_t (&blo)[kN][2]) {
  if constexpr (kMath == MmaMath::SplitTf32) {
#pragma unroll
    for (int i = 0; i < kM; ++i)
#pragma unroll
      for (int j = 0; j < kN; ++j) mma(run[i][j], alo[i], bhi[j][0], bhi[j][1]);
#pragma unroll
    for (int i = 0; i < kM; ++i)
#pragma unroll
      for (int j = 0; j < kN; ++j) mma(run[i][j], ahi[i], blo[j][0], blo[j][1]);
  }
#pragma unroll
  for (int i = 0; i < kM; ++i)
#pragma unroll
    for (int j = 0; j < kN; ++j) mma(run[i][j], ahi[i], bhi[j][0], bhi[j][1]);
}

/// Adds a run of tensor-core sums into the float32 totals total(i, j, e) (round to nearest: the tensor cores' own
/// additions truncate, so no run is longer than one pipeline stage).
template <int kM, int kN, typename Totals>
__device__ __forceinline__ void add_run(Totals&& total, float (&run)[kM][kN][4]) {
#pragma unroll
  for (int i = 0; i < kM; ++i)
#pragma unroll
    for (int j = 0; j < kN; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        total(i, j, e) += run[i][j][e];
        run[i][j][e] = 0.0f;
      }
}
template <int kM, int kN>
__device__ __forceinline__ void add_run(float (&total)[kM][kN][4], float (&run)[kM][kN][4]) {
  add_run([&](int i, int j, int e) -> float& { return total[i][j][e]; }, run);
}

/// The filter gradient's float32 totals of one thread, to which each unit's tensor-core run is added (add_run).
/// With TF32 math they live in shared memory, total[i][j][e] at slots[((i kN + j) 4 + e) kThreads], the
/// thread's own: in registers they and the run took 233 a thread, 60k of an SM's 64k registers for a 256-thread
/// block, so that no block of another kernel fit beside it (H100 kernel timeline, mnist_cnn's conv2 at batch 257:
/// the input gradient's layout transform, on the higher-priority stream, waited 180 us on the 4 SMs the filter
/// gradient left). Split math, whose stages fill shared memory, keeps them in registers.
template <bool kShared, int kThreads, int kM, int kN>
struct FilterTotals;

template <int kThreads, int kM, int kN>
struct FilterTotals<false, kThreads, kM, kN> {
  float acc[kM][kN][4] = {};
  __device__ __forceinline__ explicit FilterTotals(float*) {}
  __device__ __forceinline__ float& operator()(int i, int j, int e) { return acc[i][j][e]; }
};

template <int kThreads, int kM, int kN>
struct FilterTotals<true, kThreads, kM, kN> {
  float* slots;  // this thread's first total; the next ones kThreads floats apart
  __device__ __forceinline__ explicit FilterTotals(float* shared) : slots(shared + threadIdx.x) {
#pragma unroll
    for (int k = 0; k < kM * kN * 4; ++k) slots[k * kThreads] = 0.0f;
  }
  __device__ __forceinline__ float& operator()(int i, int j, int e) { return slots[((i * kN + j) * 4 + e) * kThreads]; }
};

/// Input rows staged for a run of positions of one sample.
struct Staging {
  int rows;   // the most any run spans, plus 2
  int pitch;  // staged row length: w + 2 pad (column col holds input column col - pad)
  int plane;  // floats per staged channel: rows * pitch rounded up to `residue` mod 32
};

Staging staging_for(const ConvGeometry& g, int run, int residue) {
  const int positions = g.oh * g.ow;
  int span = 1;
  for (int p0 = 0; p0 < positions; p0 += run)
    span = std::max(span, (std::min(p0 + run, positions) - 1) / g.ow - p0 / g.ow + 1);
  Staging s{span + 2, g.w + 2 * g.pad, 0};
  s.plane = s.rows * s.pitch;
  while (s.plane % 32 != residue) ++s.plane;
  return s;
}

/// Stages input rows [r0 - pad, r0 - pad + rows) of `channels` channels of sample s from c0 on, xs[ci][row][col]: a
/// warp per row, a lane per column.
template <int kThreads>
__device__ __forceinline__ void stage_input(float* xs, const float* __restrict__ x, const ConvGeometry& g,
                                            const Staging& t, int s, int c0, int channels, int r0) {
  const int lane = threadIdx.x & 31;
  for (int row = threadIdx.x >> 5; row < channels * t.rows; row += kThreads / 32) {
    const int ci = row / t.rows, rr = row - ci * t.rows, iy = r0 - g.pad + rr;
    const bool row_ok = iy >= 0 && iy < g.h;
    const int base = ((s * g.c + c0 + ci) * g.h + iy) * g.w - g.pad;
    float* dst = xs + ci * t.plane + rr * t.pitch;
    for (int col = lane; col < t.pitch; col += 32) {
      const bool ok = row_ok && col >= g.pad && col - g.pad < g.w;
      cp_async4(dst + col, ok ? x + base + col : x, ok);
    }
  }
}

/// Rounds count floats (a multiple of 4, 16-byte aligned) to TF32 in place; split math puts the remainders in lo.
template <MmaMath kMath, int kThreads>
__device__ __forceinline__ void split_in_place(float* hi, float* lo, int count) {
  for (int e = threadIdx.x * 4; e < count; e += kThreads * 4) {
    float4 v = *reinterpret_cast<float4*>(hi + e);
    float4 h, l;
    h.x = __uint_as_float(tf32_bits(v.x));
    h.y = __uint_as_float(tf32_bits(v.y));
    h.z = __uint_as_float(tf32_bits(v.z));
    h.w = __uint_as_float(tf32_bits(v.w));
    *reinterpret_cast<float4*>(hi + e) = h;
    if constexpr (kMath == MmaMath::SplitTf32) {
      l.x = __uint_as_float(tf32_bits(v.x - h.x));
      l.y = __uint_as_float(tf32_bits(v.y - h.y));
      l.z = __uint_as_float(tf32_bits(v.z - h.z));
      l.w = __uint_as_float(tf32_bits(v.w - h.w));
      *reinterpret_cast<float4*>(lo + e) = l;
    }
  }
}

/// Staged offset of position p (within the sample) relative to the staged rows starting at output row r0.
__device__ __forceinline__ int staged_offset(int p, int r0, const ConvGeometry& g, const Staging& t) {
  const int oy = p / g.ow;
  return (oy - r0) * t.pitch + p - oy * g.ow;
}

__host__ __device__ constexpr int parts(MmaMath math) { return math == MmaMath::SplitTf32 ? 2 : 1; }

/// Forward block shape: kWarpsM x kWarpsN warps, each kFragsM m16 x kFragsN n8 fragments.
template <int kWarpsM, int kWarpsN, int kFragsM, int kFragsN>
struct ForwardShape {
  static constexpr int kWm = kWarpsM, kFm = kFragsM, kFn = kFragsN;
  static constexpr int kThreads = kWarpsM * kWarpsN * 32;
  static constexpr int kPositions = kWarpsM * kFragsM * 16;
  static constexpr int kChannels = kWarpsN * kFragsN * 8;
  static constexpr int kWeightStride = kChannels + 8;  // 8 mod 32: B fragments hit 32 banks
  static constexpr int kWeightFloats = kTaps * kChunk * kWeightStride;  // one part (hi or lo) of one chunk
};
using WideForward = ForwardShape<2, 2, 3, 4>;    // 96 positions x 64 channels, 4 warps
using NarrowForward = ForwardShape<2, 1, 3, 4>;  // 96 positions x 32 channels, 2 warps

/// Floats of the prepared weights of a forward launch: [channel block][chunk][part][tap * 8 + ci][o], o padded.
template <class S>
size_t prepared_floats(const ConvGeometry& g) {
  return static_cast<size_t>(g.oc / S::kChannels) * (g.c / kChunk) * 2 * S::kWeightFloats;
}

// The weights as the forward kernel stages them, rounded (and split) once per call rather than once per block: hi
// and lo parts, each chunk of each channel block one contiguous run. flip: w holds [c][oc][3][3] of the convolution
// whose input gradient this is; the forward weights are its transposed, flipped ones.
__global__ void prepare_weights_kernel(const float* __restrict__ w, float* __restrict__ wp, ConvGeometry g,
                                       int channels, int stride, bool flip, bool split_lo) {
  const int per_chunk = kTaps * kChunk * stride, chunks = g.c / kChunk;
  const int total = g.oc / channels * chunks * per_chunk;
  for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < total; e += gridDim.x * blockDim.x) {
    const int col = e % stride, row = e / stride % (kTaps * kChunk), rest = e / per_chunk;
    const int chunk = rest % chunks, block = rest / chunks, tap = row / kChunk, ci = chunk * kChunk + row % kChunk;
    const int o = block * channels + col;
    float v = 0.0f;
    if (col < channels)
      v = flip ? w[(ci * g.oc + o) * kTaps + kTaps - 1 - tap] : w[(o * g.c + ci) * kTaps + tap];
    const uint32_t hi = tf32_bits(v);
    float* out = wp + static_cast<long long>(rest) * 2 * per_chunk + row * stride + col;
    out[0] = __uint_as_float(hi);
    out[per_chunk] = split_lo ? __uint_as_float(tf32_bits(v - __uint_as_float(hi))) : 0.0f;
  }
}

template <class S, MmaMath kMath>
size_t forward_smem(const Staging& t) {
  const size_t input = static_cast<size_t>(kChunk) * t.plane;
  return sizeof(float) * (2 * (input + parts(kMath) * S::kWeightFloats) + (parts(kMath) - 1) * input);
}

// Block (sample and run of S::kPositions positions, S::kChannels output channels). Per stage: 8 input channels of
// the rows the run needs, xs[ci][row][col], split in place into TF32 hi (and lo, in a buffer of its own), and their
// prepared weights ws[part][tap][ci][o]. Warp (wm, wn) multiplies positions m0 + [0, 16 kFm) by channels
// n0 + [0, 8 kFn): per tap one k8 step.
template <class S, MmaMath kMath>
__global__ void __launch_bounds__(S::kThreads) mma_forward_kernel(const float* __restrict__ x,
                                                                  const float* __restrict__ wp,
                                                                  const float* __restrict__ b, float* __restrict__ y,
                                                                  bool relu, ConvGeometry g, Staging t, int tiles) {
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  constexpr int kParts = parts(kMath);
  const int in_floats = kChunk * t.plane, stage_floats = in_floats + kParts * S::kWeightFloats;
  float* lo_input = smem + 2 * stage_floats;
  const int positions = g.oh * g.ow, chunks = g.c / kChunk;
  const int s = blockIdx.x / tiles, p0 = blockIdx.x % tiles * S::kPositions, o0 = blockIdx.y * S::kChannels;
  const int r0 = p0 / g.ow;
  const int tid = threadIdx.x, warp = tid >> 5, group = (tid & 31) >> 2, quad = tid & 3;
  const int m0 = p0 + warp % S::kWm * S::kFm * 16, n0 = warp / S::kWm * S::kFn * 8;

  // A element (row, column quad): staged input of position row at channel quad; rows past the end read the last.
  int a_off[S::kFm][2];
#pragma unroll
  for (int i = 0; i < S::kFm; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h)
      a_off[i][h] = staged_offset(min(m0 + i * 16 + h * 8 + group, positions - 1), r0, g, t) + quad * t.plane;

  auto stage = [&](int chunk, int buf) {
    float* xs = smem + buf * stage_floats;
    stage_input<S::kThreads>(xs, x, g, t, s, chunk * kChunk, kChunk, r0);
    const float* src = wp + (static_cast<long long>(blockIdx.y) * chunks + chunk) * 2 * S::kWeightFloats;
    for (int e = tid * 4; e < kParts * S::kWeightFloats; e += S::kThreads * 4) cp_async16(xs + in_floats + e, src + e);
    cp_async_commit();
  };

  float acc[S::kFm][S::kFn][4] = {}, run[S::kFm][S::kFn][4] = {};
  stage(0, 0);
  for (int chunk = 0; chunk < chunks; ++chunk) {
    const int buf = chunk & 1;
    __syncthreads();  // every warp is done with the previous chunk: its buffer and lo_input may be overwritten
    if (chunk + 1 < chunks) {
      stage(chunk + 1, buf ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    float* xs = smem + buf * stage_floats;
    split_in_place<kMath, S::kThreads>(xs, lo_input, in_floats);
    __syncthreads();
    const float* ws = xs + in_floats + n0 + group + quad * S::kWeightStride;
#pragma unroll
    for (int tap = 0; tap < kTaps; ++tap) {
      const int tap_off = tap / 3 * t.pitch + tap % 3;
      uint32_t ahi[S::kFm][4], alo[S::kFm][4];
#pragma unroll
      for (int i = 0; i < S::kFm; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int at = a_off[i][j & 1] + (j >> 1) * 4 * t.plane + tap_off;
          ahi[i][j] = __float_as_uint(xs[at]);
          if constexpr (kMath == MmaMath::SplitTf32) alo[i][j] = __float_as_uint(lo_input[at]);
        }
      uint32_t bhi[S::kFn][2], blo[S::kFn][2];
#pragma unroll
      for (int jn = 0; jn < S::kFn; ++jn)
#pragma unroll
        for (int k = 0; k < 2; ++k) {
          const int at = (tap * kChunk + 4 * k) * S::kWeightStride + jn * 8;
          bhi[jn][k] = __float_as_uint(ws[at]);
          if constexpr (kMath == MmaMath::SplitTf32) blo[jn][k] = __float_as_uint(ws[S::kWeightFloats + at]);
        }
      mma_tile<kMath>(run, ahi, alo, bhi, blo);
    }
    add_run(acc, run);
  }

#pragma unroll
  for (int i = 0; i < S::kFm; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int p = m0 + i * 16 + h * 8 + group;
      if (p >= positions) continue;
#pragma unroll
      for (int jn = 0; jn < S::kFn; ++jn)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int o = o0 + n0 + jn * 8 + 2 * quad + e;
          const float v = acc[i][jn][h * 2 + e] + (b ? __ldg(b + o) : 0.0f);
          y[(static_cast<long long>(s) * g.oc + o) * positions + p] = relu ? fmaxf(v, 0.0f) : v;
        }
    }
}

/// Filter-gradient layout of one launch.
struct FilterTiling {
  Staging input;
  int units_per_sample, chunks;
  __host__ __device__ int input_floats() const { return kFilterChannels * input.plane; }
  // Two stages of input and dy, one buffer of their TF32 remainders (split math), the positions' offsets; with TF32
  // math, each thread's totals (FilterTotals).
  size_t smem(int ocb, MmaMath math) const {
    const size_t stage = static_cast<size_t>(kFilterChannels) * input.plane + static_cast<size_t>(ocb) * kUnitStride;
    const size_t totals = math == MmaMath::Tf32 ? static_cast<size_t>(ocb) * 4 * kFilterTotals : 0;
    return sizeof(float) * ((1 + parts(math)) * stage + kUnit + totals);
  }
};

// Block (chunk of units, 32 input channels, 32 kWarpsM output channels), 4 kWarpsM warps: warp (wm, wn) multiplies
// output channels wm 32 + [0, 32) by columns wn 72 + [0, 72) of N = tap 32 + input channel. Per unit: x rows staged
// xs[ci][row][col], dy ds[o][position], both split in place (lo parts in buffers of their own); 12 k8 steps of 8
// positions. Threads 4o..4o+3 split dy of output channel o, a quarter of each unit's positions each, and sum its
// bias gradient on the way, in a fixed order. At the end the block writes its partial sums:
// partial[chunk][o][c * 9 + tap], tap 9c is the bias.
template <int kWarpsM, MmaMath kMath>
__global__ void __launch_bounds__(kWarpsM * 128, 1)
    mma_filter_partial_kernel(const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ partial,
                              ConvGeometry g, FilterTiling t) {
  constexpr int kThreads = kWarpsM * 128, kOcb = kWarpsM * 32, kFn = 9, kQuarter = kUnit / 4;
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  const int in_floats = t.input_floats(), stage_floats = in_floats + kOcb * kUnitStride;
  float* lo = smem + 2 * stage_floats;  // [input][dy], split math only
  int* offsets = reinterpret_cast<int*>(smem + (parts(kMath) + 1) * stage_floats);
  float* totals_shared = reinterpret_cast<float*>(offsets + kUnit);  // TF32 math only
  const int positions = g.oh * g.ow, units = g.n * t.units_per_sample;
  const int tid = threadIdx.x, warp = tid >> 5, group = (tid & 31) >> 2, quad = tid & 3;
  const int wm = warp % kWarpsM, wn = warp / kWarpsM;
  const int c0 = blockIdx.y * kFilterChannels, o0 = blockIdx.z * kOcb;
  const int first = static_cast<int>(static_cast<long long>(blockIdx.x) * units / t.chunks);
  const int last = static_cast<int>(static_cast<long long>(blockIdx.x + 1) * units / t.chunks);

  // B element (position row quad, column group) of fragment jn: input channel and tap offset.
  int b_off[kFn];
#pragma unroll
  for (int jn = 0; jn < kFn; ++jn) {
    const int n = wn * kFn * 8 + jn * 8, tap = n / kFilterChannels;
    b_off[jn] = (n % kFilterChannels + group) * t.input.plane + tap / 3 * t.input.pitch + tap % 3;
  }

  auto stage = [&](int unit, int buf) {
    const int s = unit / t.units_per_sample, q0 = unit % t.units_per_sample * kUnit;
    float* xs = smem + buf * stage_floats;
    float* ds = xs + in_floats;
    stage_input<kThreads>(xs, x, g, t.input, s, c0, kFilterChannels, q0 / g.ow);
    for (int e = tid; e < kOcb * kUnit; e += kThreads) {
      const int o = e / kUnit, p = q0 + e - o * kUnit;
      const bool ok = p < positions;
      cp_async4(ds + o * kUnitStride + e - o * kUnit, ok ? dy + (s * g.oc + o0 + o) * positions + p : dy, ok);
    }
    cp_async_commit();
  };

  static_assert(kFilterTotals == 2 * kFn * 4, "a thread's totals are its run's fragments");
  FilterTotals<kMath == MmaMath::Tf32, kThreads, 2, kFn> acc(totals_shared);
  float run[2][kFn][4] = {};
  float bias_acc = 0.0f;
  if (first < last) stage(first, 0);
  for (int unit = first; unit < last; ++unit) {
    const int buf = (unit - first) & 1;
    __syncthreads();  // every warp is done with the previous unit: its buffer, lo and offsets may be overwritten
    if (unit + 1 < last) {
      stage(unit + 1, buf ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    float* xs = smem + buf * stage_floats;
    float* ds = xs + in_floats;
    const int q0 = unit % t.units_per_sample * kUnit, r0 = q0 / g.ow;
    split_in_place<kMath, kThreads>(xs, lo, in_floats);
    {
      float* dr = ds + (tid >> 2) * kUnitStride + (tid & 3) * kQuarter;
      float* dl = lo + in_floats + (dr - ds);
#pragma unroll 4
      for (int p = 0; p < kQuarter; ++p) {
        const float v = dr[p];
        bias_acc += v;
        const uint32_t hi = tf32_bits(v);
        dr[p] = __uint_as_float(hi);
        if constexpr (kMath == MmaMath::SplitTf32) dl[p] = __uint_as_float(tf32_bits(v - __uint_as_float(hi)));
      }
    }
    // Past the sample's end dy is zero and any staged input will do.
    if (tid < kUnit) offsets[tid] = staged_offset(min(q0 + tid, positions - 1), r0, g, t.input);
    __syncthreads();
    const int da = (wm * 32 + group) * kUnitStride + quad;
#pragma unroll 2
    for (int step = 0; step < kUnit / 8; ++step) {
      uint32_t ahi[2][4], alo[2][4];
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int at = da + (i * 16 + (j & 1) * 8) * kUnitStride + step * 8 + (j >> 1) * 4;
          ahi[i][j] = __float_as_uint(ds[at]);
          if constexpr (kMath == MmaMath::SplitTf32) alo[i][j] = __float_as_uint(lo[in_floats + at]);
        }
      const int p_off[2] = {offsets[step * 8 + quad], offsets[step * 8 + quad + 4]};
      uint32_t bhi[kFn][2], blo[kFn][2];
#pragma unroll
      for (int jn = 0; jn < kFn; ++jn)
#pragma unroll
        for (int k = 0; k < 2; ++k) {
          bhi[jn][k] = __float_as_uint(xs[b_off[jn] + p_off[k]]);
          if constexpr (kMath == MmaMath::SplitTf32) blo[jn][k] = __float_as_uint(lo[b_off[jn] + p_off[k]]);
        }
      mma_tile<kMath>(run, ahi, alo, bhi, blo);
    }
    add_run(acc, run);
  }
  bias_acc += __shfl_xor_sync(0xffffffffu, bias_acc, 1);
  bias_acc += __shfl_xor_sync(0xffffffffu, bias_acc, 2);

  const int taps = g.c * kTaps;
  float* out = partial + static_cast<long long>(blockIdx.x) * g.oc * (taps + 1);
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int jn = 0; jn < kFn; ++jn)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int o = o0 + wm * 32 + i * 16 + group + (j >> 1) * 8;
        const int n = wn * kFn * 8 + jn * 8 + 2 * quad + (j & 1), tap = n / kFilterChannels;
        out[o * (taps + 1) + (c0 + n % kFilterChannels) * kTaps + tap] = acc(i, jn, j);
      }
  if (blockIdx.y == 0 && (tid & 3) == 0) out[(o0 + (tid >> 2)) * (taps + 1) + taps] = bias_acc;
}

/// The opt-in shared-memory limit of the current device (sm_90: 227 KB).
size_t smem_limit() {
  int device = 0, bytes = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return static_cast<size_t>(bytes);
}

template <class S>
bool forward_fits(const ConvGeometry& g) {
  return forward_smem<S, MmaMath::SplitTf32>(staging_for(g, S::kPositions, 8)) <= smem_limit();
}

bool forward_fits_any(const ConvGeometry& g) {
  return g.oc % 64 == 0 ? forward_fits<WideForward>(g) : forward_fits<NarrowForward>(g);
}

size_t prepared_floats_any(const ConvGeometry& g) {
  return g.oc % 64 == 0 ? prepared_floats<WideForward>(g) : prepared_floats<NarrowForward>(g);
}

/// Bytes of the prepared weights at the start of scratch: room for the forward's and for the input gradient's.
size_t prepared_bytes(const ConvGeometry& g) {
  return sizeof(float) * std::max(prepared_floats_any(g), prepared_floats_any(transposed(g)));
}

/// The prepared weights are staged by 16-byte cp.async: the functions use scratch from its first 16-byte aligned
/// address on (mma_conv_scratch adds 16 bytes for it), whatever pointer they are given.
constexpr size_t kScratchAlign = 16;
char* aligned_scratch(void* scratch) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(scratch);
  return reinterpret_cast<char*>((a + kScratchAlign - 1) / kScratchAlign * kScratchAlign);
}

template <class S, MmaMath kMath>
void launch_forward_shape(const float* x, const float* w, bool flip, const float* b, float* y, bool relu,
                          float* wp, const ConvGeometry& g, cudaStream_t stream) {
  const int prep = static_cast<int>(prepared_floats<S>(g) / 2);
  constexpr int kPrepThreads = 256;
  prepare_weights_kernel<<<(prep + kPrepThreads - 1) / kPrepThreads, kPrepThreads, 0, stream>>>(
      w, wp, g, S::kChannels, S::kWeightStride, flip, kMath == MmaMath::SplitTf32);
  CUDA_CHECK_LAUNCH();
  const Staging t = staging_for(g, S::kPositions, 8);
  const int tiles = (g.oh * g.ow + S::kPositions - 1) / S::kPositions;
  const dim3 grid(static_cast<unsigned>(g.n * tiles), static_cast<unsigned>(g.oc / S::kChannels));
  const size_t smem = forward_smem<S, kMath>(t);
  set_smem(reinterpret_cast<const void*>(mma_forward_kernel<S, kMath>), smem);
  mma_forward_kernel<S, kMath><<<grid, S::kThreads, smem, stream>>>(x, wp, b, y, relu, g, t, tiles);
  CUDA_CHECK_LAUNCH();
}

/// The forward convolution g of x with w (flip: with the transposed, flipped weights of w), weights prepared in wp.
template <MmaMath kMath>
void launch_forward(const float* x, const float* w, bool flip, const float* b, float* y, bool relu, float* wp,
                    const ConvGeometry& g, cudaStream_t stream) {
  if (g.oc % 64 == 0)
    launch_forward_shape<WideForward, kMath>(x, w, flip, b, y, relu, wp, g, stream);
  else
    launch_forward_shape<NarrowForward, kMath>(x, w, flip, b, y, relu, wp, g, stream);
}

void launch_forward_math(MmaMath math, const float* x, const float* w, bool flip, const float* b, float* y, bool relu,
                         void* scratch, const ConvGeometry& g, cudaStream_t stream) {
  float* wp = reinterpret_cast<float*>(aligned_scratch(scratch));
  if (math == MmaMath::SplitTf32)
    launch_forward<MmaMath::SplitTf32>(x, w, flip, b, y, relu, wp, g, stream);
  else
    launch_forward<MmaMath::Tf32>(x, w, flip, b, y, relu, wp, g, stream);
}

int filter_warps_m(const ConvGeometry& g) { return g.oc % 64 == 0 ? 2 : 1; }

FilterTiling filter_tiling(const ConvGeometry& g) {
  FilterTiling t{};
  t.input = staging_for(g, kUnit, 4);  // plane 4 mod 32: the 8 input channels of a B fragment hit distinct banks
  t.units_per_sample = (g.oh * g.ow + kUnit - 1) / kUnit;
  const int tiles = (g.c / kFilterChannels) * (g.oc / (32 * filter_warps_m(g)));
  const long long units = static_cast<long long>(g.n) * t.units_per_sample;
  const int blocks = units >= kUnitsForFourWaves  ? kFilterBlocksFourWaves
                     : units >= kUnitsForTwoWaves ? kFilterBlocksTwoWaves
                                                  : kFilterBlocksOneWave;
  t.chunks = static_cast<int>(std::max(1LL, std::min(units, static_cast<long long>(blocks / tiles))));
  return t;
}

template <int kWarpsM, MmaMath kMath>
void launch_filter_shape(const float* x, const float* dy, float* partial, const ConvGeometry& g, const FilterTiling& t,
                         cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(t.chunks), static_cast<unsigned>(g.c / kFilterChannels),
                  static_cast<unsigned>(g.oc / (32 * kWarpsM)));
  const size_t smem = t.smem(32 * kWarpsM, kMath);
  set_smem(reinterpret_cast<const void*>(mma_filter_partial_kernel<kWarpsM, kMath>), smem);
  mma_filter_partial_kernel<kWarpsM, kMath><<<grid, kWarpsM * 128, smem, stream>>>(x, dy, partial, g, t);
  CUDA_CHECK_LAUNCH();
}

void require_fits(const ConvGeometry& g, const char* what) {
  if (!mma_conv_fits(g)) refuse(what, "tensor-core", g);
}

}  // namespace

bool mma_conv_fits(const ConvGeometry& g) {
  if (!plain_3x3(g) || g.c % 32 != 0 || g.oc % 32 != 0 || g.c < 32 || g.oc < 32) return false;
  if (!forward_fits_any(g) || !forward_fits_any(transposed(g))) return false;
  const FilterTiling t = filter_tiling(g);
  const int ocb = 32 * filter_warps_m(g);
  if (std::max(t.smem(ocb, MmaMath::SplitTf32), t.smem(ocb, MmaMath::Tf32)) > smem_limit()) return false;
  return fits_int(static_cast<long long>(t.chunks) * g.oc * (g.c * kTaps + 1)) &&
         fits_int(static_cast<long long>(prepared_bytes(g)));
}

size_t mma_conv_scratch(const ConvGeometry& g) {
  const FilterTiling t = filter_tiling(g);
  return kScratchAlign + prepared_bytes(g) + sizeof(float) * static_cast<size_t>(t.chunks) * g.oc * (g.c * kTaps + 1);
}

void mma_conv_forward(const float* x, const float* w, const float* b, float* y, bool relu, void* scratch,
                      MmaMath math, const ConvGeometry& g, cudaStream_t stream) {
  require_fits(g, "mma_conv_forward");
  launch_forward_math(math, x, w, false, b, y, relu, scratch, g, stream);
}

void mma_conv_backward_data(const float* dy, const float* w, float* dx, void* scratch, MmaMath math,
                            const ConvGeometry& g, cudaStream_t stream) {
  require_fits(g, "mma_conv_backward_data");
  launch_forward_math(math, dy, w, true, nullptr, dx, false, scratch, transposed(g), stream);
}

void mma_conv_filter_grad(const float* x, const float* dy, float* dw, float* db, void* scratch, MmaMath math,
                          const ConvGeometry& g, cudaStream_t stream) {
  require_fits(g, "mma_conv_filter_grad");
  const FilterTiling t = filter_tiling(g);
  float* partial = reinterpret_cast<float*>(aligned_scratch(scratch) + prepared_bytes(g));
  const bool wide = filter_warps_m(g) == 2, split = math == MmaMath::SplitTf32;
  if (wide && split) launch_filter_shape<2, MmaMath::SplitTf32>(x, dy, partial, g, t, stream);
  if (wide && !split) launch_filter_shape<2, MmaMath::Tf32>(x, dy, partial, g, t, stream);
  if (!wide && split) launch_filter_shape<1, MmaMath::SplitTf32>(x, dy, partial, g, t, stream);
  if (!wide && !split) launch_filter_shape<1, MmaMath::Tf32>(x, dy, partial, g, t, stream);
  finish_filter_grad(partial, t.chunks, g, dw, db, stream);
}

}  // namespace dptrain::kernels
