#include "kernels/conv_small.h"

#include <algorithm>
#include <type_traits>

#include "core/cuda_check.h"
#include "kernels/conv_shared.cuh"

namespace dptrain::kernels {

namespace {

constexpr int kMaxK = 7;
constexpr int kMaxSharedFloats = 12 * 1024;  // 48 KB: a launch's limit without opting in
constexpr int kGroup = 16;                   // output (forward) or input (input gradient) channels a block takes
constexpr int kReg = 4;                      // channels a thread sums at once, from one shared-memory read of its input
static_assert(kReg == 4, "a float4 holds the weights of a tap's kReg channels");
constexpr int kPositions = 2;                // output positions a forward thread takes: a weight load serves both
constexpr int kThreads = 128;                // forward and input gradient
// The filter gradient: a thread per work item and split of the output rows (rows split, split + splits,
// ...), as many splits as fill the block where the items leave threads idle (filter_splits).
constexpr int kFilterThreads = 512;
// The filter gradient's blocks: chunks of ceil(n / kMaxChunks) samples, so the partial sums and the order
// they are added in depend on the shape alone.
constexpr int kMaxChunks = 264;
constexpr int kFinishThreads = 256;

__host__ __device__ constexpr long long round_up(long long a, long long b) { return (a + b - 1) / b * b; }
long long padded_floats(const ConvGeometry& g) {
  return static_cast<long long>(g.c) * (g.h + 2LL * g.pad) * (g.w + 2LL * g.pad);
}
// The weights follow the staged sample at a multiple of 4 floats: they are read 16 bytes (kReg channels) at a time.
long long forward_shared_floats(const ConvGeometry& g) {
  return round_up(padded_floats(g), 4) + round_up(std::min(g.oc, kGroup), kReg) * g.c * g.k * g.k;
}
long long data_shared_floats(const ConvGeometry& g) {
  return round_up(static_cast<long long>(g.oc) * g.oh * g.ow, 4) +
         static_cast<long long>(g.oc) * round_up(std::min(g.c, kGroup), kReg) * g.k * g.k;
}
/// v or v + 1, whichever is odd: the filter gradient's shared-memory pitches. With an odd pitch, rows (and
/// channel planes) up to 32 apart fall in different banks: lenet5's conv1 has 32-float padded rows, so a
/// warp's reads of five kernel rows of two output rows had hit one bank.
__host__ __device__ constexpr int odd_pitch(int v) { return v | 1; }
long long filter_shared_floats(const ConvGeometry& g) {
  return static_cast<long long>(g.c) * (g.h + 2LL * g.pad) * odd_pitch(g.w + 2 * g.pad) +
         static_cast<long long>(g.oc) * odd_pitch(g.oh * g.ow);
}
/// The filter gradient's work items: (group of kReg output channels, input channel, kernel row), then one
/// per output channel's bias.
long long filter_items(const ConvGeometry& g) {
  return static_cast<long long>((g.oc + kReg - 1) / kReg) * g.c * g.k + g.oc;
}
int samples_per_chunk(int n) { return (n + kMaxChunks - 1) / kMaxChunks; }
int chunks(int n) { return (n + samples_per_chunk(n) - 1) / samples_per_chunk(n); }
/// Splits of the output rows a filter-gradient work item takes: as many as the block has threads for, at
/// most one per row, and (above one) no more than shared memory holds for adding the splits' sums in the
/// block: K x kReg floats an item and split.
int filter_splits(const ConvGeometry& g) {
  const long long items = filter_items(g), sums = items * kReg * g.k;
  return static_cast<int>(std::clamp<long long>(std::min(kFilterThreads / items, kMaxSharedFloats / sums), 1, g.oh));
}
long long filter_launch_floats(const ConvGeometry& g) {
  const int splits = filter_splits(g);
  return std::max(filter_shared_floats(g), splits > 1 ? splits * filter_items(g) * kReg * g.k : 0LL);
}

/// The forward's shared memory: the sample's zero-padded input, then the weights of output channels
/// [o0, o0 + group) tap-major ([taps][width], zeros past the group), so that one 16-byte load holds a
/// tap's kReg channels. Ends with a barrier.
__device__ __forceinline__ void stage_forward(const float* __restrict__ x, const float* __restrict__ w, float* xs,
                                              float* ws, const ConvGeometry& g, int o0, int group, int width,
                                              int taps) {
  conv_shared::stage_padded(x, xs, g, g.w + 2 * g.pad);
  for (int e = threadIdx.x; e < taps * width; e += blockDim.x) {
    const int j = e / width, ch = e - j * width;
    ws[e] = ch < group ? w[static_cast<long>(o0 + ch) * taps + j] : 0.0f;
  }
  __syncthreads();
}

/// The input gradient's shared memory: the sample's output gradient ([oc][oh][ow]), then per output
/// channel the weights of input channels [c0, c0 + group) ([oc][kk][width], zeros past the group). Ends
/// with a barrier.
__device__ __forceinline__ void stage_data(const float* __restrict__ dys, const float* __restrict__ w, float* ds,
                                           float* ws, const ConvGeometry& g, int plane, int c0, int group, int width,
                                           int kk) {
  for (int e = threadIdx.x; e < g.oc * plane; e += blockDim.x) ds[e] = dys[e];
  for (int e = threadIdx.x; e < g.oc * kk * width; e += blockDim.x) {
    const int o = e / (kk * width), r = e - o * kk * width, t = r / width, cc = r - t * width;
    ws[e] = cc < group ? w[(static_cast<long>(o) * g.c + c0 + cc) * kk + t] : 0.0f;
  }
  __syncthreads();
}

// Block (sample, group of kGroup output channels): the sample's padded input and the group's weights in
// shared memory, the weights tap-major so that one 16-byte load holds a tap's kReg channels; a thread takes
// kPositions output positions for kReg channels, so each weight load serves kPositions x kReg multiply-adds
// and each input load kReg. Each output sums its taps in (ci, ky, kx) order, then adds the bias. Strides 2
// and up; stride 1 takes small_forward_strip_kernel below.
__global__ void __launch_bounds__(kThreads)
    small_forward_kernel(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ b,
                         float* __restrict__ y, ConvGeometry g, bool relu) {
  extern __shared__ float4 shared4[];
  float* shared = reinterpret_cast<float*>(shared4);
  const int s = blockIdx.x, o0 = blockIdx.y * kGroup, group = min(kGroup, g.oc - o0);
  const int regs = (group + kReg - 1) / kReg, width = regs * kReg, taps = g.c * g.k * g.k;
  const int ph = g.h + 2 * g.pad, pw = g.w + 2 * g.pad;
  float* xs = shared;
  float* ws = shared + round_up(g.c * ph * pw, 4);  // [taps][width], zeros past the group
  stage_forward(x + static_cast<long>(s) * g.c * g.h * g.w, w, xs, ws, g, o0, group, width, taps);
  const int plane = g.oh * g.ow, spans = (plane + kPositions - 1) / kPositions, step = width / kReg;
  for (int item = threadIdx.x; item < regs * spans; item += blockDim.x) {
    const int rg = item / spans, q0 = (item - rg * spans) * kPositions;
    const float* rows[kPositions];
#pragma unroll
    for (int p = 0; p < kPositions; ++p) {
      const int q = min(q0 + p, plane - 1), oy = q / g.ow, ox = q - oy * g.ow;  // past the plane: a repeat, unwritten
      rows[p] = xs + oy * g.stride * pw + ox * g.stride;
    }
    const float4* wr = reinterpret_cast<const float4*>(ws) + rg;
    float acc[kPositions][kReg] = {};
    int j = 0;
    for (int ci = 0; ci < g.c; ++ci)
      for (int ky = 0; ky < g.k; ++ky) {
        const int offset = (ci * ph + ky) * pw;
        for (int kx = 0; kx < g.k; ++kx, ++j) {
          const float4 wv = wr[j * step];
#pragma unroll
          for (int p = 0; p < kPositions; ++p) {
            const float v = rows[p][offset + kx];
            acc[p][0] = fmaf(wv.x, v, acc[p][0]);
            acc[p][1] = fmaf(wv.y, v, acc[p][1]);
            acc[p][2] = fmaf(wv.z, v, acc[p][2]);
            acc[p][3] = fmaf(wv.w, v, acc[p][3]);
          }
        }
      }
#pragma unroll
    for (int p = 0; p < kPositions; ++p) {
      const int q = q0 + p;
      if (q >= plane) break;
#pragma unroll
      for (int r = 0; r < kReg; ++r) {
        const int o = rg * kReg + r;
        if (o >= group) break;
        float v = acc[p][r] + (b != nullptr ? __ldg(b + o0 + o) : 0.0f);
        if (relu && !(v > 0.0f)) v = 0.0f;
        y[(static_cast<long>(s) * g.oc + o0 + o) * plane + q] = v;
      }
    }
  }
}

// Block (sample, group of kGroup input channels): the sample's output gradient and, per output channel, the
// group's weights in shared memory; a thread takes one input position for kReg channels and sums, over
// output channels o, kernel rows ky and columns kx in that order, the dy of the windows that cover it.
// Strides 2 and up (two integer divisions a tap); stride 1 takes small_data_strip_kernel below.
__global__ void __launch_bounds__(kThreads)
    small_data_kernel(const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx,
                      ConvGeometry g) {
  extern __shared__ float4 shared4[];
  float* shared = reinterpret_cast<float*>(shared4);
  const int s = blockIdx.x, c0 = blockIdx.y * kGroup, group = min(kGroup, g.c - c0);
  const int regs = (group + kReg - 1) / kReg, width = regs * kReg, kk = g.k * g.k;
  const int plane = g.oh * g.ow;
  float* ds = shared;                                // [oc][oh][ow]
  float* ws = shared + round_up(g.oc * plane, 4);    // [oc][kk][width], zeros past the group
  stage_data(dy + static_cast<long>(s) * g.oc * plane, w, ds, ws, g, plane, c0, group, width, kk);
  const int in_plane = g.h * g.w, step = width / kReg;
  for (int item = threadIdx.x; item < regs * in_plane; item += blockDim.x) {
    const int rg = item / in_plane, q = item - rg * in_plane, iy = q / g.w, ix = q - iy * g.w;
    float acc[kReg] = {};
    for (int o = 0; o < g.oc; ++o) {
      const float* grads = ds + o * plane;
      const float4* wo = reinterpret_cast<const float4*>(ws + o * kk * width) + rg;
      for (int ky = 0; ky < g.k; ++ky) {
        const int ty = iy + g.pad - ky;  // oy * stride, where an output row's window covers iy with row ky
        if (ty < 0) break;
        const int oy = ty / g.stride;
        if (oy * g.stride != ty || oy >= g.oh) continue;
        for (int kx = 0; kx < g.k; ++kx) {
          const int tx = ix + g.pad - kx;
          if (tx < 0) break;
          const int ox = tx / g.stride;
          if (ox * g.stride != tx || ox >= g.ow) continue;
          const float d = grads[oy * g.ow + ox];
          const float4 wv = wo[(ky * g.k + kx) * step];
          acc[0] = fmaf(wv.x, d, acc[0]);
          acc[1] = fmaf(wv.y, d, acc[1]);
          acc[2] = fmaf(wv.z, d, acc[2]);
          acc[3] = fmaf(wv.w, d, acc[3]);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kReg; ++r) {
      const int cc = rg * kReg + r;
      if (cc >= group) break;
      dx[(static_cast<long>(s) * g.c + c0 + cc) * in_plane + q] = acc[r];
    }
  }
}

// Stride 1, K the kernel size (both directions are then one correlation of a staged plane with the
// weights): a thread takes kStrip consecutive positions of one row for kReg channels. Per (channel summed
// over, kernel row) it loads the kStrip + K - 1 values under those windows into registers once, and each
// 16-byte weight load then serves kStrip x kReg multiply-adds (the two-position kernels above made two
// shared-memory loads for every four). A small plane leaves few such items (lenet5's conv2 at batch 257:
// 120 a sample, four warps a block, latency-bound), so the channels summed over are split into `splits`
// ranges (strip_splits), each taken by its own threads; the ranges' sums are then added in range order
// through shared memory. Within a range each output sums its terms in the order of the kernels above:
// forward (ci, ky, kx), input gradient (o, ky, kx); the forward adds the bias last.
constexpr int kStrip = 4;
constexpr int kStripThreads = 512;   // the most a block takes when splitting
constexpr int kMaxStripSplits = 4;
using StripSums = float[kStrip][kReg];

/// The ranges of summed-over channels a strip launch splits into: the most, up to kMaxStripSplits, for
/// which every thread takes one item, the partial sums fit in shared memory, and no range is empty; 1
/// (no split: threads loop over the items) when none does.
int strip_splits(int items, int summed) {
  for (int s = std::min(kMaxStripSplits, summed); s > 1; --s) {
    const int per = (summed + s - 1) / s, nonempty = (summed + per - 1) / per;
    if (nonempty * items <= kStripThreads && (nonempty - 1) * items * kStrip * kReg <= kMaxSharedFloats)
      return nonempty;
  }
  return 1;
}
/// A strip kernel's work items for a block of `group` channels over a rows x cols plane: (group of kReg channels,
/// row, strip of kStrip columns); the kernels and their launches both count them here.
struct StripItems {
  int strips, per_group, items;  ///< strips a row, items per kReg channels, items in all
};
__host__ __device__ constexpr StripItems strip_items(int group, int rows, int cols) {
  const int strips = (cols + kStrip - 1) / kStrip, per_group = rows * strips;
  return {strips, per_group, (group + kReg - 1) / kReg * per_group};
}
long long strip_reduce_floats(int items, int splits) {
  return static_cast<long long>(splits - 1) * items * kStrip * kReg;
}
unsigned strip_block(int items, int splits) {
  return splits == 1 ? kThreads : static_cast<unsigned>(round_up(static_cast<long long>(splits) * items, 32));
}

/// Adds splits 1, 2, ... of each item's sums to split 0's, in that order, through `red` (shared memory the
/// block no longer reads: the call starts with a barrier, and every thread of the block makes it). Returns
/// whether this thread now holds a finished sum (split 0).
__device__ bool add_split_sums(StripSums& acc, float* red, int split, int splits, int item, int items) {
  __syncthreads();
  if (split >= 1 && split < splits)
#pragma unroll
    for (int e = 0; e < kStrip * kReg; ++e) red[((split - 1) * kStrip * kReg + e) * items + item] = acc[e / kReg][e % kReg];
  __syncthreads();
  if (split != 0) return false;
  for (int s = 1; s < splits; ++s)
#pragma unroll
    for (int e = 0; e < kStrip * kReg; ++e) acc[e / kReg][e % kReg] += red[((s - 1) * kStrip * kReg + e) * items + item];
  return true;
}

/// Runs a strip launch's items: without a split, threads loop over the items, each summing every
/// channel; with one, thread t takes item t % items of range t / items, and the ranges' sums are added
/// (add_split_sums) before split 0 writes. sum(acc, item, begin, end) adds channels [begin, end).
template <typename Sum, typename Write>
__device__ void run_strip_items(int items, int summed, int splits, float* red, const Sum& sum, const Write& write) {
  if (splits == 1) {
    for (int item = threadIdx.x; item < items; item += blockDim.x) {
      StripSums acc = {};
      sum(acc, item, 0, summed);
      write(acc, item);
    }
    return;
  }
  const int split = threadIdx.x / items, item = threadIdx.x - split * items, per = (summed + splits - 1) / splits;
  StripSums acc = {};
  if (split < splits) sum(acc, item, split * per, min(summed, (split + 1) * per));
  if (add_split_sums(acc, red, split, splits, item, items)) write(acc, item);
}

template <int K>
__global__ void __launch_bounds__(kStripThreads)
    small_forward_strip_kernel(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ b,
                               float* __restrict__ y, ConvGeometry g, bool relu, int splits) {
  extern __shared__ float4 shared4[];
  float* shared = reinterpret_cast<float*>(shared4);
  const int s = blockIdx.x, o0 = blockIdx.y * kGroup, group = min(kGroup, g.oc - o0);
  const int regs = (group + kReg - 1) / kReg, width = regs * kReg, taps = g.c * K * K;
  const int ph = g.h + 2 * g.pad, pw = g.w + 2 * g.pad;
  float* xs = shared;
  float* ws = shared + round_up(g.c * ph * pw, 4);  // [taps][width], zeros past the group
  stage_forward(x + static_cast<long>(s) * g.c * g.h * g.w, w, xs, ws, g, o0, group, width, taps);
  const StripItems layout = strip_items(group, g.oh, g.ow);
  const int strips = layout.strips, per_group = layout.per_group, items = layout.items;
  const int step = width / kReg;
  // Item: (group of kReg channels rg, output row oy, strip from column ox0).
  const auto sum = [&](StripSums& acc, int item, int c_begin, int c_end) {
    const int rg = item / per_group, rest = item - rg * per_group, oy = rest / strips;
    const int ox0 = (rest - oy * strips) * kStrip;
    const float4* wr = reinterpret_cast<const float4*>(ws) + rg;
    for (int ci = c_begin; ci < c_end; ++ci)
      for (int ky = 0; ky < K; ++ky) {
        // Padded row oy + ky < ph at stride 1; columns at pw and past feed only outputs past ow (unwritten).
        const float* row = xs + (ci * ph + oy + ky) * pw;
        float v[kStrip + K - 1];
#pragma unroll
        for (int j = 0; j < kStrip + K - 1; ++j) v[j] = ox0 + j < pw ? row[ox0 + j] : 0.0f;
        const float4* wt = wr + (ci * K + ky) * K * step;
#pragma unroll
        for (int kx = 0; kx < K; ++kx) {
          const float4 wv = wt[kx * step];
#pragma unroll
          for (int p = 0; p < kStrip; ++p) {
            acc[p][0] = fmaf(wv.x, v[p + kx], acc[p][0]);
            acc[p][1] = fmaf(wv.y, v[p + kx], acc[p][1]);
            acc[p][2] = fmaf(wv.z, v[p + kx], acc[p][2]);
            acc[p][3] = fmaf(wv.w, v[p + kx], acc[p][3]);
          }
        }
      }
  };
  const auto write = [&](const StripSums& acc, int item) {
    const int rg = item / per_group, rest = item - rg * per_group, oy = rest / strips;
    const int ox0 = (rest - oy * strips) * kStrip;
#pragma unroll
    for (int r = 0; r < kReg; ++r) {
      const int o = rg * kReg + r;
      if (o >= group) break;
      const float bias = b != nullptr ? __ldg(b + o0 + o) : 0.0f;
      float* out = y + (static_cast<long>(s) * g.oc + o0 + o) * g.oh * g.ow + oy * g.ow;
#pragma unroll
      for (int p = 0; p < kStrip; ++p) {
        if (ox0 + p >= g.ow) break;
        float v = acc[p][r] + bias;
        if (relu && !(v > 0.0f)) v = 0.0f;
        out[ox0 + p] = v;
      }
    }
  };
  run_strip_items(items, g.c, splits, shared, sum, write);
}

template <int K>
__global__ void __launch_bounds__(kStripThreads)
    small_data_strip_kernel(const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx,
                            ConvGeometry g, int splits) {
  extern __shared__ float4 shared4[];
  float* shared = reinterpret_cast<float*>(shared4);
  const int s = blockIdx.x, c0 = blockIdx.y * kGroup, group = min(kGroup, g.c - c0);
  const int regs = (group + kReg - 1) / kReg, width = regs * kReg, kk = K * K;
  const int plane = g.oh * g.ow;
  float* ds = shared;                              // [oc][oh][ow]
  float* ws = shared + round_up(g.oc * plane, 4);  // [oc][kk][width], zeros past the group
  stage_data(dy + static_cast<long>(s) * g.oc * plane, w, ds, ws, g, plane, c0, group, width, kk);
  const StripItems layout = strip_items(group, g.h, g.w);
  const int strips = layout.strips, per_group = layout.per_group, items = layout.items;
  const int step = width / kReg;
  // Item: (group of kReg channels rg, input row iy, strip from column ix0).
  const auto sum = [&](StripSums& acc, int item, int o_begin, int o_end) {
    const int rg = item / per_group, rest = item - rg * per_group, iy = rest / strips;
    const int ix0 = (rest - iy * strips) * kStrip;
    // Input column ix0 + p takes kernel column kx from output column ix0 + p + pad - kx = first + p + K - 1 - kx.
    const int first = ix0 + g.pad - (K - 1);
    for (int o = o_begin; o < o_end; ++o) {
      const float* grads = ds + o * plane;
      const float4* wo = reinterpret_cast<const float4*>(ws + o * kk * width) + rg;
      for (int ky = 0; ky < K; ++ky) {
        const int oy = iy + g.pad - ky;  // the output row whose window covers iy with kernel row ky
        if (oy < 0) break;
        if (oy >= g.oh) continue;
        const float* row = grads + oy * g.ow;
        float v[kStrip + K - 1];
#pragma unroll
        for (int j = 0; j < kStrip + K - 1; ++j) {
          const int ox = first + j;
          v[j] = ox >= 0 && ox < g.ow ? row[ox] : 0.0f;
        }
#pragma unroll
        for (int kx = 0; kx < K; ++kx) {
          const float4 wv = wo[(ky * K + kx) * step];
#pragma unroll
          for (int p = 0; p < kStrip; ++p) {
            const float d = v[p + K - 1 - kx];
            acc[p][0] = fmaf(wv.x, d, acc[p][0]);
            acc[p][1] = fmaf(wv.y, d, acc[p][1]);
            acc[p][2] = fmaf(wv.z, d, acc[p][2]);
            acc[p][3] = fmaf(wv.w, d, acc[p][3]);
          }
        }
      }
    }
  };
  const auto write = [&](const StripSums& acc, int item) {
    const int rg = item / per_group, rest = item - rg * per_group, iy = rest / strips;
    const int ix0 = (rest - iy * strips) * kStrip;
#pragma unroll
    for (int r = 0; r < kReg; ++r) {
      const int cc = rg * kReg + r;
      if (cc >= group) break;
      float* out = dx + (static_cast<long>(s) * g.c + c0 + cc) * g.h * g.w + iy * g.w;
#pragma unroll
      for (int p = 0; p < kStrip; ++p) {
        if (ix0 + p >= g.w) break;
        out[ix0 + p] = acc[p][r];
      }
    }
  };
  run_strip_items(items, g.oc, splits, shared, sum, write);
}

/// Writes value to the chunk's partial sums `out` ([(o, ci, ky, kx) | bias o]) as sum (r, kx) of filter-gradient
/// work item `item` (below); sums that name no output (channels past oc, a bias item's past its first) are dropped.
template <int K>
__device__ __forceinline__ void write_item_sum(float* out, const ConvGeometry& g, int weight_items, int item, int r,
                                               int kx, float value) {
  if (item >= weight_items) {
    if (r == 0 && kx == 0) out[g.oc * g.c * K * K + item - weight_items] = value;
    return;
  }
  const int og = item / (g.c * K), rem = item - og * g.c * K, ci = rem / K, ky = rem - ci * K, o = og * kReg + r;
  if (o < g.oc) out[((o * g.c + ci) * K + ky) * K + kx] = value;
}

// Block per chunk of samples, K the kernel size: each sample's padded input and output gradient in shared
// memory in turn (odd pitches: odd_pitch); thread t takes work item t % items of row split t / items (splits:
// filter_splits) and holds it in registers across the chunk: a weight item (kReg output channels, input
// channel ci, kernel row ky) sums dy x over the split's positions for all K columns; a bias item sums one
// channel's dy there. Then the splits' sums are added in split order through shared memory (lenet5's conv1,
// 16 items: 28 splits, one output row each, where four splits had left 448 of 512 threads idle).
// partial[chunk][(o, ci, ky, kx) | bias o].
template <int K>
__global__ void __launch_bounds__(kFilterThreads)
    small_filter_partial_kernel(const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ partial,
                                ConvGeometry g, int per_chunk, int splits) {
  extern __shared__ float shared[];
  const int ph = g.h + 2 * g.pad, pitch = odd_pitch(g.w + 2 * g.pad), plane = g.oh * g.ow,
            plane_pitch = odd_pitch(plane);
  float* xs = shared;                     // [c][ph][pitch]
  float* ds = shared + g.c * ph * pitch;  // [oc][plane_pitch]
  const int weight_items = (g.oc + kReg - 1) / kReg * g.c * K, items = weight_items + g.oc;
  const int split = threadIdx.x / items, item = threadIdx.x - split * items;
  const bool active = split < splits;
  const int first = blockIdx.x * per_chunk, last = min(g.n, first + per_chunk);
  float acc[kReg][K] = {};
  for (int s = first; s < last; ++s) {
    __syncthreads();  // the last sample's reads are done
    conv_shared::stage_padded(x + static_cast<long>(s) * g.c * g.h * g.w, xs, g, pitch);
    const float* dys = dy + static_cast<long>(s) * g.oc * plane;
    for (int e = threadIdx.x; e < g.oc * plane; e += blockDim.x) ds[e + e / plane * (plane_pitch - plane)] = dys[e];
    __syncthreads();
    if (!active) continue;
    if (item < weight_items) {
      const int og = item / (g.c * K), rem = item - og * g.c * K, ci = rem / K, ky = rem - ci * K;
      const int o0 = og * kReg;
      for (int oy = split; oy < g.oh; oy += splits) {
        const float* row = xs + (ci * ph + oy * g.stride + ky) * pitch;
        for (int ox = 0; ox < g.ow; ++ox) {
          float d[kReg];
#pragma unroll
          for (int r = 0; r < kReg; ++r) d[r] = o0 + r < g.oc ? ds[(o0 + r) * plane_pitch + oy * g.ow + ox] : 0.0f;
          const float* window = row + ox * g.stride;
#pragma unroll
          for (int kx = 0; kx < K; ++kx) {
            const float v = window[kx];
#pragma unroll
            for (int r = 0; r < kReg; ++r) acc[r][kx] = fmaf(d[r], v, acc[r][kx]);
          }
        }
      }
    } else {
      const float* grads = ds + (item - weight_items) * plane_pitch;
      for (int oy = split; oy < g.oh; oy += splits)
        for (int ox = 0; ox < g.ow; ++ox) acc[0][0] += grads[oy * g.ow + ox];
    }
  }
  float* out = partial + static_cast<long>(blockIdx.x) * (g.oc * g.c * K * K + g.oc);
  if (splits == 1) {
    if (!active) return;
#pragma unroll
    for (int r = 0; r < kReg; ++r)
#pragma unroll
      for (int kx = 0; kx < K; ++kx) write_item_sum<K>(out, g, weight_items, item, r, kx, acc[r][kx]);
    return;
  }
  constexpr int kSums = kReg * K;  // an item's sums, [r][kx]
  __syncthreads();                 // the staged samples are read: the splits' sums take their place
  if (active)
#pragma unroll
    for (int r = 0; r < kReg; ++r)
#pragma unroll
      for (int kx = 0; kx < K; ++kx) shared[(split * items + item) * kSums + r * K + kx] = acc[r][kx];
  __syncthreads();
  for (int t = threadIdx.x; t < items * kSums; t += blockDim.x) {
    const int it = t / kSums, rk = t - it * kSums;
    float total = 0.0f;
    for (int sp = 0; sp < splits; ++sp) total += shared[sp * items * kSums + t];
    write_item_sum<K>(out, g, weight_items, it, rk / K, rk % K, total);
  }
}

/// dw, then db: a warp per entry; lane l adds the partials of chunks l, l + 32, ... in
/// order, then a shuffle tree adds the lanes (a fixed order; one thread per entry, 257 dependent loads
/// each, took 11.6 us at batch 257).
__global__ void small_filter_finish_kernel(const float* __restrict__ partial, int chunks, int weights, int oc,
                                           float* __restrict__ dw, float* __restrict__ db) {
  const int per_chunk = weights + oc, lane = threadIdx.x % 32;
  const int e = blockIdx.x * (kFinishThreads / 32) + threadIdx.x / 32;
  if (e >= per_chunk) return;  // whole warps leave together
  float sum = 0.0f;
  for (int c = lane; c < chunks; c += 32) sum += partial[static_cast<long>(c) * per_chunk + e];
  for (int off = 16; off > 0; off /= 2) sum += __shfl_down_sync(0xffffffffu, sum, off);
  if (lane != 0) return;
  if (e < weights)
    dw[e] = sum;
  else
    db[e - weights] = sum;
}

void require_fits(const ConvGeometry& g, const char* what) {
  if (!small_conv_fits(g)) conv_shared::refuse(what, "small convolution", g);
}

/// Calls f(std::integral_constant<int, k>{}), for the kernels templated on the kernel size (1 to kMaxK).
template <typename F>
void with_kernel_size(int k, F&& f) {
  static_assert(kMaxK == 7);
  switch (k) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    case 6: f(std::integral_constant<int, 6>{}); break;
    default: f(std::integral_constant<int, 7>{}); break;
  }
}

template <int K>
void launch_filter_partial(const float* x, const float* dy, float* partial, const ConvGeometry& g,
                           cudaStream_t stream) {
  const size_t shared = sizeof(float) * static_cast<size_t>(filter_launch_floats(g));
  small_filter_partial_kernel<K><<<static_cast<unsigned>(chunks(g.n)), kFilterThreads, shared, stream>>>(
      x, dy, partial, g, samples_per_chunk(g.n), filter_splits(g));
}

}  // namespace

bool small_conv_fits(const ConvGeometry& g) {
  if (g.n < 1 || g.c < 1 || g.h < 1 || g.w < 1 || g.oc < 1 || g.k < 1 || g.k > kMaxK || g.stride < 1 || g.pad < 0)
    return false;
  if (g.c > kMaxSharedFloats || g.oc > kMaxSharedFloats || g.h > kMaxSharedFloats || g.w > kMaxSharedFloats ||
      g.pad > kMaxSharedFloats)
    return false;  // keeps the products below far from overflow
  const long long ph = g.h + 2LL * g.pad, pw = g.w + 2LL * g.pad;
  if (ph < g.k || pw < g.k || g.oh != (ph - g.k) / g.stride + 1 || g.ow != (pw - g.k) / g.stride + 1) return false;
  return forward_shared_floats(g) <= kMaxSharedFloats && data_shared_floats(g) <= kMaxSharedFloats &&
         filter_shared_floats(g) <= kMaxSharedFloats && filter_items(g) <= kFilterThreads;
}

size_t small_conv_scratch(const ConvGeometry& g) {
  if (!small_conv_fits(g)) return 0;
  return sizeof(float) * static_cast<size_t>(chunks(g.n)) * (static_cast<size_t>(g.oc) * g.c * g.k * g.k + g.oc);
}

void small_conv_forward(const float* x, const float* w, const float* b, float* y, bool relu, const ConvGeometry& g,
                        cudaStream_t stream) {
  require_fits(g, "small_conv_forward");
  const dim3 grid(static_cast<unsigned>(g.n), static_cast<unsigned>((g.oc + kGroup - 1) / kGroup));
  const size_t staged = static_cast<size_t>(forward_shared_floats(g));
  if (g.stride == 1) {
    // The widest group's items (the last group may have fewer: its extra threads idle).
    const int items = strip_items(std::min(kGroup, g.oc), g.oh, g.ow).items;
    const int splits = strip_splits(items, g.c);
    const size_t shared = sizeof(float) * std::max<size_t>(staged, strip_reduce_floats(items, splits));
    with_kernel_size(g.k, [&](auto kernel_size) {
      constexpr int K = decltype(kernel_size)::value;
      small_forward_strip_kernel<K><<<grid, strip_block(items, splits), shared, stream>>>(x, w, b, y, g, relu, splits);
    });
  } else {
    small_forward_kernel<<<grid, kThreads, sizeof(float) * staged, stream>>>(x, w, b, y, g, relu);
  }
  CUDA_CHECK_LAUNCH();
}

void small_conv_backward_data(const float* dy, const float* w, float* dx, const ConvGeometry& g, cudaStream_t stream) {
  require_fits(g, "small_conv_backward_data");
  const dim3 grid(static_cast<unsigned>(g.n), static_cast<unsigned>((g.c + kGroup - 1) / kGroup));
  const size_t staged = static_cast<size_t>(data_shared_floats(g));
  if (g.stride == 1) {
    const int items = strip_items(std::min(kGroup, g.c), g.h, g.w).items;
    const int splits = strip_splits(items, g.oc);
    const size_t shared = sizeof(float) * std::max<size_t>(staged, strip_reduce_floats(items, splits));
    with_kernel_size(g.k, [&](auto kernel_size) {
      constexpr int K = decltype(kernel_size)::value;
      small_data_strip_kernel<K><<<grid, strip_block(items, splits), shared, stream>>>(dy, w, dx, g, splits);
    });
  } else {
    small_data_kernel<<<grid, kThreads, sizeof(float) * staged, stream>>>(dy, w, dx, g);
  }
  CUDA_CHECK_LAUNCH();
}

void small_conv_filter_grad(const float* x, const float* dy, float* dw, float* db, void* scratch,
                            const ConvGeometry& g, cudaStream_t stream) {
  require_fits(g, "small_conv_filter_grad");
  float* partial = static_cast<float*>(scratch);
  with_kernel_size(g.k, [&](auto kernel_size) {
    launch_filter_partial<decltype(kernel_size)::value>(x, dy, partial, g, stream);
  });
  CUDA_CHECK_LAUNCH();
  const int weights = g.oc * g.c * g.k * g.k;
  constexpr int kWarpsPerBlock = kFinishThreads / 32;
  const unsigned blocks = static_cast<unsigned>((weights + g.oc + kWarpsPerBlock - 1) / kWarpsPerBlock);
  small_filter_finish_kernel<<<blocks, kFinishThreads, 0, stream>>>(partial, chunks(g.n), weights,
                                                                     g.oc, dw, db);
  CUDA_CHECK_LAUNCH();
}

}  // namespace dptrain::kernels
