// Register-tiled 3x3 stride-1 convolutions (see conv_tiled.h): a forward kernel that also computes the input
// gradient (a forward convolution of dy with transposed, flipped weights), and a filter-gradient kernel that writes
// per-chunk partial sums reduced in a fixed order by a second kernel.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "core/cuda_check.h"
#include "kernels/conv_shared.cuh"
#include "kernels/conv_tiled.h"

namespace dptrain::kernels {

namespace {

using namespace conv_shared;

constexpr int kChannelChunk = 4;     // forward: input channels staged per pipeline step
constexpr int kColumns = 4;          // forward: output columns per thread (one row)
constexpr int kChannelsPerThread = 8;
constexpr int kMaxThreads = 512;
constexpr int kMaxRows = 8;          // forward: output rows per block
constexpr int kFilterChannels = 32;  // filter gradient: input channels per block (one per lane)
constexpr int kFilterRows = 2;       // filter gradient: output rows staged per unit, one per half-block
// Filter gradient: the number of position chunks is a function of the shape only (never of the GPU), so the
// summation order and the result are the same on every GPU. 128 blocks of 512 threads fill an H200 (132 SMs) once.
constexpr int kFilterBlocks = 128;

/// Forward tiling of one launch: rows of output per block, 4-column groups per row, staged row pitch.
struct ForwardTiling {
  int ocb, rows, col_groups, pitch, strips;
  __host__ __device__ int threads() const { return ocb / kChannelsPerThread * rows * col_groups; }
  __host__ __device__ int input_floats() const { return (kChannelChunk * (rows + 2) * pitch + 3) / 4 * 4; }
  __host__ __device__ int weight_floats() const { return kChannelChunk * kTaps * (ocb + 8); }
  size_t smem() const { return sizeof(float) * 2 * static_cast<size_t>(input_floats() + weight_floats()); }
};

// Block (sample and strip of output rows, group of ocb output channels); thread (8 channels) x (4 columns of one
// row): per input channel and kernel row it loads 6 inputs and 3 x 8 weights (float4, the same for a whole warp)
// for 96 FFMAs. Weights sit [channel * 9 + tap][o] with a row stride of ocb + 8, which makes the staging stores
// (8 channels x 4 taps per warp) conflict-free; the input row pitch is 1 mod 4, so the rows of a warp fall in
// different banks. Each output sums its input channels in order, then taps: independent of the tiling.
template <int kOcb>
__global__ void __launch_bounds__(kMaxThreads) tiled_forward_kernel(const float* __restrict__ x,
                                                                   const float* __restrict__ w,
                                                                   const float* __restrict__ b, float* __restrict__ y,
                                                                   bool relu, ConvGeometry g, ForwardTiling t) {
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  constexpr int kStride = kOcb + 8;
  const int in_floats = t.input_floats(), stage_floats = in_floats + t.weight_floats();
  const int tid = threadIdx.x, nthreads = blockDim.x, items = t.rows * t.col_groups;
  const int s = blockIdx.x / t.strips, oy0 = blockIdx.x % t.strips * t.rows, o0 = blockIdx.y * kOcb;
  const int item = tid % items, grp = tid / items, row = item / t.col_groups, cg = item % t.col_groups;
  const int plane_rows = t.rows + 2;

  auto stage = [&](int chunk, int buf) {
    const int c0 = chunk * kChannelChunk;
    float* xs = smem + buf * stage_floats;
    float* ws = xs + in_floats;
    for (int e = tid; e < kChannelChunk * plane_rows * t.pitch; e += nthreads) {
      const int col = e % t.pitch, rest = e / t.pitch, rr = rest % plane_rows, ci = rest / plane_rows;
      const int iy = oy0 - g.pad + rr, ix = col - g.pad;
      const bool ok = iy >= 0 && iy < g.h && ix >= 0 && ix < g.w;
      cp_async4(xs + e, ok ? x + ((s * g.c + c0 + ci) * g.h + iy) * g.w + ix : x, ok);
    }
    constexpr int kRun = kChannelChunk * kTaps;  // contiguous weights of one output channel in this chunk
    for (int e = tid; e < kOcb * kRun; e += nthreads) {
      const int r = (e >> 3) % kRun, o = (e >> 3) / kRun * 8 + (e & 7);
      cp_async4(ws + r * kStride + o, w + ((o0 + o) * g.c + c0) * kTaps + r, true);
    }
    cp_async_commit();
  };

  float acc[kChannelsPerThread][kColumns] = {};
  const int chunks = g.c / kChannelChunk;
  stage(0, 0);
  for (int chunk = 0; chunk < chunks; ++chunk) {
    if (chunk + 1 < chunks) {
      stage(chunk + 1, (chunk + 1) & 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const float* xs = smem + (chunk & 1) * stage_floats;
    const float* ws = xs + in_floats + kChannelsPerThread * grp;
#pragma unroll
    for (int ci = 0; ci < kChannelChunk; ++ci)
#pragma unroll
      for (int ky = 0; ky < 3; ++ky) {
        const float* xr = xs + (ci * plane_rows + row + ky) * t.pitch + kColumns * cg;
        float in[kColumns + 2];
#pragma unroll
        for (int i = 0; i < kColumns + 2; ++i) in[i] = xr[i];
#pragma unroll
        for (int kx = 0; kx < 3; ++kx) {
          const float4* wr = reinterpret_cast<const float4*>(ws + (ci * kTaps + ky * 3 + kx) * kStride);
          const float4 w0 = wr[0], w1 = wr[1];
          const float wv[kChannelsPerThread] = {w0.x, w0.y, w0.z, w0.w, w1.x, w1.y, w1.z, w1.w};
#pragma unroll
          for (int j = 0; j < kChannelsPerThread; ++j)
#pragma unroll
            for (int p = 0; p < kColumns; ++p) acc[j][p] = fmaf(wv[j], in[p + kx], acc[j][p]);
        }
      }
    __syncthreads();  // the next iteration stages into the buffer just read
  }

  const int oy = oy0 + row;
  if (oy >= g.oh) return;
#pragma unroll
  for (int j = 0; j < kChannelsPerThread; ++j) {
    const int o = o0 + kChannelsPerThread * grp + j;
    const float bias = b ? __ldg(b + o) : 0.0f;
    float* yr = y + ((s * g.oc + o) * g.oh + oy) * g.ow;
#pragma unroll
    for (int p = 0; p < kColumns; ++p) {
      const int ox = kColumns * cg + p;
      if (ox >= g.ow) continue;
      const float v = acc[j][p] + bias;
      yr[ox] = relu ? fmaxf(v, 0.0f) : v;
    }
  }
}

/// Filter-gradient layout of one launch.
struct FilterTiling {
  int ocb, pitch, channel_stride, chunks;
  __host__ __device__ int input_floats() const { return (kFilterChannels * channel_stride + 3) / 4 * 4; }
  __host__ __device__ int grad_floats(const ConvGeometry& g) const { return kFilterRows * g.ow * (ocb + 8); }
  __host__ __device__ int threads() const { return ocb / kChannelsPerThread * kFilterChannels * 2; }
  size_t smem(const ConvGeometry& g) const {
    const size_t staging = 2 * static_cast<size_t>(input_floats() + grad_floats(g));
    const size_t reduction = static_cast<size_t>(threads() / 2) * kChannelsPerThread * kTaps / 2;
    return sizeof(float) * std::max(staging, reduction);
  }
};

// Block (chunk of units, 32 input channels, ocb output channels); a unit is two output rows of one sample. Each
// half of the block takes one of the two rows; thread (8 output channels, 1 input channel) keeps the 8 x 9 filter
// taps in registers and slides a 3x3 input window along the row: per position 3 new inputs (lanes are input
// channels at an odd stride: no bank conflicts) and 8 output gradients (two float4 broadcasts) for 72 FFMAs. At the
// end the halves are added and the block writes its partial sums: partial[chunk][o][tap], tap 9c is the bias.
template <int kOcb>
__global__ void __launch_bounds__(kOcb / kChannelsPerThread * kFilterChannels * 2, 64 / kOcb)
    tiled_filter_partial_kernel(const float* __restrict__ x, const float* __restrict__ dy,
                                float* __restrict__ partial, ConvGeometry g, FilterTiling t) {
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  constexpr int kStride = kOcb + 8, kHalf = kOcb / kChannelsPerThread * kFilterChannels;
  const int in_floats = t.input_floats(), stage_floats = in_floats + t.grad_floats(g);
  const int tid = threadIdx.x, half = tid / kHalf, in_half = tid % kHalf, ci = tid % kFilterChannels;
  const int grp = in_half / kFilterChannels;
  const int strips = (g.oh + kFilterRows - 1) / kFilterRows, units = g.n * strips;
  const int c0 = blockIdx.y * kFilterChannels, o0 = blockIdx.z * kOcb;
  const int first = static_cast<int>(static_cast<long long>(blockIdx.x) * units / t.chunks);
  const int last = static_cast<int>(static_cast<long long>(blockIdx.x + 1) * units / t.chunks);
  const int positions = kFilterRows * g.ow;

  auto stage = [&](int unit, int buf) {
    const int s = unit / strips, oy0 = unit % strips * kFilterRows;
    float* xs = smem + buf * stage_floats;
    float* ds = xs + in_floats;
    constexpr int kRows = kFilterRows + 2;
    for (int e = tid; e < kFilterChannels * kRows * t.pitch; e += blockDim.x) {
      const int col = e % t.pitch, rest = e / t.pitch, rr = rest % kRows, cc = rest / kRows;
      const int iy = oy0 - g.pad + rr, ix = col - g.pad;
      const bool ok = iy >= 0 && iy < g.h && ix >= 0 && ix < g.w;
      cp_async4(xs + cc * t.channel_stride + rr * t.pitch + col,
                ok ? x + ((s * g.c + c0 + cc) * g.h + iy) * g.w + ix : x, ok);
    }
    // 8 channels x 4 positions per warp: 8 runs of 16 bytes in global memory, 32 distinct banks in shared memory.
    for (int e = tid; e < kOcb * positions; e += blockDim.x) {
      const int p = (e >> 3) % positions, o = (e >> 3) / positions * 8 + (e & 7);
      const int oy = oy0 + p / g.ow, ox = p % g.ow;
      const bool ok = oy < g.oh;
      cp_async4(ds + p * kStride + o, ok ? dy + ((s * g.oc + o0 + o) * g.oh + oy) * g.ow + ox : dy, ok);
    }
    cp_async_commit();
  };

  float acc[kChannelsPerThread][kTaps] = {};
  float bias_acc = 0.0f;
  if (first < last) stage(first, 0);
  for (int unit = first; unit < last; ++unit) {
    const int buf = (unit - first) & 1;
    if (unit + 1 < last) {
      stage(unit + 1, buf ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const float* xs = smem + buf * stage_floats;
    const float* ds = xs + in_floats;
    const int rows = min(kFilterRows, g.oh - unit % strips * kFilterRows);
    if (half < rows) {
      const float* xr = xs + ci * t.channel_stride + half * t.pitch;
      const float* dr = ds + half * g.ow * kStride + kChannelsPerThread * grp;
      float win[3][3];
#pragma unroll
      for (int ky = 0; ky < 3; ++ky) {
        win[ky][0] = xr[ky * t.pitch];
        win[ky][1] = xr[ky * t.pitch + 1];
      }
#pragma unroll 3
      for (int ox = 0; ox < g.ow; ++ox) {
#pragma unroll
        for (int ky = 0; ky < 3; ++ky) win[ky][2] = xr[ky * t.pitch + ox + 2];
        const float4* d4 = reinterpret_cast<const float4*>(dr + ox * kStride);
        const float4 d0 = d4[0], d1 = d4[1];
        const float dv[kChannelsPerThread] = {d0.x, d0.y, d0.z, d0.w, d1.x, d1.y, d1.z, d1.w};
#pragma unroll
        for (int j = 0; j < kChannelsPerThread; ++j)
#pragma unroll
          for (int ky = 0; ky < 3; ++ky)
#pragma unroll
            for (int kx = 0; kx < 3; ++kx) acc[j][ky * 3 + kx] = fmaf(dv[j], win[ky][kx], acc[j][ky * 3 + kx]);
#pragma unroll
        for (int ky = 0; ky < 3; ++ky) {
          win[ky][0] = win[ky][1];
          win[ky][1] = win[ky][2];
        }
      }
    }
    if (tid < kOcb)
      for (int p = 0; p < rows * g.ow; ++p) bias_acc += ds[p * kStride + tid];
    __syncthreads();  // the next iteration stages into the buffer just read
  }

  // Add the second half's sums to the first's through shared memory, 36 values per thread at a time.
  constexpr int kPart = kChannelsPerThread * kTaps / 2;
#pragma unroll
  for (int part = 0; part < 2; ++part) {
    if (half == 1)
#pragma unroll
      for (int i = 0; i < kPart; ++i) {
        const int k = part * kPart + i;
        smem[i * kHalf + in_half] = acc[k / kTaps][k % kTaps];
      }
    __syncthreads();
    if (half == 0)
#pragma unroll
      for (int i = 0; i < kPart; ++i) {
        const int k = part * kPart + i;
        acc[k / kTaps][k % kTaps] += smem[i * kHalf + in_half];
      }
    __syncthreads();
  }
  if (half != 0) return;
  const int taps = g.c * kTaps;
  float* out = partial + static_cast<long long>(blockIdx.x) * g.oc * (taps + 1);
#pragma unroll
  for (int j = 0; j < kChannelsPerThread; ++j) {
    float* row = out + (o0 + kChannelsPerThread * grp + j) * (taps + 1) + (c0 + ci) * kTaps;
#pragma unroll
    for (int tap = 0; tap < kTaps; ++tap) row[tap] = acc[j][tap];
  }
  if (blockIdx.y == 0 && tid < kOcb) out[(o0 + tid) * (taps + 1) + taps] = bias_acc;
}

int channel_block(int oc) { return oc % 64 == 0 ? 64 : 32; }

/// Forward tiling with `rows` output rows per block.
ForwardTiling forward_tiling(const ConvGeometry& g, int rows) {
  ForwardTiling t{};
  t.ocb = channel_block(g.oc);
  t.rows = rows;
  t.col_groups = (g.ow + kColumns - 1) / kColumns;
  t.pitch = kColumns * t.col_groups + 2;
  while (t.pitch % 4 != 1) ++t.pitch;
  t.strips = (g.oh + rows - 1) / rows;
  return t;
}

/// Rows per block: balances blocks over the SMs and wasted rows of the last strip against the halo (2 staged rows
/// per strip). Only speed depends on it; each output's summation order does not.
ForwardTiling choose_forward_tiling(const ConvGeometry& g, int sms) {
  ForwardTiling best = forward_tiling(g, 1);
  double best_score = -1.0;
  for (int rows = 1; rows <= kMaxRows; ++rows) {
    const ForwardTiling t = forward_tiling(g, rows);
    if (t.threads() > kMaxThreads || t.smem() > kMaxSmemBytes) break;
    const double blocks = static_cast<double>(g.n) * t.strips * (g.oc / t.ocb) / sms;
    const double fill = static_cast<double>(g.oh) / (t.strips * rows), balance = blocks / std::ceil(blocks);
    const double score = fill * balance * rows / (rows + 1.0);
    if (score > best_score) best_score = score, best = t;
  }
  return best;
}

FilterTiling filter_tiling(const ConvGeometry& g) {
  FilterTiling t{};
  t.ocb = channel_block(g.oc);
  t.pitch = g.ow + 2;
  t.channel_stride = (kFilterRows + 2) * t.pitch | 1;  // odd: the 32 lanes (input channels) hit 32 banks
  const int units = g.n * ((g.oh + kFilterRows - 1) / kFilterRows);
  const int tiles = (g.c / kFilterChannels) * (g.oc / t.ocb);
  t.chunks = std::max(1, std::min(units, kFilterBlocks * (64 / t.ocb) / tiles));
  return t;
}

void launch_forward(const float* x, const float* w, const float* b, float* y, bool relu, const ConvGeometry& g,
                    cudaStream_t stream) {
  const ForwardTiling t = choose_forward_tiling(g, multiprocessors());
  const dim3 grid(static_cast<unsigned>(g.n * t.strips), static_cast<unsigned>(g.oc / t.ocb));
  const auto kernel = t.ocb == 64 ? tiled_forward_kernel<64> : tiled_forward_kernel<32>;
  set_smem(reinterpret_cast<const void*>(kernel), t.smem());
  kernel<<<grid, t.threads(), t.smem(), stream>>>(x, w, b, y, relu, g, t);
  CUDA_CHECK_LAUNCH();
}

void require_fits(const ConvGeometry& g, const char* what) {
  if (!tiled_conv_fits(g)) refuse(what, "tiled", g);
}

}  // namespace

bool tiled_conv_fits(const ConvGeometry& g) {
  if (!plain_3x3(g) || g.c < 32 || g.oc < 32 || g.c % 32 != 0 || g.oc % 32 != 0) return false;
  const ConvGeometry gt = transposed(g);
  for (const ConvGeometry& f : {g, gt}) {
    const ForwardTiling t = forward_tiling(f, 1);
    if (t.threads() > kMaxThreads || t.smem() > kMaxSmemBytes) return false;
  }
  const FilterTiling ft = filter_tiling(g);
  if (ft.smem(g) > kMaxSmemBytes) return false;
  return fits_int(static_cast<long long>(ft.chunks) * g.oc * (g.c * kTaps + 1));
}

size_t tiled_conv_scratch(const ConvGeometry& g) {
  const FilterTiling t = filter_tiling(g);
  // Transposed weights first, then the filter partials: disjoint, so both backward calls may run at once.
  return transposed_weight_bytes(g) + sizeof(float) * static_cast<size_t>(t.chunks) * g.oc * (g.c * kTaps + 1);
}

void tiled_conv_forward(const float* x, const float* w, const float* b, float* y, bool relu, const ConvGeometry& g,
                        cudaStream_t stream) {
  require_fits(g, "tiled_conv_forward");
  launch_forward(x, w, b, y, relu, g, stream);
}

void tiled_conv_backward_data(const float* dy, const float* w, float* dx, void* scratch, const ConvGeometry& g,
                              cudaStream_t stream) {
  require_fits(g, "tiled_conv_backward_data");
  float* wt = static_cast<float*>(scratch);
  transpose_flip(w, wt, g.oc, g.c, stream);
  launch_forward(dy, wt, nullptr, dx, false, transposed(g), stream);
}

void tiled_conv_filter_grad(const float* x, const float* dy, float* dw, float* db, void* scratch,
                            const ConvGeometry& g, cudaStream_t stream) {
  require_fits(g, "tiled_conv_filter_grad");
  const FilterTiling t = filter_tiling(g);
  float* partial = reinterpret_cast<float*>(static_cast<char*>(scratch) + transposed_weight_bytes(g));
  const dim3 grid(static_cast<unsigned>(t.chunks), static_cast<unsigned>(g.c / kFilterChannels),
                  static_cast<unsigned>(g.oc / t.ocb));
  const auto kernel = t.ocb == 64 ? tiled_filter_partial_kernel<64> : tiled_filter_partial_kernel<32>;
  set_smem(reinterpret_cast<const void*>(kernel), t.smem(g));
  kernel<<<grid, t.threads(), t.smem(g), stream>>>(x, dy, partial, g, t);
  CUDA_CHECK_LAUNCH();
  finish_filter_grad(partial, t.chunks, g, dw, db, stream);
}

}  // namespace dptrain::kernels
