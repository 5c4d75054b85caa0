#include <string>

#include "core/cuda_check.h"
#include "kernels/classifier_kernels.h"
#include "kernels/softmax_row.cuh"

namespace dptrain::kernels {

namespace {

constexpr int kWarps = 8, kThreads = 32 * kWarps;

// Block per slice of kCols input columns, for the whole batch. Each block stages the logits, the
// labels and its columns of x and w in shared memory (one round of loads), computes every sample's
// dL/dlogits there (a thread per sample: cheap, and no second launch to share them), then its columns
// of dw (sums over samples) and dx (over classes). Block 0 also writes dlogits, db and the loss.
// Sums over samples run in four interleaved chains added in a fixed order.
constexpr int kCols = 8;

size_t shared_bytes(int n, int classes) {
  return sizeof(float) * (2 * static_cast<size_t>(n) * classes + static_cast<size_t>(n) * kCols +
                          static_cast<size_t>(classes) * kCols) +
         sizeof(int32_t) * static_cast<size_t>(n);
}

/// dst[t] = load(t) for t < count, a block's threads together: each thread issues up to kLoadsInFlight loads
/// before it stores them, so the staging waits one memory latency per kThreads x kLoadsInFlight values (a load
/// and its store in turn had waited one per kThreads values: ten of them for mnist_cnn's logits at batch 257).
constexpr int kLoadsInFlight = 8;
template <typename T, typename Load>
__device__ __forceinline__ void stage(T* dst, int count, Load load) {
  for (int t0 = threadIdx.x; t0 < count; t0 += kThreads * kLoadsInFlight) {
    T v[kLoadsInFlight];
#pragma unroll
    for (int u = 0; u < kLoadsInFlight; ++u) {
      const int t = t0 + u * kThreads;
      v[u] = t < count ? load(t) : T{};
    }
#pragma unroll
    for (int u = 0; u < kLoadsInFlight; ++u)
      if (t0 + u * kThreads < count) dst[t0 + u * kThreads] = v[u];
  }
}

/// sum over i < n of a[i * stride_a] * b[i * stride_b] (b null: of a alone), in four chains.
__device__ __forceinline__ float sum_over_samples(const float* a, int stride_a, const float* b, int stride_b, int n) {
  float acc[4] = {};
#pragma unroll 4
  for (int i = 0; i < n; ++i)
    acc[i % 4] = b == nullptr ? acc[i % 4] + a[i * stride_a] : fmaf(a[i * stride_a], b[i * stride_b], acc[i % 4]);
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

__global__ void __launch_bounds__(kThreads) linear_loss_backward_kernel(LinearLossBackward p) {
  extern __shared__ float shared[];
  const int n = p.n, classes = p.classes, inputs = p.inputs;
  float* dl = shared;                 // [n][classes]
  float* zs = dl + n * classes;       // the logits, [n][classes]
  float* xs = zs + n * classes;       // [n][kCols]
  float* ws = xs + n * kCols;         // [classes][kCols]
  int32_t* labels = reinterpret_cast<int32_t*>(ws + classes * kCols);
  const int c0 = blockIdx.x * kCols, cols = min(kCols, inputs - c0);
  const bool first = blockIdx.x == 0;

  stage(xs, n * kCols, [&](int t) {
    const int i = t / kCols, j = t % kCols;
    return j < cols ? __ldg(p.x + static_cast<long>(i) * inputs + c0 + j) : 0.0f;
  });
  stage(ws, classes * kCols, [&](int t) {
    const int c = t / kCols, j = t % kCols;
    return j < cols ? __ldg(p.w + static_cast<long>(c) * inputs + c0 + j) : 0.0f;
  });
  stage(zs, n * classes, [&](int t) { return __ldg(p.logits + t); });
  stage(labels, n, [&](int t) { return __ldg(p.labels + t); });
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
  if (first)
    for (int c = threadIdx.x; c < classes; c += kThreads) p.db[c] = sum_over_samples(dl + c, classes, nullptr, 0, n);
  for (int t = threadIdx.x; t < classes * kCols; t += kThreads) {
    const int c = t / kCols, j = t % kCols;
    if (j < cols) p.dw[static_cast<long>(c) * inputs + c0 + j] = sum_over_samples(dl + c, classes, xs + j, kCols, n);
  }
  if (p.dx == nullptr) return;
  for (int t = threadIdx.x; t < n * kCols; t += kThreads) {
    const int i = t / kCols, j = t % kCols;
    if (j >= cols) continue;
    float total = 0.0f;
    for (int c = 0; c < classes; ++c) total = fmaf(dl[i * classes + c], ws[c * kCols + j], total);
    p.dx[static_cast<long>(i) * inputs + c0 + j] = total;
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
