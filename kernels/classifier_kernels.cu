#include <string>

#include "core/cuda_check.h"
#include "kernels/classifier_kernels.h"
#include "kernels/softmax_row.cuh"

namespace dptrain::kernels {

namespace {

constexpr int kWarps = 16, kThreads = 32 * kWarps;

// Block per slice of kCols input columns, for the whole batch. Each block stages the logits, the
// labels and its columns of x and w in shared memory (one pass of loads), computes every sample's
// dL/dlogits there (a thread per sample: cheap, and no second launch to share them), then its columns
// of dw (sums over samples) and dx (over classes). Block 0 also writes dlogits, db and the loss.
// Each sum over samples is split into kThreads / (its block's sums) contiguous ranges of samples,
// each summed by its own thread in four interleaved chains; the ranges are then added in order. So
// the order depends on the shape alone. (With 256 threads, a thread per sum and 257 samples a sum,
// lenet5's fc3 took 13.4 us at batch 257 in the step's graph, H100: staging in four passes, two
// rounds of softmax for 257 samples, then 80 threads walking 257 samples each.)
constexpr int kCols = 8;

size_t shared_bytes(int n, int classes) {
  return sizeof(float) * (2 * static_cast<size_t>(n) * classes + static_cast<size_t>(n) * kCols +
                          static_cast<size_t>(classes) * kCols + kThreads) +
         sizeof(int32_t) * static_cast<size_t>(n);
}

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
  const int n = p.n, classes = p.classes, inputs = p.inputs;
  float* dl = shared;                 // [n][classes]
  float* xs = dl + n * classes;       // [n][kCols]
  float* ws = xs + n * kCols;         // [classes][kCols]
  float* zs = ws + classes * kCols;   // the logits, [n][classes]
  int32_t* labels = reinterpret_cast<int32_t*>(zs + n * classes);
  float* ranges = reinterpret_cast<float*>(labels + n);  // [kThreads]: the sums' ranges
  const int c0 = blockIdx.x * kCols, cols = min(kCols, inputs - c0);
  const bool first = blockIdx.x == 0;

  // xs, ws, zs and labels are contiguous: one pass over their concatenation.
  const int x_end = n * kCols, w_end = x_end + classes * kCols, z_end = w_end + n * classes, total = z_end + n;
  const auto load = [&](int t) -> float {
    if (t < x_end) {
      const int i = t / kCols, j = t % kCols;
      return j < cols ? __ldg(p.x + static_cast<long>(i) * inputs + c0 + j) : 0.0f;
    }
    if (t < w_end) {
      const int c = (t - x_end) / kCols, j = (t - x_end) % kCols;
      return j < cols ? __ldg(p.w + static_cast<long>(c) * inputs + c0 + j) : 0.0f;
    }
    if (t < z_end) return __ldg(p.logits + (t - w_end));
    return __int_as_float(__ldg(p.labels + (t - z_end)));
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
  for (int i = threadIdx.x; i < n; i += kThreads) {  // a thread per sample (classes <= kSerialClasses)
    const float* z = zs + i * classes;
    const SoftmaxRow row = softmax_row_thread(z, classes);
    const int label = labels[i];
    for (int c = 0; c < classes; ++c) {
      const float g = softmax_xent_grad(z, c, row, label, sm, p.grad_scale);
      dl[i * classes + c] = g;
      if (first) p.dlogits[static_cast<long>(i) * classes + c] = g;
    }
    loss += softmax_xent_loss(z[label], row, classes, sm);
    correct += row.best_index == label ? 1.0 : 0.0;
  }
  if (first) add_block_sums<kWarps>(loss, correct, p.sums);
  __syncthreads();  // dl complete
  // The block's sums over samples: dw (classes x kCols), then in block 0 db (classes); each in `splits`
  // ranges of `per` samples, range r taken by thread r * sums + sum.
  const int sums = classes * kCols + (first ? classes : 0), splits = max(1, min(kThreads / sums, n));
  const int per = (n + splits - 1) / splits;
  for (int t = threadIdx.x; t < sums * splits; t += kThreads) {
    const int r = t / sums, e = t - r * sums, begin = r * per, end = min(n, begin + per);
    ranges[t] = e < classes * kCols ? sum_over_samples(dl + e / kCols, classes, xs + e % kCols, kCols, begin, end)
                                    : sum_over_samples(dl + e - classes * kCols, classes, nullptr, 0, begin, end);
  }
  if (splits > 1) __syncthreads();
  for (int e = threadIdx.x; e < sums; e += kThreads) {
    float total_e = ranges[e];
    for (int r = 1; r < splits; ++r) total_e += ranges[r * sums + e];
    if (e >= classes * kCols)
      p.db[e - classes * kCols] = total_e;
    else if (e % kCols < cols)
      p.dw[static_cast<long>(e / kCols) * inputs + c0 + e % kCols] = total_e;
  }
  if (p.dx == nullptr) return;
  for (int t = threadIdx.x; t < n * kCols; t += kThreads) {
    const int i = t / kCols, j = t % kCols;
    if (j >= cols) continue;
    float total_x = 0.0f;
    for (int c = 0; c < classes; ++c) total_x = fmaf(dl[i * classes + c], ws[c * kCols + j], total_x);
    p.dx[static_cast<long>(i) * inputs + c0 + j] = total_x;
  }
}

}  // namespace

bool linear_loss_backward_fits(int n, int classes, int inputs) {
  // 48 KiB is the launch's limit for static and dynamic shared memory together (no opt-in):
  // add_block_sums' two static arrays of kWarps doubles count against it.
  return n > 0 && classes > 0 && classes <= kSerialClasses && inputs > 0 &&
         shared_bytes(n, classes) + 2 * kWarps * sizeof(double) <= 48 * 1024 &&
         static_cast<long>(n) * inputs <= (1L << 31) - 1 && static_cast<long>(classes) * inputs <= (1L << 31) - 1;
}

void linear_loss_backward(const LinearLossBackward& p, cudaStream_t stream) {
  if (!linear_loss_backward_fits(p.n, p.classes, p.inputs))
    throw CudaError("linear_loss_backward: a batch of " + std::to_string(p.n) + " x " + std::to_string(p.classes) +
                    " classes x " + std::to_string(p.inputs) + " inputs does not fit its shared memory");
  const unsigned blocks = static_cast<unsigned>((p.inputs + long{kCols} - 1) / kCols);
  linear_loss_backward_kernel<<<blocks, kThreads, shared_bytes(p.n, p.classes), stream>>>(p);
  CUDA_CHECK_LAUNCH();
}

}  // namespace dptrain::kernels
