#include <climits>
#include <string>

#include "core/cuda_check.h"
#include "kernels/classifier_kernels.h"
#include "kernels/last_block.cuh"
#include "kernels/softmax_row.cuh"

namespace dptrain::kernels {

namespace {

constexpr int kWarps = 8, kThreads = 32 * kWarps;

// A block per (slice of kCols input columns, tile of kTile samples). Each block stages its tile's
// logits and labels and its columns of x and w in shared memory (one pass of loads), computes the
// tile's dL/dlogits there (a thread per sample: cheap, and no second launch to share them), then
// its columns of dx (sums over classes) and the tile's part of dw (sums over samples); the first
// slice's blocks also take db, the loss and dlogits. Within a tile each sum over samples is split
// into kThreads / (the block's sums) contiguous ranges, each summed by its own thread in four
// interleaved chains, then added in order. Past one tile the tiles' sums go to scratch, and the
// last block of each slice to arrive (last_block_to_arrive, as in the loss kernel) adds them in tile
// order and resets its counter. So the order depends on the shape alone.
// (Before, a block per slice took the whole batch, staged whole: up to 399 samples at 10 classes,
// and at lenet5's 257 it took 14.4 us on 11 SMs with 60% of issue slots busy, every block computing
// all 257 softmaxes; past 399 the loss, bias and input-gradient kernels and a cuBLAS weight GEMM ran
// instead, 23 us on the critical path and 28 us beside it at batch 1000, H100.)
constexpr int kCols = 8, kTile = 64;
static_assert(kTile <= kThreads, "a thread per sample of the tile");

long tiles_for(int n) { return (static_cast<long>(n) + kTile - 1) / kTile; }
long slices_for(int inputs) { return (static_cast<long>(inputs) + kCols - 1) / kCols; }
/// A block's sums: dw's classes x kCols, then (in the first slice's blocks) db's classes.
__host__ __device__ constexpr int block_sums(int classes) { return classes * (kCols + 1); }
/// Shared floats for the sums' ranges: a slot per thread, or per sum where there are more sums.
__host__ __device__ constexpr int range_slots(int classes) {
  return block_sums(classes) > kThreads ? block_sums(classes) : kThreads;
}

constexpr size_t shared_bytes(int classes) {
  return sizeof(float) * (2 * static_cast<size_t>(kTile) * classes + kTile * kCols + static_cast<size_t>(classes) * kCols +
                          static_cast<size_t>(range_slots(classes))) +
         sizeof(int32_t) * kTile;
}
// 48 KiB is a launch's limit for static and dynamic shared memory together without an opt-in; the
// static part is block_loss_sums' two arrays of kWarps doubles and last_block_to_arrive's flag.
static_assert(shared_bytes(kSerialClasses) + 2 * kWarps * sizeof(double) + 16 <= 48 * 1024);

/// The staged arrays, one after another: x's columns, w's columns, the logits, then the labels (as bits).
/// Every thread issues up to kLoadsInFlight loads before it stores them, so the staging waits one
/// memory latency per kThreads x kLoadsInFlight values.
constexpr int kLoadsInFlight = 8;

/// sum over i in [begin, end) of a[i * stride_a] * b[i * stride_b] (b null: of a alone), in four chains.
__device__ __forceinline__ float sum_over_samples(const float* a, int stride_a, const float* b, int stride_b, int begin,
                                                  int end) {
  float acc[4] = {};
#pragma unroll 4
  for (int i = begin; i < end; ++i)
    acc[(i - begin) % 4] = b == nullptr ? acc[(i - begin) % 4] + a[i * stride_a]
                                        : fmaf(a[i * stride_a], b[i * stride_b], acc[(i - begin) % 4]);
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

__global__ void __launch_bounds__(kThreads) linear_loss_backward_kernel(LinearLossBackward p) {
  extern __shared__ float shared[];
  const int classes = p.classes, inputs = p.inputs, tiles = static_cast<int>(gridDim.y), tile = blockIdx.y;
  const int first = tile * kTile, rows = min(kTile, p.n - first);
  float* dl = shared;                   // [rows][classes]
  float* xs = dl + rows * classes;      // [rows][kCols]
  float* ws = xs + rows * kCols;        // [classes][kCols]
  float* zs = ws + classes * kCols;     // the tile's logits, [rows][classes]
  int32_t* labels = reinterpret_cast<int32_t*>(zs + rows * classes);
  float* ranges = reinterpret_cast<float*>(labels + rows);  // [range_slots]: the sums' ranges
  const int c0 = blockIdx.x * kCols, cols = min(kCols, inputs - c0);
  const bool first_slice = blockIdx.x == 0;

  // xs, ws, zs and labels are contiguous: one pass over their concatenation.
  const float* x = p.x + static_cast<long>(first) * inputs;
  const float* logits = p.logits + static_cast<long>(first) * classes;
  const int x_end = rows * kCols, w_end = x_end + classes * kCols, z_end = w_end + rows * classes, total = z_end + rows;
  const auto load = [&](int t) -> float {
    if (t < x_end) {
      const int i = t / kCols, j = t % kCols;
      return j < cols ? __ldg(x + static_cast<long>(i) * inputs + c0 + j) : 0.0f;
    }
    if (t < w_end) {
      const int c = (t - x_end) / kCols, j = (t - x_end) % kCols;
      return j < cols ? __ldg(p.w + static_cast<long>(c) * inputs + c0 + j) : 0.0f;
    }
    if (t < z_end) return __ldg(logits + (t - w_end));
    return __int_as_float(__ldg(p.labels + first + (t - z_end)));
  };
  for (int t0 = threadIdx.x; t0 < total; t0 += kThreads * kLoadsInFlight) {
    float v[kLoadsInFlight];
#pragma unroll
    for (int u = 0; u < kLoadsInFlight; ++u) {
      const int t = t0 + u * kThreads;
      v[u] = t < total ? load(t) : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < kLoadsInFlight; ++u)
      if (t0 + u * kThreads < total) xs[t0 + u * kThreads] = v[u];
  }
  __syncthreads();
  const Smoothing sm(p.label_smoothing, classes);
  double loss = 0.0, correct = 0.0;
  for (int i = threadIdx.x; i < rows; i += kThreads) {  // a thread per sample (classes <= kSerialClasses)
    const float* z = zs + i * classes;
    const SoftmaxRow row = softmax_row_thread(z, classes);
    const int label = labels[i];
    for (int c = 0; c < classes; ++c) {
      const float g = softmax_xent_grad(z, c, row, label, sm, p.grad_scale);
      dl[i * classes + c] = g;
      if (first_slice) p.dlogits[static_cast<long>(first + i) * classes + c] = g;
    }
    if (first_slice) {
      loss += softmax_xent_loss(z[label], row, classes, sm);
      correct += row.best_index == label ? 1.0 : 0.0;
    }
  }
  if (first_slice) {  // block-uniform: every thread of the block takes part in the block's sums
    if (tiles == 1) {
      add_block_sums<kWarps>(loss, correct, p.sums);
    } else {
      block_loss_sums<kWarps>(loss, correct);
      if (threadIdx.x == 0) {
        p.scratch.loss_partials[2 * tile] = loss;
        p.scratch.loss_partials[2 * tile + 1] = correct;
      }
    }
  }
  __syncthreads();  // dl complete
  // The block's sums over its samples: dw (classes x kCols), then in the first slice db (classes); each
  // in `splits` ranges of `per` samples, range r taken by thread r * sums + sum.
  const int sums = classes * kCols + (first_slice ? classes : 0), splits = max(1, min(kThreads / sums, rows));
  const int per = (rows + splits - 1) / splits;
  for (int t = threadIdx.x; t < sums * splits; t += kThreads) {
    const int r = t / sums, e = t - r * sums, begin = r * per, end = min(rows, begin + per);
    ranges[t] = e < classes * kCols ? sum_over_samples(dl + e / kCols, classes, xs + e % kCols, kCols, begin, end)
                                    : sum_over_samples(dl + e - classes * kCols, classes, nullptr, 0, begin, end);
  }
  if (splits > 1) __syncthreads();
  float* partial = tiles == 1 ? nullptr
                              : p.scratch.partials + (static_cast<long>(blockIdx.x) * tiles + tile) * block_sums(classes);
  for (int e = threadIdx.x; e < sums; e += kThreads) {
    float total_e = ranges[e];
    for (int r = 1; r < splits; ++r) total_e += ranges[r * sums + e];
    if (partial != nullptr)
      partial[e] = total_e;
    else if (e >= classes * kCols)
      p.db[e - classes * kCols] = total_e;
    else if (e % kCols < cols)
      p.dw[static_cast<long>(e / kCols) * inputs + c0 + e % kCols] = total_e;
  }
  if (p.dx != nullptr) {
    for (int t = threadIdx.x; t < rows * kCols; t += kThreads) {
      const int i = t / kCols, j = t % kCols;
      if (j >= cols) continue;
      float total_x = 0.0f;
      for (int c = 0; c < classes; ++c) total_x = fmaf(dl[i * classes + c], ws[c * kCols + j], total_x);
      p.dx[static_cast<long>(first + i) * inputs + c0 + j] = total_x;
    }
  }
  if (tiles == 1) return;

  // The slice's last block to arrive adds every tile's sums, in tile order.
  if (!last_block_to_arrive(p.scratch.arrivals + blockIdx.x, static_cast<unsigned>(tiles))) return;
  const float* slice = p.scratch.partials + static_cast<long>(blockIdx.x) * tiles * block_sums(classes);
  for (int e = threadIdx.x; e < sums; e += kThreads) {
    if (e < classes * kCols && e % kCols >= cols) continue;
    float total_e = __ldcg(slice + e);  // from L2: other blocks wrote them
#pragma unroll 8
    for (int t = 1; t < tiles; ++t) total_e += __ldcg(slice + static_cast<long>(t) * block_sums(classes) + e);
    if (e >= classes * kCols)
      p.db[e - classes * kCols] = total_e;
    else
      p.dw[static_cast<long>(e / kCols) * inputs + c0 + e % kCols] = total_e;
  }
  if (first_slice) add_partial_loss_sums<kWarps>(p.scratch.loss_partials, tiles, p.sums);
  if (threadIdx.x == 0) p.scratch.arrivals[blockIdx.x] = 0;
}

}  // namespace

bool linear_loss_backward_fits(int n, int classes, int inputs) {
  return n > 0 && classes > 0 && classes <= kSerialClasses && inputs > 0 && tiles_for(n) <= 65535 &&
         static_cast<long>(n) * inputs <= INT_MAX && static_cast<long>(n) * classes <= INT_MAX &&
         static_cast<long>(classes) * inputs <= INT_MAX;
}

LinearLossScratchSize linear_loss_backward_scratch(int n, int classes, int inputs) {
  if (!linear_loss_backward_fits(n, classes, inputs) || tiles_for(n) == 1) return {};
  const auto tiles = static_cast<size_t>(tiles_for(n)), slices = static_cast<size_t>(slices_for(inputs));
  return {slices * tiles * static_cast<size_t>(block_sums(classes)), 2 * tiles, slices};
}

void linear_loss_backward(const LinearLossBackward& p, cudaStream_t stream) {
  const auto shape = [&] {
    return "a batch of " + std::to_string(p.n) + " x " + std::to_string(p.classes) + " classes x " +
           std::to_string(p.inputs) + " inputs";
  };
  if (!linear_loss_backward_fits(p.n, p.classes, p.inputs))
    throw CudaError("linear_loss_backward: " + shape() + " is past what it serves");
  const long tiles = tiles_for(p.n);
  if (tiles > 1 && (p.scratch.partials == nullptr || p.scratch.loss_partials == nullptr || p.scratch.arrivals == nullptr))
    throw CudaError("linear_loss_backward: " + shape() + " spans " + std::to_string(tiles) +
                    " tiles of samples and needs scratch, none given");
  const dim3 grid(static_cast<unsigned>(slices_for(p.inputs)), static_cast<unsigned>(tiles));
  linear_loss_backward_kernel<<<grid, kThreads, shared_bytes(p.classes), stream>>>(p);
  CUDA_CHECK_LAUNCH();
}

}  // namespace dptrain::kernels
