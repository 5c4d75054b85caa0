#include <algorithm>
#include <cstdint>
#include <string>

#include "core/cuda_check.h"
#include "kernels/linear_head.h"
#include "kernels/softmax_row.cuh"

namespace dptrain::kernels {

namespace {

// A block of kThreads takes `rows` rows (a multiple of kRowsPerThread) through every layer. A thread
// computes one output column for kRowsPerThread rows at a time: each weight it loads serves four
// rows, and the rows' inputs are broadcast from shared memory to the warp.
constexpr int kThreads = 256, kWarps = kThreads / 32, kRowsPerThread = 4;
constexpr int kBatch = 8;  // groups of four weights a thread loads before it uses them
constexpr size_t kSharedLimit = 48 * 1024;  // a launch's static and dynamic shared memory without opt-in

struct Args {
  LinearHead h;
  const float* x;                  // forward: the input
  const float* y[kHeadMaxLayers];  // backward: the forward's outputs
  float* out[kHeadMaxLayers];      // forward: y; backward: g
  float* dx;
  HeadLoss loss;
  int n, rows;
};

/// The widest of width[first], width[first + 2], ... (the widths that share one shared buffer).
__host__ __device__ int widest(const LinearHead& h, int first) {
  int w = 0;
  for (int i = first; i <= h.layers; i += 2) w = h.width[i] > w ? h.width[i] : w;
  return w;
}
size_t forward_shared(const LinearHead& h, int rows) {
  return sizeof(float) * rows * (static_cast<size_t>(widest(h, 0)) + widest(h, 1));
}
// Backward: g[l] in the buffer of l's parity, l = 0 .. layers - 1, width[l + 1].
size_t backward_shared(const LinearHead& h, int rows) {
  return sizeof(float) * rows * (static_cast<size_t>(widest(h, 1)) + widest(h, 2)) + 2 * kWarps * sizeof(double);
}

__host__ __device__ bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

/// out[r][j] (r < rows, j < cols) = sum over k < inner, in order, of in[r][k] * weight(j, k), where
/// weight(j, k) = w[j * inner + k] (row_major: the forward) or w[k * cols + j] (the backward's
/// transposed product); then finish(r, j, sum) stores it. in: shared memory, [rows][inner].
template <bool kRowMajor, typename Finish>
__device__ __forceinline__ void tile_product(const float* __restrict__ in, const float* __restrict__ w, int rows,
                                             int cols, int inner, Finish finish) {
  const int groups = rows / kRowsPerThread;
  const bool vec = inner % 4 == 0 && (!kRowMajor || reinterpret_cast<uintptr_t>(w) % 16 == 0);
  for (int item = threadIdx.x; item < cols * groups; item += kThreads) {
    const int j = item % cols, r0 = item / cols * kRowsPerThread;
    const float* a = in + static_cast<long>(r0) * inner;
    float acc[kRowsPerThread] = {};
    if (vec) {
      // kBatch groups of four weights are loaded before any is used: the loads wait on L2 together.
      const float* wj = kRowMajor ? w + static_cast<long>(j) * inner : w + j;
      for (int k0 = 0; k0 < inner; k0 += 4 * kBatch) {
        float4 wv[kBatch];
#pragma unroll
        for (int u = 0; u < kBatch; ++u) {
          const int k = k0 + 4 * u;
          if (k >= inner) break;
          if (kRowMajor) {
            wv[u] = __ldg(reinterpret_cast<const float4*>(wj + k));
          } else {
            wv[u] = make_float4(__ldg(wj + static_cast<long>(k) * cols), __ldg(wj + static_cast<long>(k + 1) * cols),
                                __ldg(wj + static_cast<long>(k + 2) * cols), __ldg(wj + static_cast<long>(k + 3) * cols));
          }
        }
#pragma unroll
        for (int u = 0; u < kBatch; ++u) {
          const int k = k0 + 4 * u;
          if (k >= inner) break;
#pragma unroll
          for (int r = 0; r < kRowsPerThread; ++r) {
            const float4 av = *reinterpret_cast<const float4*>(a + r * inner + k);
            acc[r] = fmaf(av.x, wv[u].x, acc[r]);
            acc[r] = fmaf(av.y, wv[u].y, acc[r]);
            acc[r] = fmaf(av.z, wv[u].z, acc[r]);
            acc[r] = fmaf(av.w, wv[u].w, acc[r]);
          }
        }
      }
    } else {
      for (int k = 0; k < inner; ++k) {
        const float wv = __ldg(kRowMajor ? w + static_cast<long>(j) * inner + k : w + static_cast<long>(k) * cols + j);
#pragma unroll
        for (int r = 0; r < kRowsPerThread; ++r) acc[r] = fmaf(a[r * inner + k], wv, acc[r]);
      }
    }
#pragma unroll
    for (int r = 0; r < kRowsPerThread; ++r) finish(r0 + r, j, acc[r]);
  }
}

__global__ void __launch_bounds__(kThreads) head_forward_kernel(Args p) {
  extern __shared__ float4 shared4[];
  float* const even = reinterpret_cast<float*>(shared4);  // width[0], width[2], ...
  float* const odd = even + p.rows * widest(p.h, 0);       // width[1], width[3], ...
  const auto buf = [&](int i) { return i % 2 == 0 ? even : odd; };
  const long row0 = static_cast<long>(blockIdx.x) * p.rows;
  const int valid = static_cast<int>(min(static_cast<long>(p.rows), p.n - row0));
  {  // the tile's inputs: rows row0 .. row0 + rows, contiguous; rows past n are zero
    const int k = p.h.width[0];
    const float* src = p.x + row0 * k;
    const int count = p.rows * k, have = valid * k;
    if (k % 4 == 0 && aligned16(src)) {
      for (int t = threadIdx.x; t < count / 4; t += kThreads)
        reinterpret_cast<float4*>(buf(0))[t] =
            4 * t < have ? __ldg(reinterpret_cast<const float4*>(src) + t) : make_float4(0.f, 0.f, 0.f, 0.f);
    } else {
      for (int t = threadIdx.x; t < count; t += kThreads) buf(0)[t] = t < have ? __ldg(src + t) : 0.0f;
    }
  }
  __syncthreads();
  for (int l = 0; l < p.h.layers; ++l) {
    const int inner = p.h.width[l], cols = p.h.width[l + 1];
    const float* bias = p.h.b[l];
    const bool relu = p.h.relu[l];
    float* staged = buf((l + 1) % 2);
    float* y = p.out[l];
    tile_product<true>(buf(l % 2), p.h.w[l], p.rows, cols, inner, [&](int r, int j, float sum) {
      float v = sum + __ldg(bias + j);
      if (relu) v = v > 0.0f ? v : 0.0f;
      staged[r * cols + j] = v;
      if (r < valid) y[(row0 + r) * cols + j] = v;
    });
    __syncthreads();
  }
}

__global__ void __launch_bounds__(kThreads) head_backward_kernel(Args p) {
  extern __shared__ float4 shared4[];
  float* const even = reinterpret_cast<float*>(shared4);  // g[0], g[2], ...: width[1], width[3], ...
  float* const odd = even + p.rows * widest(p.h, 1);       // g[1], g[3], ...
  const auto buf = [&](int i) { return i % 2 == 0 ? even : odd; };
  const long row0 = static_cast<long>(blockIdx.x) * p.rows;
  const int valid = static_cast<int>(min(static_cast<long>(p.rows), p.n - row0));
  const int last = p.h.layers - 1, classes = p.h.width[p.h.layers];
  {  // the loss: a thread per row
    const Smoothing sm(p.loss.label_smoothing, classes);
    double loss = 0.0, correct = 0.0;
    float* gs = buf(last % 2);
    for (int r = threadIdx.x; r < p.rows; r += kThreads) {
      float* gr = gs + r * classes;
      if (r >= valid) {
        for (int c = 0; c < classes; ++c) gr[c] = 0.0f;
        continue;
      }
      const float* z = p.y[last] + (row0 + r) * classes;
      const SoftmaxRow row = softmax_row_thread(z, classes);
      const int label = p.loss.labels[row0 + r];
      float* g = p.out[last] + (row0 + r) * classes;
      for (int c = 0; c < classes; ++c) gr[c] = g[c] = softmax_xent_grad(z, c, row, label, sm, p.loss.grad_scale);
      loss += softmax_xent_loss(z[label], row, classes, sm);
      correct += row.best_index == label ? 1.0 : 0.0;
    }
    add_grid_sums<kWarps>(loss, correct, p.loss.sums, p.loss.scratch.partials, p.loss.scratch.arrivals);
  }
  __syncthreads();
  // g[l] = (g[l + 1] W[l + 1]) masked by layer l's ReLU, from the last hidden layer down.
  for (int l = last - 1; l >= 0; --l) {
    const int inner = p.h.width[l + 2], cols = p.h.width[l + 1];
    const bool relu = p.h.relu[l];
    const float* y = p.y[l];
    float* staged = buf(l % 2);
    float* g = p.out[l];
    tile_product<false>(buf((l + 1) % 2), p.h.w[l + 1], p.rows, cols, inner, [&](int r, int j, float sum) {
      if (r >= valid) {
        staged[r * cols + j] = 0.0f;
        return;
      }
      const long at = (row0 + r) * cols + j;
      if (relu && !(y[at] > 0.0f)) sum = 0.0f;
      staged[r * cols + j] = sum;
      g[at] = sum;
    });
    __syncthreads();
  }
  if (p.dx == nullptr) return;
  const int cols = p.h.width[0];
  tile_product<false>(buf(0), p.h.w[0], p.rows, cols, p.h.width[1], [&](int r, int j, float sum) {
    if (r < valid) p.dx[(row0 + r) * cols + j] = sum;
  });
}

void check_fits(const LinearHead& h, const char* what) {
  if (!linear_head_fits(h))
    throw CudaError(std::string(what) + ": a head of " + std::to_string(h.layers) +
                    " layers outside what the kernel serves (linear_head_fits)");
}

}  // namespace

bool linear_head_fits(const LinearHead& h) {
  if (h.layers < 2 || h.layers > kHeadMaxLayers || h.relu[h.layers - 1]) return false;
  for (int i = 0; i <= h.layers; ++i)
    if (h.width[i] < 1 || h.width[i] > kHeadMaxWidth) return false;
  const int classes = h.width[h.layers];
  return classes >= 2 && classes <= kHeadMaxClasses;
}

int linear_head_rows_per_block(const LinearHead& h, int n) {
  int rows = n >= 8192 ? 16 : n >= 2048 ? 8 : 4;
  while (rows > kRowsPerThread && std::max(forward_shared(h, rows), backward_shared(h, rows)) > kSharedLimit) rows /= 2;
  return rows;
}

size_t linear_head_loss_partials(int n) {
  // The most blocks any n' <= n launches: rows per block grow with n, so at most ceil(n / 4).
  return 2 * (static_cast<size_t>(std::max(n, 1)) + kRowsPerThread - 1) / kRowsPerThread;
}

void linear_head_forward(const LinearHead& h, const float* x, float* const* y, int n, cudaStream_t stream) {
  check_fits(h, "linear_head_forward");
  if (n <= 0) return;
  Args p{};
  p.h = h;
  p.x = x;
  for (int l = 0; l < h.layers; ++l) p.out[l] = y[l];
  p.n = n;
  p.rows = linear_head_rows_per_block(h, n);
  const unsigned blocks = static_cast<unsigned>((n + p.rows - 1) / p.rows);
  head_forward_kernel<<<blocks, kThreads, forward_shared(h, p.rows), stream>>>(p);
  CUDA_CHECK_LAUNCH();
}

void linear_head_backward(const LinearHead& h, const float* const* y, int n, const HeadLoss& loss, float* const* g,
                          float* dx, cudaStream_t stream) {
  check_fits(h, "linear_head_backward");
  if (n <= 0) return;
  Args p{};
  p.h = h;
  for (int l = 0; l < h.layers; ++l) p.y[l] = y[l], p.out[l] = g[l];
  p.dx = dx;
  p.loss = loss;
  p.n = n;
  p.rows = linear_head_rows_per_block(h, n);
  const unsigned blocks = static_cast<unsigned>((n + p.rows - 1) / p.rows);
  if (blocks > 1 && (loss.scratch.partials == nullptr || loss.scratch.arrivals == nullptr))
    throw CudaError("linear_head_backward: " + std::to_string(n) + " rows span " + std::to_string(blocks) +
                    " blocks and need the loss's scratch, none given");
  head_backward_kernel<<<blocks, kThreads, backward_shared(h, p.rows) - 2 * kWarps * sizeof(double), stream>>>(p);
  CUDA_CHECK_LAUNCH();
}

}  // namespace dptrain::kernels
