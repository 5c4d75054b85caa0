// The GPU shape-sweep oracle: every implementation the CUDA backend's planners may choose, run on
// seeded random shapes (tests/sweep/shape_sweep.h) and compared with the CPU backend.
//
// What runs, per shape:
// - Convolutions (ShapeSweep.Conv, ShapeSweep.ConvLargeBatch,
//   ShapeSweep.ConvTensorCoreFilterManyBlocks): forward, input gradient and filter
//   and bias gradient by dptrain's direct kernels (where direct_conv_fits(c, k), as the planner
//   asks), the register-tiled kernels (tiled_conv_fits), the tensor-core kernels in 3xTF32 and in
//   TF32 (mma_conv_fits), the small kernels (small_conv_fits, where the direct ones are not asked),
//   and every cuDNN algorithm of every direction in CUDNN_FMA_MATH (float32)
//   and CUDNN_DEFAULT_MATH (tf32), whatever cuDNN's heuristics would say; also the planner's
//   fallback of cuDNN over sub-batches (the filter gradient accumulating with beta 1, every
//   algorithm), the bias and ReLU kernels around cuDNN (add_bias_channels, bias_grad_channels,
//   relu_backward), the forward without bias that an absorbed pooling uses, the direct filter
//   gradient masked by an absorbed ReLU, and the pooling after the convolution: maxpool kernels on
//   the ReLU'd output, the fused bias + ReLU + pooling + dropout kernels (conv_pool_forward,
//   conv_pool_backward) where conv_pool_fits, and a first layer's pooled direct kernels
//   (conv_direct_pool_forward bit for bit against the direct forward then maxpool_forward,
//   conv_direct_pool_filter_grad) where direct_pool_fits. A cuDNN algorithm whose workspace query or run
//   returns an error status, or that needs more than the planner's 256 MiB of workspace, is not
//   eligible (the planner would drop it too): counted and listed, not a failure. A direction that
//   no implementation serves is a failure (the layer would throw).
// - Linear layers (ShapeSweep.Linear): the skinny GEMMs in the three layouts LinearCuda uses
//   (forward x W^T with its bias/ReLU/dropout epilogue, split and unsplit; dx = dy W; dW = dy^T x)
//   at every row count their guard admits, and the cuBLAS fallback in float32 and TF32 with the
//   bias kernels (add_bias_rows, bias_grad_rows, with ReLU and dropout masks), 1 to 8192 rows; the
//   forward through cuBLASLt's bias and ReLU epilogue (BiasGemm) in both precisions, with 16-byte and
//   4-byte aligned weights.
// - The loss (ShapeSweep.Loss), 2 to 1000 classes: the softmax cross-entropy kernel (a thread per
//   row up to 32 classes, a warp per row beyond), the fused classifier backward
//   (linear_loss_backward, up to 32 classes) at each shape's batch or, beyond what its shared memory
//   holds, at the largest batch it admits, and the whole path through LinearCuda (which takes the
//   fused kernel where it fits and the loss kernel plus its own backward where not).
// - Max pooling (ShapeSweep.MaxPool): maxpool_forward/backward on tiling, overlapping, padded and
//   ragged windows, with ties and with an absorbed dropout, and conv_pool_forward/backward wherever
//   conv_pool_fits; planes up to the launch grid's limit.
// - Dropout, the data gather and the optimizers (ShapeSweep.Dropout, ShapeSweep.Gather,
//   ShapeSweep.Optimizers) at sizes on either side of every block and grid boundary of their
//   kernels (the capped grids of dropout_backward's multiply, gather_normalize and the optimizer
//   kernels included), bit for bit against the CPU backend.
//
// References: the CPU backend's layers (conv2d and linear in double precision, so that the GPU's
// float32 error is measured alone; pooling, dropout, the loss, the gather and the optimizers in
// float32, as training runs them). Tolerances are today's parity tests' (test_conv_tiled.cpp,
// test_skinny_gemm.cpp, test_cuda_backend.cpp), as relative norms ||got - want|| / ||want||:
// float32 sums and 3xTF32 1e-5; cuDNN's FFT and Winograd algorithms in float32 1e-4; TF32 2e-3;
// the loss's dL/dlogits 1e-6 (1e-5 fused); selections (pooling, dropout, masks, the gather, the
// optimizers) exactly. Where a tensor's sums cancel by chance below the size of their terms (a
// bias gradient of one channel; the loss gradient p - 1 where the label's p is near 1), the error
// is measured against the terms' size instead (the floors, as tests/unit/test_cpu_sweep.cpp does).
// Outputs are poisoned with NaN before every run, so an element an implementation never writes
// fails. Comparisons run on the device
// (kernels::compare_outputs): tensors of 10^8 floats never cross PCIe for a check.
//
// Each failure is one EXPECT naming the test, the seed, the shape (ConvShape::str() and friends,
// with its index in the seeded list, so `conv_shapes(seed, index + 1, limits).back()` reproduces
// it), the implementation and the direction; a sweep keeps going after a failure and prints at most
// 50 of them. At the end each test prints its worst error per implementation, the implementations
// that were not eligible and why, and one line: shapes, implementation runs, comparisons, failures,
// seconds.
//
// Modes. The default runs a fixed subset: 56 convolutions of at most 2e9 FLOP per pass and 2^26
// elements per tensor, 6 more at batches 1024-8192 with at most 16 channels, 3 fixed ones where the
// tensor-core filter gradient takes more than one wave of blocks (in every mode), 40 linear shapes, 32
// losses, 36 poolings, 31 dropouts, 6 gathers and 33 optimizer runs (one past the optimizer kernels'
// grid cap, 134M elements): estimated at 20-45 s on an H200 host with 16 cores (not yet measured;
// most of it the convolutions' 70-odd implementation runs each). DPTRAIN_SWEEP=long runs thousands
// of shapes (2000 convolutions of at most 5e8 FLOP and 2^24 elements, 30 large batches, 400 linear,
// 400 losses, 400 poolings, 300 dropouts, all optimizers past their grid cap, dropout's backward past
// its 2.7e8-element grid cap): a few minutes; it prints its progress every 250 convolutions. The
// counts can be set one by one: DPTRAIN_SWEEP_CONV, DPTRAIN_SWEEP_CONV_LARGE, DPTRAIN_SWEEP_LINEAR,
// DPTRAIN_SWEEP_LOSS, DPTRAIN_SWEEP_POOL, DPTRAIN_SWEEP_DROPOUT (numbers of shapes);
// DPTRAIN_SWEEP_SEED replaces the fixed seeds (each test adds its own offset). The CPU reference of
// the next convolution is computed on the host's other cores while the GPU checks the current one.
//
// Skipped without a GPU. `--gtest_filter=ShapeSweep.*` selects them all.
#include <gtest/gtest.h>

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <future>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "core/buffer.h"
#include "core/device_context.h"
#include "core/device_ops.h"
#include "core/cuda_check.h"
#include "core/cuda_context.h"
#include "layers/cuda/bias_gemm.h"
#include "layers/cuda/cudnn_descriptors.h"
#include "core/cuda_raii.h"
#include "data/dataset.h"
#include "io/config.h"
#include "kernels/classifier_kernels.h"
#include "kernels/compare_kernels.h"
#include "kernels/conv_kernels.h"
#include "kernels/conv_reference.h"
#include "kernels/conv_mma.h"
#include "kernels/conv_small.h"
#include "kernels/conv_tiled.h"
#include "kernels/layer_kernels.h"
#include "kernels/pool_kernels.h"
#include "kernels/skinny_gemm.h"
#include "layers/layer_factory.h"
#include "layers/softmax_cross_entropy.h"
#include "optim/optimizer.h"
#include "gpu_test_support.h"
#include "shape_sweep.h"
#include "train/batch_source.h"

namespace dptrain {
namespace {

// ---------------------------------------------------------------------------------------------
// Modes, tolerances, constants
// ---------------------------------------------------------------------------------------------

/// DPTRAIN_SWEEP=long: thousands of shapes.
bool long_mode() {
  static const bool on = [] {
    const char* v = std::getenv("DPTRAIN_SWEEP");
    return v != nullptr && std::string(v) == "long";
  }();
  return on;
}

/// The number of shapes of one list: the environment variable `env` if set, else the mode's count.
int sweep_count(const char* env, int normal, int in_long_mode) {
  if (const char* v = std::getenv(env); v != nullptr && *v != '\0') return std::max(0, std::atoi(v));
  return long_mode() ? in_long_mode : normal;
}

/// A test's seed: fixed, or DPTRAIN_SWEEP_SEED plus the test's offset.
uint64_t sweep_seed(uint64_t offset) {
  if (const char* v = std::getenv("DPTRAIN_SWEEP_SEED"); v != nullptr && *v != '\0')
    return std::strtoull(v, nullptr, 0) + offset;
  return 0x5eed6a7e00ull + offset;
}

constexpr double kFloat32Tol = 1e-5;    ///< float32 sums, 3xTF32 (test_conv_tiled, test_cuda_backend)
constexpr double kTransformTol = 1e-4;  ///< cuDNN's FFT and Winograd algorithms in float32
constexpr double kTf32Tol = 2e-3;       ///< TF32 products (test_conv_tiled, Tf32ConvAndLinearWithin2e3OfCpu)
constexpr double kLossGradTol = 1e-6;   ///< dL/dlogits of the loss kernel (LossMatchesCpu)
constexpr double kExact = 0.0;          ///< selections and element-wise rules: equal values
constexpr size_t kMaxWorkspace = size_t{256} << 20;  ///< the convolution planner's (conv2d_cuda.cpp)

/// The dropout the fused kernels apply (as a dropout layer at index kDropLayer of the model would),
/// and the step that keys its masks; written into the context's device StepState at each sweep's start.
constexpr double kDropP = 0.25;
constexpr int kDropLayer = 5;
constexpr StepInfo kDropStep{0x1234567ull, 3, 777};

constexpr int kMaxPrinted = 50;  ///< failures printed per test; the rest are counted
constexpr size_t kSlots = 1024;  ///< comparisons queued on the device before their results are read

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// ---------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------

uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/// n values in [-scale, -0.05 scale] or [0.05 scale, scale]: never zero, so a skipped term always
/// shows. Element i depends on (seed, i) alone, so the vector fills in parallel.
std::vector<float> randoms(size_t n, uint64_t seed, float scale = 1.0f) {
  std::vector<float> v(n);
  const uint64_t key = mix64(seed);
  const long count = static_cast<long>(n);
#pragma omp parallel for schedule(static)
  for (long i = 0; i < count; ++i) {
    const uint64_t r = mix64(key ^ (static_cast<uint64_t>(i) * 0xd1b54a32d192ed03ull));
    const float m = (0.05f + 0.95f * static_cast<float>(r >> 40) * (1.0f / 16777216.0f)) * scale;
    v[static_cast<size_t>(i)] = (r & 1) != 0 ? m : -m;
  }
  return v;
}

std::vector<double> widen(const std::vector<float>& v) { return {v.begin(), v.end()}; }

std::vector<float> narrow(const std::vector<double>& v) {
  std::vector<float> out(v.size());
  const long n = static_cast<long>(v.size());
#pragma omp parallel for schedule(static)
  for (long i = 0; i < n; ++i) out[static_cast<size_t>(i)] = static_cast<float>(v[static_cast<size_t>(i)]);
  return out;
}

double sum_squares(const std::vector<float>& v) {
  double s = 0;
  const long n = static_cast<long>(v.size());
#pragma omp parallel for schedule(static) reduction(+ : s)
  for (long i = 0; i < n; ++i) s += static_cast<double>(v[static_cast<size_t>(i)]) * v[static_cast<size_t>(i)];
  return s;
}

/// Sums of an NCHW tensor per channel, in double.
std::vector<double> channel_sums(const std::vector<float>& t, int n, int channels, size_t plane) {
  std::vector<double> s(static_cast<size_t>(channels), 0.0);
  for (int i = 0; i < n; ++i)
    for (int c = 0; c < channels; ++c) {
      const float* row = t.data() + (static_cast<size_t>(i) * channels + c) * plane;
      double acc = 0;
      for (size_t q = 0; q < plane; ++q) acc += row[q];
      s[static_cast<size_t>(c)] += acc;
    }
  return s;
}

/// Elements of got that differ in value from want (a NaN always differs; -0 equals +0).
size_t mismatches(const std::vector<float>& got, const std::vector<float>& want) {
  if (got.size() != want.size()) return std::max(got.size(), want.size());
  size_t bad = 0;
  const long n = static_cast<long>(got.size());
#pragma omp parallel for schedule(static) reduction(+ : bad)
  for (long i = 0; i < n; ++i) bad += !(got[static_cast<size_t>(i)] == want[static_cast<size_t>(i)]);
  return bad;
}

/// ||got - want|| / max(||want||, floor); +inf where got holds a NaN or Inf.
double rel_host(const std::vector<float>& got, const std::vector<float>& want, double floor = 0) {
  double num = 0, den = 0;
  bool finite = got.size() == want.size();
  const size_t n = std::min(got.size(), want.size());
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(got[i])) finite = false;
    const double d = static_cast<double>(got[i]) - want[i];
    num += d * d;
    den += static_cast<double>(want[i]) * want[i];
  }
  if (!finite) return std::numeric_limits<double>::infinity();
  den = std::max(std::sqrt(den), floor);
  return den == 0 ? (num == 0 ? 0.0 : std::numeric_limits<double>::infinity()) : std::sqrt(num) / den;
}

// ---------------------------------------------------------------------------------------------
// Device memory
// ---------------------------------------------------------------------------------------------

/// A device copy of h (at least one element, so that no kernel is handed a null pointer).
template <typename T>
Buffer<T> to_gpu(DeviceContext& ctx, const std::vector<T>& h) {
  Buffer<T> b(Device::Cuda, std::max<size_t>(h.size(), 1));
  if (!h.empty()) upload(ctx, std::span<T>(b.data(), h.size()), std::span<const T>(h));
  return b;
}

template <typename T>
std::vector<T> to_cpu(DeviceContext& ctx, const T* p, size_t n) {
  std::vector<T> h(n);
  if (n > 0) download(ctx, std::span<const T>(p, n), std::span<T>(h));
  return h;
}

/// A device buffer of n floats (at least one).
Buffer<float> floats(size_t n) { return Buffer<float>(Device::Cuda, std::max<size_t>(n, 1)); }

// ---------------------------------------------------------------------------------------------
// The sweep's bookkeeping: comparisons queued on the device, tallies, capped failure messages
// ---------------------------------------------------------------------------------------------

/// One test's sweep: a CUDA context, comparisons queued on its stream and read back in batches,
/// and the tallies its summary prints.
class Sweep {
 public:
  Sweep(std::string name, uint64_t seed)
      : name_(std::move(name)), seed_(seed), start_(Clock::now()),
        ctx_(std::make_unique<CudaContext>(CudaOptions{})),
        slots_(Device::Cuda, kSlots * sizeof(kernels::Difference)) {
    CUDA_CHECK(cudaMemsetAsync(slots_.data(), 0, slots_.size(), stream()));
    ctx_.set_step(StepState{kDropStep, {}});  // what the fused dropouts read
  }
  Sweep(const Sweep&) = delete;
  Sweep& operator=(const Sweep&) = delete;

  DeviceContext& ctx() { return ctx_; }
  cudaStream_t stream() const { return ctx_.cuda().stream(); }
  const StepState* step() const { return ctx_.step(); }

  /// Every byte 0xFF: float NaN, so an element a run does not write fails its comparison.
  void poison(void* p, size_t bytes) { CUDA_CHECK(cudaMemsetAsync(p, 0xFF, bytes, stream())); }
  void poison(float* p, size_t n) { poison(static_cast<void*>(p), n * sizeof(float)); }

  /// Queues the check ||out - ref|| / max(||ref||, floor) <= tol over n floats (tol 0: equal values),
  /// after whatever is queued on the stream; flush() reads the results.
  void expect_close(const float* out, const float* ref, size_t n, const std::string& where, const std::string& impl,
                    double tol, double floor = 0) {
    if (pending_.size() == kSlots) flush();
    auto* slot = reinterpret_cast<kernels::Difference*>(slots_.data()) + pending_.size();
    kernels::compare_outputs(out, ref, n, slot, stream());
    pending_.push_back({where, impl, tol, floor});
  }

  /// Reads the queued comparisons' results and checks them.
  void flush() {
    if (pending_.empty()) return;
    std::vector<kernels::Difference> host(pending_.size());
    CUDA_CHECK(cudaMemcpyAsync(host.data(), slots_.data(), host.size() * sizeof(kernels::Difference),
                               cudaMemcpyDeviceToHost, stream()));
    CUDA_CHECK(cudaStreamSynchronize(stream()));
    std::vector<Pending> done;
    done.swap(pending_);
    CUDA_CHECK(cudaMemsetAsync(slots_.data(), 0, slots_.size(), stream()));
    for (size_t i = 0; i < done.size(); ++i) check(done[i].where, done[i].impl, relative(host[i], done[i].floor), done[i].tol);
  }

  /// Forgets queued comparisons (after an exception left them half-run).
  void discard() {
    pending_.clear();
    if (cudaStreamSynchronize(stream()) == cudaSuccess)
      (void)cudaMemsetAsync(slots_.data(), 0, slots_.size(), stream());
  }

  /// Whether the CUDA context still works after an error (an illegal address ends it: the test stops).
  bool healthy() {
    const cudaError_t e = cudaDeviceSynchronize();
    if (e == cudaSuccess) {
      (void)cudaGetLastError();  // a launch-configuration error is not sticky
      return true;
    }
    fail("the CUDA context", std::string("is unusable after an error (") + cudaGetErrorString(e) + "); the sweep stops");
    return false;
  }

  /// One checked value: err within tol (NaN and +inf fail).
  void check(const std::string& where, const std::string& impl, double err, double tol) {
    if (std::isnan(err)) err = std::numeric_limits<double>::infinity();
    record(impl, err, tol);
    if (err <= tol) return;
    char line[160];
    if (std::isinf(err))
      std::snprintf(line, sizeof line, "unwritten (NaN) or non-finite outputs");
    else if (tol == 0)
      std::snprintf(line, sizeof line, "differs from the CPU backend (relative error %.3g; must be equal)", err);
    else
      std::snprintf(line, sizeof line, "relative error %.3g > tolerance %.0e", err, tol);
    fail(where, impl + ": " + line);
  }

  /// A count that must match (correct predictions), within `slack`.
  void check_equal(const std::string& where, const std::string& impl, double got, double want, double slack = 0) {
    const bool ok = std::abs(got - want) <= slack;
    record(impl, ok ? 0.0 : std::abs(got - want), slack);
    if (!ok) fail(where, impl + ": " + std::to_string(static_cast<long long>(got)) + ", the CPU backend " +
                             std::to_string(static_cast<long long>(want)) +
                             (slack > 0 ? " (allowed: " + std::to_string(static_cast<long long>(slack)) + ")" : ""));
  }

  /// Elements compared for equality on the host: `bad` of `total` differ.
  void check_count(const std::string& where, const std::string& impl, size_t bad, size_t total) {
    record(impl, static_cast<double>(bad), 0);
    if (bad > 0)
      fail(where, impl + ": " + std::to_string(bad) + " of " + std::to_string(total) +
                      " elements differ from the CPU backend (must be equal)");
  }

  void fail(const std::string& where, const std::string& what) {
    ++failures_;
    if (printed_ >= kMaxPrinted) return;
    ++printed_;
    ADD_FAILURE() << "[sweep " << name_ << ", seed " << seed_ << "] " << where << "\n    " << what;
  }

  void ran(long n = 1) { runs_ += n; }
  void not_eligible(const std::string& what) { ++ineligible_[what]; }
  void shape_done() { ++shapes_; }
  long failures() const { return failures_; }
  double seconds() const { return seconds_since(start_); }
  const std::string& name() const { return name_; }

  /// Prints the worst error of each implementation, what was not eligible, and the summary line.
  void finish() {
    try {
      flush();
    } catch (const std::exception& e) {
      fail("the last comparisons", std::string("could not be read: ") + e.what());
    }
    std::printf("sweep %s: worst relative error per implementation (tolerance; checks; failures)\n", name_.c_str());
    for (const auto& [impl, w] : worst_)
      std::printf("  %-66s %9.3g  (%.0e; %ld; %ld)\n", impl.c_str(), w.worst, w.tol, w.checks, w.failures);
    if (!ineligible_.empty()) {
      std::printf("sweep %s: not eligible (not run, or refused; the planner would skip them too)\n", name_.c_str());
      for (const auto& [what, count] : ineligible_) std::printf("  %-90s x%ld\n", what.c_str(), count);
    }
    std::printf("sweep %s: %ld shapes, %ld implementation runs, %ld comparisons, %ld failures, %.1f s (seed %llu, %s mode)\n",
                name_.c_str(), shapes_, runs_, comparisons_, failures_, seconds(),
                static_cast<unsigned long long>(seed_), long_mode() ? "long" : "default");
    std::fflush(stdout);
    if (failures_ > printed_)
      ADD_FAILURE() << "[sweep " << name_ << "] " << failures_ - printed_ << " more failures not printed (of "
                    << failures_ << ")";
  }

 private:
  struct Pending {
    std::string where, impl;
    double tol, floor;
  };
  struct Worst {
    long checks = 0, failures = 0;
    double worst = 0, tol = 0;
  };

  static double relative(const kernels::Difference& d, double floor) {
    constexpr double kInf = std::numeric_limits<double>::infinity();
    if (d.non_finite > 0 || !std::isfinite(d.squared_error)) return kInf;
    const double num = std::sqrt(d.squared_error), den = std::max(std::sqrt(d.squared_reference), floor);
    if (den == 0) return num == 0 ? 0.0 : kInf;
    return num / den;
  }

  /// Tallies one checked value (err against tol; the worst per implementation).
  void record(const std::string& impl, double err, double tol) {
    ++comparisons_;
    Worst& w = worst_[impl];
    ++w.checks;
    w.tol = tol;
    w.worst = std::max(w.worst, err);
    if (!(err <= tol)) ++w.failures;
  }

  std::string name_;
  uint64_t seed_;
  Clock::time_point start_;
  DeviceContext ctx_;
  Buffer<uint8_t> slots_;
  std::vector<Pending> pending_;
  std::map<std::string, Worst> worst_;
  std::map<std::string, long> ineligible_;
  long shapes_ = 0, runs_ = 0, comparisons_ = 0, failures_ = 0, printed_ = 0;
};

/// One output of a run and what it is checked against.
struct Out {
  float* out;
  const float* ref;
  size_t n;
  double tol;
  double floor = 0;
};

/// Runs one of dptrain's kernels whose guard admitted the shape on poisoned outputs and queues
/// their checks. A call that throws although its guard admitted the shape is a failure (or, with
/// refusal_ok, not eligible: the planner drops a refused candidate and takes another).
template <typename Op>
bool run_own(Sweep& sw, const std::string& where, const std::string& impl, std::initializer_list<Out> outs, Op&& op,
             bool refusal_ok = false) {
  for (const Out& o : outs) sw.poison(o.out, o.n);
  try {
    op();
  } catch (const CudaError& e) {
    if (refusal_ok) {
      sw.not_eligible(impl + ": refused by its call's own check");
      return false;
    }
    sw.fail(where, impl + ": the call threw (its guard admitted the shape): " + e.what());
    return false;
  }
  sw.ran();
  for (const Out& o : outs) sw.expect_close(o.out, o.ref, o.n, where, impl, o.tol, o.floor);
  return true;
}

/// Runs one cuDNN or cuBLAS call (op returns its status) on poisoned outputs, then `after` (the
/// planner's bias kernel), and queues the checks. An error status: not eligible.
template <typename Op, typename After>
bool run_library(Sweep& sw, const std::string& where, const std::string& impl, std::initializer_list<Out> outs, Op&& op,
                 After&& after) {
  for (const Out& o : outs) sw.poison(o.out, o.n);
  const cudnnStatus_t status = op();
  if (status != CUDNN_STATUS_SUCCESS) {
    sw.not_eligible(impl + ": " + cudnnGetErrorString(status));
    return false;
  }
  after();
  sw.ran();
  for (const Out& o : outs) sw.expect_close(o.out, o.ref, o.n, where, impl, o.tol, o.floor);
  return true;
}

/// Runs f for one shape; an exception is a failure of that shape. False when the CUDA context is
/// broken (the sweep must stop).
template <typename F>
bool guarded(Sweep& sw, const std::string& where, F&& f) {
  try {
    f();
    sw.flush();
    return true;
  } catch (const std::exception& e) {
    sw.fail(where, std::string("threw: ") + e.what());
    sw.discard();
    return sw.healthy();
  }
}

class ShapeSweep : public gpu_test::KernelTest {};

// ---------------------------------------------------------------------------------------------
// CPU references shared by several sweeps
// ---------------------------------------------------------------------------------------------

LayerConfig layer_config(const std::string& type) {
  LayerConfig c;
  c.type = type;
  c.name = type;
  return c;
}

LayerConfig pool_config(int k, int stride, int pad) {
  LayerConfig c = layer_config("maxpool2d");
  c.kernel = k;
  c.stride = stride;
  c.padding = pad;
  return c;
}

LayerConfig dropout_config(double p) {
  LayerConfig c = layer_config("dropout");
  c.p = p;
  return c;
}

/// The dropout the fused kernels apply, with the CPU dropout layer's p and scale exactly.
kernels::FusedDropout fused_dropout(const StepState* step, long per_sample) {
  return {step, static_cast<float>(kDropP), static_cast<float>(1.0 / (1.0 - kDropP)), static_cast<uint32_t>(kDropLayer),
          per_sample};
}

template <typename T>
TensorView<const T> cview(const std::vector<T>& v, int n, Dims d) {
  return {v.data(), n, d};
}
template <typename T>
TensorView<T> mview(std::vector<T>& v, int n, Dims d) {
  return {v.data(), n, d};
}

/// The CPU max pooling layer's forward and backward (float, as training runs it), with the CPU
/// dropout layer after it when `dropout`: y = its output, dx = the gradient of its input for dy.
struct PoolRun {
  std::vector<float> y, dx;
};
PoolRun cpu_pool(const std::vector<float>& x, const std::vector<float>& dy, int n, Dims in, int k, int stride, int pad,
                 bool dropout) {
  DeviceContext cpu;
  auto pool = make_layer<float>(pool_config(k, stride, pad), 2, in, Device::Cpu);
  pool->reserve(cpu, n);
  const Dims pd = pool->output_dims();
  PoolRun r;
  std::vector<float> pooled(static_cast<size_t>(n) * pd.count()), dpooled = dy;
  pool->forward(cpu, cview(x, n, in), mview(pooled, n, pd), Phase::Train, kDropStep);
  if (dropout) {
    auto drop = make_layer<float>(dropout_config(kDropP), kDropLayer, pd, Device::Cpu);
    drop->reserve(cpu, n);
    r.y.resize(pooled.size());
    drop->forward(cpu, cview(pooled, n, pd), mview(r.y, n, pd), Phase::Train, kDropStep);
    drop->backward(cpu, cview(pooled, n, pd), cview(r.y, n, pd), cview(dy, n, pd), mview(dpooled, n, pd));
  } else {
    r.y = pooled;
  }
  r.dx.resize(x.size());
  pool->backward(cpu, cview(x, n, in), cview(pooled, n, pd), cview(dpooled, n, pd), mview(r.dx, n, in));
  return r;
}

/// What conv_pool_forward and conv_pool_backward must give, from the CPU's layers in sequence:
/// the bias (float adds, as the kernel), a ReLU, max pooling with windows of k that tile the
/// plane, a dropout; backward the gradient of the convolution's output (masked by the ReLU) and
/// its per-channel sums (the bias gradient).
struct FusedPoolRef {
  bool relu = false, dropout = false;
  std::vector<float> y, dx, db;
  double floor_db = 0;
};
FusedPoolRef fused_pool_ref(const std::vector<float>& pre, const std::vector<float>& bias, int n, int channels, int h,
                            int w, int k, bool relu, bool dropout, const std::vector<float>& dy_pooled) {
  FusedPoolRef f;
  f.relu = relu;
  f.dropout = dropout;
  const size_t plane = static_cast<size_t>(h) * w;
  std::vector<float> z(pre.size());
  for (size_t i = 0; i < z.size(); ++i) {
    const float v = pre[i] + bias[(i / plane) % static_cast<size_t>(channels)];
    z[i] = relu ? (v > 0.0f ? v : 0.0f) : v;
  }
  PoolRun p = cpu_pool(z, dy_pooled, n, Dims{channels, h, w}, k, k, 0, dropout);
  f.y = std::move(p.y);
  f.dx = std::move(p.dx);
  if (relu)
    for (size_t i = 0; i < z.size(); ++i)
      if (!(z[i] > 0.0f)) f.dx[i] = 0.0f;
  f.db = narrow(channel_sums(f.dx, n, channels, plane));
  f.floor_db = std::sqrt(sum_squares(f.dx));
  return f;
}

// ---------------------------------------------------------------------------------------------
// Convolutions: the CPU reference (double precision), built on a worker thread
// ---------------------------------------------------------------------------------------------

kernels::ConvGeometry geometry(const sweep::ConvShape& s) {
  return {s.n, s.c, s.h, s.w, s.oc, s.oh(), s.ow(), s.k, s.stride, s.pad};
}

kernels::PoolGeometry pool_geometry(const sweep::ConvShape& s) {
  return {s.n * s.oc, s.oh(), s.ow(), s.pool_oh(), s.pool_ow(), s.pool_k, s.pool_stride, s.pool_pad};
}

std::string conv_where(const sweep::ConvShape& s, int index) {
  return "conv #" + std::to_string(index) + " (" + sweep::to_string(sweep::conv_family(index)) + ") " + s.str();
}

/// Input index along one side of output position o and tap t, or -1 in the padding.
int tap_at(int o, int t, int stride, int pad, int extent) {
  const int i = o * stride - pad + t;
  return i >= 0 && i < extent ? i : -1;
}

/// The sum of the squares of the terms of every output of the three passes (forward w x, input
/// gradient w dy, filter gradient dy x): the size their sums have when nothing cancels, the floor
/// of the relative errors where a sum cancels by chance.
struct ConvTerms {
  double y = 0, dx = 0, dw = 0;
};
ConvTerms conv_terms(const sweep::ConvShape& s, const std::vector<float>& x, const std::vector<float>& w,
                     const std::vector<float>& dy) {
  const int n = s.n, c = s.c, h = s.h, wd = s.w, oc = s.oc, k = s.k, oh = s.oh(), ow = s.ow();
  const size_t plane = static_cast<size_t>(h) * wd, P = static_cast<size_t>(oh) * ow;
  // x^2 summed over samples [c][plane] and over channels [n][plane]; dy^2 likewise [oc][P], [n][P].
  std::vector<double> x2s(static_cast<size_t>(c) * plane, 0.0), x2c(static_cast<size_t>(n) * plane, 0.0);
  std::vector<double> d2s(static_cast<size_t>(oc) * P, 0.0), d2c(static_cast<size_t>(n) * P, 0.0);
#pragma omp parallel for schedule(static)
  for (long e = 0; e < static_cast<long>(x2s.size()); ++e) {
    double acc = 0;
    for (int i = 0; i < n; ++i) {
      const double v = x[static_cast<size_t>(i) * c * plane + static_cast<size_t>(e)];
      acc += v * v;
    }
    x2s[static_cast<size_t>(e)] = acc;
  }
#pragma omp parallel for schedule(static)
  for (int i = 0; i < n; ++i)
    for (int ci = 0; ci < c; ++ci)
      for (size_t q = 0; q < plane; ++q) {
        const double v = x[(static_cast<size_t>(i) * c + ci) * plane + q];
        x2c[static_cast<size_t>(i) * plane + q] += v * v;
      }
#pragma omp parallel for schedule(static)
  for (long e = 0; e < static_cast<long>(d2s.size()); ++e) {
    double acc = 0;
    for (int i = 0; i < n; ++i) {
      const double v = dy[static_cast<size_t>(i) * oc * P + static_cast<size_t>(e)];
      acc += v * v;
    }
    d2s[static_cast<size_t>(e)] = acc;
  }
#pragma omp parallel for schedule(static)
  for (int i = 0; i < n; ++i)
    for (int o = 0; o < oc; ++o)
      for (size_t q = 0; q < P; ++q) {
        const double v = dy[(static_cast<size_t>(i) * oc + o) * P + q];
        d2c[static_cast<size_t>(i) * P + q] += v * v;
      }
  const size_t kk = static_cast<size_t>(k) * k;
  std::vector<double> w2o(static_cast<size_t>(c) * kk, 0.0), w2c(static_cast<size_t>(oc) * kk, 0.0);
  for (int o = 0; o < oc; ++o)
    for (int ci = 0; ci < c; ++ci)
      for (size_t t = 0; t < kk; ++t) {
        const double v = w[(static_cast<size_t>(o) * c + ci) * kk + t];
        w2o[static_cast<size_t>(ci) * kk + t] += v * v;
        w2c[static_cast<size_t>(o) * kk + t] += v * v;
      }
  ConvTerms t;
  double ty = 0, tdx = 0, tdw = 0;
  // forward: sum over (ci, ky, kx) of w2o times x2s summed over the outputs that read it.
#pragma omp parallel for schedule(static) reduction(+ : ty)
  for (int ci = 0; ci < c; ++ci)
    for (int ky = 0; ky < k; ++ky)
      for (int kx = 0; kx < k; ++kx) {
        double acc = 0;
        for (int oy = 0; oy < oh; ++oy) {
          const int iy = tap_at(oy, ky, s.stride, s.pad, h);
          if (iy < 0) continue;
          for (int ox = 0; ox < ow; ++ox) {
            const int ix = tap_at(ox, kx, s.stride, s.pad, wd);
            if (ix >= 0) acc += x2s[static_cast<size_t>(ci) * plane + static_cast<size_t>(iy) * wd + ix];
          }
        }
        ty += w2o[static_cast<size_t>(ci) * kk + static_cast<size_t>(ky) * k + kx] * acc;
      }
  // input gradient: sum over (o, ky, kx) of w2c times d2s summed over the outputs whose tap lands inside.
#pragma omp parallel for schedule(static) reduction(+ : tdx)
  for (int o = 0; o < oc; ++o)
    for (int ky = 0; ky < k; ++ky)
      for (int kx = 0; kx < k; ++kx) {
        double acc = 0;
        for (int oy = 0; oy < oh; ++oy) {
          if (tap_at(oy, ky, s.stride, s.pad, h) < 0) continue;
          for (int ox = 0; ox < ow; ++ox)
            if (tap_at(ox, kx, s.stride, s.pad, wd) >= 0) acc += d2s[static_cast<size_t>(o) * P + static_cast<size_t>(oy) * ow + ox];
        }
        tdx += w2c[static_cast<size_t>(o) * kk + static_cast<size_t>(ky) * k + kx] * acc;
      }
  // filter gradient: per sample, sum over taps and outputs of d2c times x2c at the tap's input.
#pragma omp parallel for schedule(static) reduction(+ : tdw)
  for (int i = 0; i < n; ++i)
    for (int oy = 0; oy < oh; ++oy)
      for (int ox = 0; ox < ow; ++ox) {
        const double d = d2c[static_cast<size_t>(i) * P + static_cast<size_t>(oy) * ow + ox];
        double acc = 0;
        for (int ky = 0; ky < k; ++ky) {
          const int iy = tap_at(oy, ky, s.stride, s.pad, h);
          if (iy < 0) continue;
          for (int kx = 0; kx < k; ++kx) {
            const int ix = tap_at(ox, kx, s.stride, s.pad, wd);
            if (ix >= 0) acc += x2c[static_cast<size_t>(i) * plane + static_cast<size_t>(iy) * wd + ix];
          }
        }
        tdw += d * acc;
      }
  t.y = ty;
  t.dx = tdx;
  t.dw = tdw;
  return t;
}

/// One convolution's inputs and the CPU backend's results, rounded to float.
struct ConvRef {
  sweep::ConvShape s;
  int index = 0;
  std::string where;
  std::vector<float> x, w, b, dy;
  std::vector<float> y, y_relu, dx, dw, db;
  std::vector<float> dy_masked, db_masked;  ///< dy where y_relu > 0 (an absorbed ReLU's backward), its channel sums
  std::vector<float> dw_masked;             ///< the filter gradient of dy_masked (direct shapes only)
  std::vector<float> y_nobias;              ///< y without the bias (when the fused pooling applies)
  double floor_y = 0, floor_dx = 0, floor_dw = 0, floor_db = 0, floor_dw_masked = 0, floor_db_masked = 0;
  bool fused_pool = false;                  ///< the pooling tiles the plane and conv_pool_fits
  std::vector<float> dy_pooled;             ///< gradient of the pooled output (shapes with a pooling)
  PoolRun pooled;                           ///< maxpool of y_relu (the pooling layer the planner keeps apart)
  std::vector<FusedPoolRef> fused;          ///< conv_pool_forward/backward's references
  /// The filter and bias gradients of pooled.dx masked by the ReLU (direct shapes with a pooling:
  /// conv_direct_pool_filter_grad's reference), and their floors.
  std::vector<float> dw_pooled, db_pooled;
  double floor_dw_pooled = 0, floor_db_pooled = 0;
  double seconds = 0;
};

LayerConfig conv_config(const sweep::ConvShape& s) {
  LayerConfig c = layer_config("conv2d");
  c.out_channels = s.oc;
  c.kernel = s.k;
  c.stride = s.stride;
  c.padding = s.pad;
  return c;
}

ConvRef make_conv_ref(sweep::ConvShape s, int index, uint64_t seed) {
  const Clock::time_point start = Clock::now();
  // A worker thread beside the one that drives the GPU (which spins while it waits): one core less,
  // so that no OpenMP thread of the reference waits for a core at a barrier.
  omp_set_num_threads(std::max(1, omp_get_num_procs() - 1));
  ConvRef r;
  r.s = s;
  r.index = index;
  r.where = conv_where(s, index);
  const uint64_t key = mix64(seed ^ (static_cast<uint64_t>(index) << 20));
  r.x = randoms(static_cast<size_t>(s.input_elems()), key + 1);
  r.w = randoms(static_cast<size_t>(s.weight_elems()), key + 2);
  r.b = randoms(static_cast<size_t>(s.oc), key + 3);
  r.dy = randoms(static_cast<size_t>(s.output_elems()), key + 4);
  const Dims in{s.c, s.h, s.w};
  const size_t P = static_cast<size_t>(s.oh()) * s.ow();

  DeviceContext cpu;
  auto layer = make_layer<double>(conv_config(s), 1, in, Device::Cpu);
  const Dims od = layer->output_dims();
  if (od.c != s.oc || od.h != s.oh() || od.w != s.ow())
    throw std::logic_error("the CPU layer's output " + to_string(od) + " is not the shape's");
  std::vector<double> wd = widen(r.w), bd = widen(r.b), gw(wd.size()), gb(bd.size());
  layer->bind({{wd, gw}, {bd, gb}});
  layer->reserve(cpu, s.n);
  {
    std::vector<double> xd = widen(r.x), yd(static_cast<size_t>(s.output_elems())), dyd = widen(r.dy), dxd(xd.size());
    layer->forward(cpu, cview(xd, s.n, in), mview(yd, s.n, od), Phase::Train, StepInfo{});
    layer->backward(cpu, cview(xd, s.n, in), cview(yd, s.n, od), cview(dyd, s.n, od), mview(dxd, s.n, in));
    r.y = narrow(yd);
    r.dx = narrow(dxd);
    r.dw = narrow(gw);
    r.db = narrow(gb);
    if (s.has_pool() && s.pool_tiles() && kernels::conv_pool_fits(pool_geometry(s))) {
      r.fused_pool = true;
      r.y_nobias.resize(yd.size());
      for (size_t i = 0; i < yd.size(); ++i) r.y_nobias[i] = static_cast<float>(yd[i] - bd[(i / P) % s.oc]);
    }
  }
  r.y_relu.resize(r.y.size());
  r.dy_masked.resize(r.y.size());
  for (size_t i = 0; i < r.y.size(); ++i) {
    r.y_relu[i] = r.y[i] > 0.0f ? r.y[i] : 0.0f;
    r.dy_masked[i] = r.y_relu[i] > 0.0f ? r.dy[i] : 0.0f;
  }
  r.db_masked = narrow(channel_sums(r.dy_masked, s.n, s.oc, P));
  const ConvTerms terms = conv_terms(s, r.x, r.w, r.dy);
  r.floor_y = std::sqrt(terms.y);
  r.floor_dx = std::sqrt(terms.dx);
  r.floor_dw = std::sqrt(terms.dw);
  r.floor_db = std::sqrt(sum_squares(r.dy));
  r.floor_db_masked = std::sqrt(sum_squares(r.dy_masked));
  if (kernels::direct_conv_fits(s.c, s.k)) {  // the first layer's filter gradient masks by the ReLU's output
    std::vector<double> xd = widen(r.x), yd = widen(r.y), dyd = widen(r.dy_masked);
    layer->backward(cpu, cview(xd, s.n, in), cview(yd, s.n, od), cview(dyd, s.n, od), TensorView<double>{nullptr, s.n, in});
    r.dw_masked = narrow(gw);
    r.floor_dw_masked = std::sqrt(conv_terms(s, r.x, r.w, r.dy_masked).dw);
  }
  if (s.has_pool()) {
    const int ph = s.pool_oh(), pw = s.pool_ow();
    r.dy_pooled = randoms(static_cast<size_t>(s.n) * s.oc * ph * pw, key + 5);
    r.pooled = cpu_pool(r.y_relu, r.dy_pooled, s.n, od, s.pool_k, s.pool_stride, s.pool_pad, false);
    if (kernels::direct_conv_fits(s.c, s.k)) {  // a first layer that absorbed the pooling and its ReLU
      std::vector<float> grad = r.pooled.dx;
      for (size_t i = 0; i < grad.size(); ++i)
        if (!(r.y_relu[i] > 0.0f)) grad[i] = 0.0f;
      std::vector<double> xd = widen(r.x), yd = widen(r.y), gd = widen(grad);
      layer->backward(cpu, cview(xd, s.n, in), cview(yd, s.n, od), cview(gd, s.n, od), TensorView<double>{nullptr, s.n, in});
      r.dw_pooled = narrow(gw);
      r.db_pooled = narrow(channel_sums(grad, s.n, s.oc, P));
      r.floor_dw_pooled = std::sqrt(conv_terms(s, r.x, r.w, grad).dw);
      r.floor_db_pooled = std::sqrt(sum_squares(grad));
    }
    if (r.fused_pool)  // (relu, dropout): as the model absorbs them, and apart
      for (const std::pair<bool, bool>& v : {std::pair{false, false}, std::pair{true, true}, std::pair{true, false}})
        r.fused.push_back(
            fused_pool_ref(r.y_nobias, r.b, s.n, s.oc, s.oh(), s.ow(), s.pool_k, v.first, v.second, r.dy_pooled));
  }
  r.seconds = seconds_since(start);
  return r;
}

// ---------------------------------------------------------------------------------------------
// Convolutions: every implementation on the GPU
// ---------------------------------------------------------------------------------------------

struct CudnnAlgo {
  int id;
  const char* name;
  bool transform;        ///< FFT or Winograd: rounds differently from a sum of products
  bool planned = true;   ///< the planner may choose it (not the non-fused Winograd: conv_planner.cpp, inexact)
};
constexpr CudnnAlgo kFwdAlgos[] = {{0, "IMPLICIT_GEMM", false}, {1, "IMPLICIT_PRECOMP_GEMM", false},
                                   {2, "GEMM", false},          {3, "DIRECT", false},
                                   {4, "FFT", true},            {5, "FFT_TILING", true},
                                   {6, "WINOGRAD", true},       {7, "WINOGRAD_NONFUSED", true, false}};
constexpr CudnnAlgo kDataAlgos[] = {{0, "ALGO_0", false},    {1, "ALGO_1", false},   {2, "FFT", true},
                                    {3, "FFT_TILING", true}, {4, "WINOGRAD", true}, {5, "WINOGRAD_NONFUSED", true, false}};
constexpr CudnnAlgo kFilterAlgos[] = {{0, "ALGO_0", false},   {1, "ALGO_1", false},
                                      {2, "FFT", true},       {3, "ALGO_3", false},
                                      {4, "WINOGRAD", true},  {5, "WINOGRAD_NONFUSED", true, false},
                                      {6, "FFT_TILING", true}};
// A cuDNN that adds an algorithm fails here: the sweep must learn to run it.
static_assert(std::size(kFwdAlgos) == static_cast<size_t>(CUDNN_CONVOLUTION_FWD_ALGO_COUNT));
static_assert(std::size(kDataAlgos) == static_cast<size_t>(CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT));
static_assert(std::size(kFilterAlgos) == static_cast<size_t>(CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT));

/// cuDNN's two maths as the planner sets them: float32 forbids TF32, precision tf32 allows it.
struct CudnnMath {
  cudnnMathType_t type;
  const char* name;
  bool tf32;
};
constexpr CudnnMath kMaths[] = {{CUDNN_FMA_MATH, "fma", false}, {CUDNN_DEFAULT_MATH, "tf32", true}};

double cudnn_tol(const CudnnAlgo& a, const CudnnMath& m) {
  return m.tf32 ? kTf32Tol : (a.transform ? kTransformTol : kFloat32Tol);
}

std::string cudnn_name(const char* direction, const CudnnAlgo& a, const CudnnMath& m, const char* extra = "") {
  return std::string(direction) + ": cuDNN " + std::to_string(a.id) + " " + a.name + " " + m.name + extra;
}

/// The workspace cuDNN asks for to run `a` (`query(&bytes)`: the direction's workspace-size call), or
/// nothing, with the reason recorded as not eligible: an algorithm the planner never offers, a query
/// cuDNN refuses (the algorithm does not support the shape), or more than the planner's cap.
template <typename Query>
std::optional<size_t> cudnn_workspace(Sweep& sw, const std::string& name, const CudnnAlgo& a, Query query) {
  if (!a.planned) {
    sw.not_eligible(name + ": never planned (inexact)");
    return std::nullopt;
  }
  size_t bytes = 0;
  if (const cudnnStatus_t q = query(&bytes); q != CUDNN_STATUS_SUCCESS) {
    sw.not_eligible(name + ": workspace query: " + cudnnGetErrorString(q));
    return std::nullopt;
  }
  if (bytes > kMaxWorkspace) {
    sw.not_eligible(name + ": workspace over 256 MiB");
    return std::nullopt;
  }
  return bytes;
}

CudnnFilterDesc make_filter_desc(int oc, int c, int k) {
  cudnnFilterDescriptor_t f = nullptr;
  CUDNN_CHECK(cudnnCreateFilterDescriptor(&f));
  CudnnFilterDesc owned(f);
  CUDNN_CHECK(cudnnSetFilter4dDescriptor(f, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, oc, c, k, k));
  return owned;
}

CudnnConvDesc make_conv_desc(const sweep::ConvShape& s, cudnnMathType_t math) {
  cudnnConvolutionDescriptor_t c = nullptr;
  CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&c));
  CudnnConvDesc owned(c);
  CUDNN_CHECK(cudnnSetConvolution2dDescriptor(c, s.pad, s.pad, s.stride, s.stride, 1, 1, CUDNN_CROSS_CORRELATION,
                                              CUDNN_DATA_FLOAT));
  CUDNN_CHECK(cudnnSetConvolutionMathType(c, math));
  return owned;
}

/// The chunk the planner's fallback would take: the largest proper divisor of n (n / its smallest
/// prime factor), 0 for n = 1.
int fallback_chunk(int n) {
  for (int parts = 2; parts <= n; ++parts)
    if (n % parts == 0) return n / parts;
  return 0;
}

void run_conv_on_gpu(Sweep& sw, const ConvRef& r, Buffer<uint8_t>& workspace) {
  const sweep::ConvShape& s = r.s;
  const kernels::ConvGeometry g = geometry(s);
  const std::string& where = r.where;
  DeviceContext& ctx = sw.ctx();
  const cudaStream_t st = sw.stream();
  const cudnnHandle_t h = ctx.cuda().cudnn();
  const int n = s.n, oc = s.oc, P = s.oh() * s.ow();
  const size_t xs = r.x.size(), ys = r.dy.size(), wn = r.w.size(), bn = r.b.size();

  Buffer<float> x = to_gpu(ctx, r.x), w = to_gpu(ctx, r.w), b = to_gpu(ctx, r.b), dy = to_gpu(ctx, r.dy);
  Buffer<float> ry = to_gpu(ctx, r.y), ry_relu = to_gpu(ctx, r.y_relu), rdx = to_gpu(ctx, r.dx), rdw = to_gpu(ctx, r.dw),
                rdb = to_gpu(ctx, r.db), rmasked = to_gpu(ctx, r.dy_masked), rdb_m = to_gpu(ctx, r.db_masked);
  Buffer<float> y = floats(ys), dx = floats(xs), dw = floats(wn), db = floats(bn), masked = floats(ys);
  Buffer<float> partials = floats(kernels::bias_grad_channels_scratch(n, oc));

  const bool direct = kernels::direct_conv_fits(s.c, s.k);  // as the planner asks (own_kernels)
  const bool tiled = kernels::tiled_conv_fits(g), mma = kernels::mma_conv_fits(g);
  const bool small = !direct && kernels::small_conv_fits(g);  // as own_kernels offers it
  // The planner's yardstick where its cost allows: checked like the rest, never counted as serving.
  const bool reference = kernels::reference_conv_fits(g);
  size_t scratch_bytes = 16;
  if (direct) scratch_bytes = std::max(scratch_bytes, kernels::conv_direct_filter_grad_scratch(g));
  if (tiled) scratch_bytes = std::max(scratch_bytes, kernels::tiled_conv_scratch(g));
  if (mma) scratch_bytes = std::max(scratch_bytes, kernels::mma_conv_scratch(g));
  if (small) scratch_bytes = std::max(scratch_bytes, kernels::small_conv_scratch(g));
  Buffer<uint8_t> scratch(Device::Cuda, scratch_bytes);
  void* sp = scratch.data();
  const kernels::MmaMath kMmaMaths[] = {kernels::MmaMath::SplitTf32, kernels::MmaMath::Tf32};
  const auto mma_name = [](kernels::MmaMath m) { return m == kernels::MmaMath::Tf32 ? "mma TF32" : "mma 3xTF32"; };
  const auto mma_tol = [](kernels::MmaMath m) { return m == kernels::MmaMath::Tf32 ? kTf32Tol : kFloat32Tol; };

  const CudnnTensorDesc xd = make_tensor_desc(n, s.c, s.h, s.w), yd = make_tensor_desc(n, oc, s.oh(), s.ow());
  const CudnnFilterDesc fd = make_filter_desc(oc, s.c, s.k);
  const CudnnConvDesc convs[] = {make_conv_desc(s, kMaths[0].type), make_conv_desc(s, kMaths[1].type)};
  {
    int on = 0, oc2 = 0, ohh = 0, oww = 0;
    CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(convs[0], xd, fd, &on, &oc2, &ohh, &oww));
    if (on != n || oc2 != oc || ohh != s.oh() || oww != s.ow())
      sw.fail(where, "cuDNN's output shape " + std::to_string(on) + "x" + std::to_string(oc2) + "x" + std::to_string(ohh) +
                         "x" + std::to_string(oww) + " is not the layer's");
  }
  const int chunk = fallback_chunk(n);
  const CudnnTensorDesc xcd = chunk > 0 ? make_tensor_desc(chunk, s.c, s.h, s.w) : CudnnTensorDesc{},
                        ycd = chunk > 0 ? make_tensor_desc(chunk, oc, s.oh(), s.ow()) : CudnnTensorDesc{};
  constexpr float kOne = 1.0f, kZero = 0.0f;
  void* ws = workspace.data();

  // How many implementations served each direction in each precision: none means the layer throws.
  int served[3][2] = {};
  const auto serve = [&](int direction, bool ok, bool float32, bool tf32) {
    if (!ok) return;
    if (float32) ++served[direction][0];
    if (tf32) ++served[direction][1];
  };

  // ---- forward: y = conv(x, w) + b ----
  if (direct) {
    serve(0, run_own(sw, where, "forward: direct", {{y.data(), ry.data(), ys, kFloat32Tol, r.floor_y}},
                     [&] { kernels::conv_direct_forward(x.data(), w.data(), b.data(), y.data(), false, g, st); }, true),
          true, true);
    run_own(sw, where, "forward: direct +relu", {{y.data(), ry_relu.data(), ys, kFloat32Tol, r.floor_y}},
            [&] { kernels::conv_direct_forward(x.data(), w.data(), b.data(), y.data(), true, g, st); }, true);
  }
  std::optional<Buffer<float>> rnobias;
  if (r.fused_pool) rnobias = to_gpu(ctx, r.y_nobias);
  if (tiled) {
    serve(0, run_own(sw, where, "forward: tiled", {{y.data(), ry.data(), ys, kFloat32Tol, r.floor_y}},
                     [&] { kernels::tiled_conv_forward(x.data(), w.data(), b.data(), y.data(), false, g, st); }),
          true, true);
    run_own(sw, where, "forward: tiled +relu", {{y.data(), ry_relu.data(), ys, kFloat32Tol, r.floor_y}},
            [&] { kernels::tiled_conv_forward(x.data(), w.data(), b.data(), y.data(), true, g, st); });
    if (rnobias)
      run_own(sw, where, "forward: tiled without bias (absorbed pooling)",
              {{y.data(), rnobias->data(), ys, kFloat32Tol, r.floor_y}},
              [&] { kernels::tiled_conv_forward(x.data(), w.data(), nullptr, y.data(), false, g, st); });
  }
  if (mma)
    for (const kernels::MmaMath m : kMmaMaths) {
      const std::string name = std::string("forward: ") + mma_name(m);
      serve(0, run_own(sw, where, name, {{y.data(), ry.data(), ys, mma_tol(m), r.floor_y}},
                       [&] { kernels::mma_conv_forward(x.data(), w.data(), b.data(), y.data(), false, sp, m, g, st); }),
            m == kernels::MmaMath::SplitTf32, m == kernels::MmaMath::Tf32);
      run_own(sw, where, name + " +relu", {{y.data(), ry_relu.data(), ys, mma_tol(m), r.floor_y}},
              [&] { kernels::mma_conv_forward(x.data(), w.data(), b.data(), y.data(), true, sp, m, g, st); });
      if (rnobias)
        run_own(sw, where, name + " without bias (absorbed pooling)",
                {{y.data(), rnobias->data(), ys, mma_tol(m), r.floor_y}},
                [&] { kernels::mma_conv_forward(x.data(), w.data(), nullptr, y.data(), false, sp, m, g, st); });
    }
  if (small) {
    serve(0, run_own(sw, where, "forward: small", {{y.data(), ry.data(), ys, kFloat32Tol, r.floor_y}},
                     [&] { kernels::small_conv_forward(x.data(), w.data(), b.data(), y.data(), false, g, st); }),
          true, true);
    run_own(sw, where, "forward: small +relu", {{y.data(), ry_relu.data(), ys, kFloat32Tol, r.floor_y}},
            [&] { kernels::small_conv_forward(x.data(), w.data(), b.data(), y.data(), true, g, st); });
    if (rnobias)
      run_own(sw, where, "forward: small without bias (absorbed pooling)",
              {{y.data(), rnobias->data(), ys, kFloat32Tol, r.floor_y}},
              [&] { kernels::small_conv_forward(x.data(), w.data(), nullptr, y.data(), false, g, st); });
  }
  if (reference) {
    run_own(sw, where, "forward: reference", {{y.data(), ry.data(), ys, kFloat32Tol, r.floor_y}},
            [&] { kernels::reference_conv_forward(x.data(), w.data(), b.data(), y.data(), false, g, st); });
    run_own(sw, where, "forward: reference +relu", {{y.data(), ry_relu.data(), ys, kFloat32Tol, r.floor_y}},
            [&] { kernels::reference_conv_forward(x.data(), w.data(), b.data(), y.data(), true, g, st); });
    if (rnobias)
      run_own(sw, where, "forward: reference without bias (absorbed pooling)",
              {{y.data(), rnobias->data(), ys, kFloat32Tol, r.floor_y}},
              [&] { kernels::reference_conv_forward(x.data(), w.data(), nullptr, y.data(), false, g, st); });
  }
  for (int mi = 0; mi < 2; ++mi) {
    const CudnnMath& m = kMaths[mi];
    for (const CudnnAlgo& a : kFwdAlgos) {
      const auto algo = static_cast<cudnnConvolutionFwdAlgo_t>(a.id);
      const std::string name = cudnn_name("forward", a, m);
      const std::optional<size_t> workspace = cudnn_workspace(sw, name, a, [&](size_t* b) {
        return cudnnGetConvolutionForwardWorkspaceSize(h, xd, fd, convs[mi], yd, algo, b);
      });
      if (!workspace) continue;
      const size_t bytes = *workspace;
      const bool ok = run_library(
          sw, where, name, {{y.data(), ry.data(), ys, cudnn_tol(a, m), r.floor_y}},
          [&] {
            return cudnnConvolutionForward(h, &kOne, xd, x.data(), fd, w.data(), convs[mi], algo, ws, bytes, &kZero, yd,
                                           y.data());
          },
          [&] { kernels::add_bias_channels(y.data(), b.data(), n, oc, P, false, st); });
      serve(0, ok, !m.tf32, m.tf32);
      if (ok && a.id == 0 && !m.tf32)  // the bias kernel's absorbed ReLU, once
        run_library(
            sw, where, name + " +add_bias_channels relu", {{y.data(), ry_relu.data(), ys, kFloat32Tol, r.floor_y}},
            [&] {
              return cudnnConvolutionForward(h, &kOne, xd, x.data(), fd, w.data(), convs[mi], algo, ws, bytes, &kZero,
                                             yd, y.data());
            },
            [&] { kernels::add_bias_channels(y.data(), b.data(), n, oc, P, true, st); });
    }
  }
  if (chunk > 0) {  // the planner's fallback: cuDNN over sub-batches
    const CudnnAlgo& a = kFwdAlgos[0];
    const std::string name = cudnn_name("forward", a, kMaths[0], " in chunks");
    size_t bytes = 0;
    const cudnnStatus_t q = cudnnGetConvolutionForwardWorkspaceSize(
        h, xcd, fd, convs[0], ycd, static_cast<cudnnConvolutionFwdAlgo_t>(a.id), &bytes);
    if (q != CUDNN_STATUS_SUCCESS || bytes > kMaxWorkspace)
      sw.not_eligible(name + ": workspace query");
    else
      run_library(
          sw, where, name, {{y.data(), ry.data(), ys, kFloat32Tol, r.floor_y}},
          [&] {
            for (int first = 0; first < n; first += chunk) {
              const cudnnStatus_t e = cudnnConvolutionForward(
                  h, &kOne, xcd, x.data() + first * (xs / n), fd, w.data(), convs[0],
                  static_cast<cudnnConvolutionFwdAlgo_t>(a.id), ws, bytes, &kZero, ycd, y.data() + first * (ys / n));
              if (e != CUDNN_STATUS_SUCCESS) return e;
            }
            return CUDNN_STATUS_SUCCESS;
          },
          [&] { kernels::add_bias_channels(y.data(), b.data(), n, oc, P, false, st); });
  }
  sw.flush();

  // ---- input gradient: dx = conv_transpose(dy, w) ----
  if (tiled)
    serve(1, run_own(sw, where, "input gradient: tiled", {{dx.data(), rdx.data(), xs, kFloat32Tol, r.floor_dx}},
                     [&] { kernels::tiled_conv_backward_data(dy.data(), w.data(), dx.data(), sp, g, st); }),
          true, true);
  if (mma)
    for (const kernels::MmaMath m : kMmaMaths)
      serve(1, run_own(sw, where, std::string("input gradient: ") + mma_name(m),
                       {{dx.data(), rdx.data(), xs, mma_tol(m), r.floor_dx}},
                       [&] { kernels::mma_conv_backward_data(dy.data(), w.data(), dx.data(), sp, m, g, st); }),
            m == kernels::MmaMath::SplitTf32, m == kernels::MmaMath::Tf32);
  if (small)
    serve(1, run_own(sw, where, "input gradient: small", {{dx.data(), rdx.data(), xs, kFloat32Tol, r.floor_dx}},
                     [&] { kernels::small_conv_backward_data(dy.data(), w.data(), dx.data(), g, st); }),
          true, true);
  if (reference)
    run_own(sw, where, "input gradient: reference", {{dx.data(), rdx.data(), xs, kFloat32Tol, r.floor_dx}},
            [&] { kernels::reference_conv_backward_data(dy.data(), w.data(), dx.data(), g, st); });
  for (int mi = 0; mi < 2; ++mi) {
    const CudnnMath& m = kMaths[mi];
    for (const CudnnAlgo& a : kDataAlgos) {
      const auto algo = static_cast<cudnnConvolutionBwdDataAlgo_t>(a.id);
      const std::string name = cudnn_name("input gradient", a, m);
      const std::optional<size_t> workspace = cudnn_workspace(sw, name, a, [&](size_t* b) {
        return cudnnGetConvolutionBackwardDataWorkspaceSize(h, fd, yd, convs[mi], xd, algo, b);
      });
      if (!workspace) continue;
      const size_t bytes = *workspace;
      serve(1,
            run_library(
                sw, where, name, {{dx.data(), rdx.data(), xs, cudnn_tol(a, m), r.floor_dx}},
                [&] {
                  return cudnnConvolutionBackwardData(h, &kOne, fd, w.data(), yd, dy.data(), convs[mi], algo, ws, bytes,
                                                      &kZero, xd, dx.data());
                },
                [] {}),
            !m.tf32, m.tf32);
    }
  }
  if (chunk > 0) {
    const CudnnAlgo& a = kDataAlgos[1];
    const auto algo = static_cast<cudnnConvolutionBwdDataAlgo_t>(a.id);
    const std::string name = cudnn_name("input gradient", a, kMaths[0], " in chunks");
    size_t bytes = 0;
    const cudnnStatus_t q = cudnnGetConvolutionBackwardDataWorkspaceSize(h, fd, ycd, convs[0], xcd, algo, &bytes);
    if (q != CUDNN_STATUS_SUCCESS || bytes > kMaxWorkspace)
      sw.not_eligible(name + ": workspace query");
    else
      run_library(
          sw, where, name, {{dx.data(), rdx.data(), xs, kFloat32Tol, r.floor_dx}},
          [&] {
            for (int first = 0; first < n; first += chunk) {
              const cudnnStatus_t e =
                  cudnnConvolutionBackwardData(h, &kOne, fd, w.data(), ycd, dy.data() + first * (ys / n), convs[0], algo,
                                               ws, bytes, &kZero, xcd, dx.data() + first * (xs / n));
              if (e != CUDNN_STATUS_SUCCESS) return e;
            }
            return CUDNN_STATUS_SUCCESS;
          },
          [] {});
  }
  sw.flush();

  // ---- filter and bias gradient: dw = sum of dy x, db = sum of dy ----
  if (direct) {
    serve(2,
          run_own(sw, where, "filter gradient: direct",
                  {{dw.data(), rdw.data(), wn, kFloat32Tol, r.floor_dw}, {db.data(), rdb.data(), bn, kFloat32Tol, r.floor_db}},
                  [&] { kernels::conv_direct_filter_grad(x.data(), dy.data(), nullptr, dw.data(), db.data(), sp, g, st); },
                  true),
          true, true);
    if (!r.dw_masked.empty()) {
      Buffer<float> rdw_m = to_gpu(ctx, r.dw_masked);
      run_own(sw, where, "filter gradient: direct masked by an absorbed ReLU",
              {{dw.data(), rdw_m.data(), wn, kFloat32Tol, r.floor_dw_masked},
               {db.data(), rdb_m.data(), bn, kFloat32Tol, r.floor_db_masked}},
              [&] {
                kernels::conv_direct_filter_grad(x.data(), dy.data(), ry_relu.data(), dw.data(), db.data(), sp, g, st);
              },
              true);
      sw.flush();  // rdw_m is freed at the end of this block
    }
  }
  if (tiled)
    serve(2,
          run_own(sw, where, "filter gradient: tiled",
                  {{dw.data(), rdw.data(), wn, kFloat32Tol, r.floor_dw}, {db.data(), rdb.data(), bn, kFloat32Tol, r.floor_db}},
                  [&] { kernels::tiled_conv_filter_grad(x.data(), dy.data(), dw.data(), db.data(), sp, g, st); }),
          true, true);
  if (mma)
    for (const kernels::MmaMath m : kMmaMaths)
      serve(2,
            run_own(sw, where, std::string("filter gradient: ") + mma_name(m),
                    {{dw.data(), rdw.data(), wn, mma_tol(m), r.floor_dw}, {db.data(), rdb.data(), bn, mma_tol(m), r.floor_db}},
                    [&] { kernels::mma_conv_filter_grad(x.data(), dy.data(), dw.data(), db.data(), sp, m, g, st); }),
            m == kernels::MmaMath::SplitTf32, m == kernels::MmaMath::Tf32);
  if (small)
    serve(2,
          run_own(sw, where, "filter gradient: small",
                  {{dw.data(), rdw.data(), wn, kFloat32Tol, r.floor_dw}, {db.data(), rdb.data(), bn, kFloat32Tol, r.floor_db}},
                  [&] { kernels::small_conv_filter_grad(x.data(), dy.data(), dw.data(), db.data(), sp, g, st); }),
          true, true);
  if (reference)
    run_own(sw, where, "filter gradient: reference",
            {{dw.data(), rdw.data(), wn, kFloat32Tol, r.floor_dw}, {db.data(), rdb.data(), bn, kFloat32Tol, r.floor_db}},
            [&] { kernels::reference_conv_filter_grad(x.data(), dy.data(), dw.data(), db.data(), g, st); });
  for (int mi = 0; mi < 2; ++mi) {
    const CudnnMath& m = kMaths[mi];
    for (const CudnnAlgo& a : kFilterAlgos) {
      const auto algo = static_cast<cudnnConvolutionBwdFilterAlgo_t>(a.id);
      const std::string name = cudnn_name("filter gradient", a, m);
      const std::optional<size_t> workspace = cudnn_workspace(sw, name, a, [&](size_t* b) {
        return cudnnGetConvolutionBackwardFilterWorkspaceSize(h, xd, yd, convs[mi], fd, algo, b);
      });
      if (!workspace) continue;
      const size_t bytes = *workspace;
      serve(2,
            run_library(
                sw, where, name, {{dw.data(), rdw.data(), wn, cudnn_tol(a, m), r.floor_dw}},
                [&] {
                  return cudnnConvolutionBackwardFilter(h, &kOne, xd, x.data(), yd, dy.data(), convs[mi], algo, ws, bytes,
                                                        &kZero, fd, dw.data());
                },
                [] {}),
            !m.tf32, m.tf32);
    }
  }
  if (chunk > 0)  // the fallback's filter gradient: each chunk after the first adds to dw (beta 1)
    for (const CudnnAlgo& a : kFilterAlgos) {
      const auto algo = static_cast<cudnnConvolutionBwdFilterAlgo_t>(a.id);
      const std::string name = cudnn_name("filter gradient", a, kMaths[0], " in chunks (beta 1)");
      const std::optional<size_t> workspace = cudnn_workspace(sw, name, a, [&](size_t* b) {
        return cudnnGetConvolutionBackwardFilterWorkspaceSize(h, xcd, ycd, convs[0], fd, algo, b);
      });
      if (!workspace) continue;
      const size_t bytes = *workspace;
      run_library(
          sw, where, name, {{dw.data(), rdw.data(), wn, cudnn_tol(a, kMaths[0]), r.floor_dw}},
          [&] {
            for (int first = 0; first < n; first += chunk) {
              const cudnnStatus_t e = cudnnConvolutionBackwardFilter(
                  h, &kOne, xcd, x.data() + first * (xs / n), ycd, dy.data() + first * (ys / n), convs[0], algo, ws,
                  bytes, first == 0 ? &kZero : &kOne, fd, dw.data());
              if (e != CUDNN_STATUS_SUCCESS) return e;
            }
            return CUDNN_STATUS_SUCCESS;
          },
          [] {});
    }
  // The bias gradient beside cuDNN's filter gradient, plain and masked by an absorbed ReLU; the
  // masked gradient itself, from that pass and from relu_backward (beside dptrain's filter kernels).
  run_own(sw, where, "bias gradient: bias_grad_channels", {{db.data(), rdb.data(), bn, kFloat32Tol, r.floor_db}},
          [&] { kernels::bias_grad_channels(dy.data(), nullptr, nullptr, db.data(), partials.data(), n, oc, P, st); });
  run_own(sw, where, "bias gradient: bias_grad_channels masked by a ReLU",
          {{db.data(), rdb_m.data(), bn, kFloat32Tol, r.floor_db_masked}, {masked.data(), rmasked.data(), ys, kExact}},
          [&] {
            kernels::bias_grad_channels(dy.data(), ry_relu.data(), masked.data(), db.data(), partials.data(), n, oc, P, st);
          });
  run_own(sw, where, "ReLU backward: relu_backward", {{masked.data(), rmasked.data(), ys, kExact}},
          [&] { kernels::relu_backward(dy.data(), ry_relu.data(), masked.data(), static_cast<long>(ys), st); });
  sw.flush();

  const char* kDirections[] = {"forward", "input gradient", "filter gradient"};
  for (int d = 0; d < 3; ++d)
    for (int p = 0; p < 2; ++p)
      if (served[d][p] == 0)
        sw.fail(where, std::string(kDirections[d]) + ": no implementation serves this convolution in " +
                           (p == 0 ? "float32" : "tf32") + " (the layer would throw)");

  // ---- the pooling after the convolution ----
  if (!s.has_pool()) return;
  const kernels::PoolGeometry pg = pool_geometry(s);
  const size_t pooled_n = r.dy_pooled.size();
  Buffer<float> dyp = to_gpu(ctx, r.dy_pooled), yp = floats(pooled_n), dxp = floats(ys);
  Buffer<int32_t> argmax(Device::Cuda, std::max<size_t>(pooled_n, 1));
  {
    Buffer<float> rp = to_gpu(ctx, r.pooled.y), rdp = to_gpu(ctx, r.pooled.dx);
    run_own(sw, where, "pooling: maxpool_forward", {{yp.data(), rp.data(), pooled_n, kExact}},
            [&] { kernels::maxpool_forward(ry_relu.data(), yp.data(), argmax.data(), pg, {}, st); });
    run_own(sw, where, "pooling: maxpool_backward", {{dxp.data(), rdp.data(), ys, kExact}},
            [&] { kernels::maxpool_backward(dyp.data(), argmax.data(), dxp.data(), pg, {}, st); });
    sw.flush();
  }
  if (direct && kernels::direct_pool_fits(g, pg)) {
    // A first layer's pooled kernels. The filter gradient from the pooled gradient at the argmaxes
    // of the CPU's outputs (yp and argmax, from maxpool_forward above), against the CPU's; the
    // forward against conv_direct_forward then maxpool_forward, bit for bit, argmaxes included.
    Buffer<float> rdw_p = to_gpu(ctx, r.dw_pooled), rdb_p = to_gpu(ctx, r.db_pooled), ref_y = floats(pooled_n);
    Buffer<uint8_t> pool_scratch(Device::Cuda, std::max<size_t>(kernels::conv_direct_pool_filter_grad_scratch(g), 16));
    Buffer<int32_t> ref_argmax(Device::Cuda, std::max<size_t>(pooled_n, 1));
    run_own(sw, where, "filter gradient: direct from the pooled gradient +relu",
            {{dw.data(), rdw_p.data(), wn, kFloat32Tol, r.floor_dw_pooled},
             {db.data(), rdb_p.data(), bn, kFloat32Tol, r.floor_db_pooled}},
            [&] {
              kernels::conv_direct_pool_filter_grad(x.data(), dyp.data(), yp.data(), argmax.data(), true, dw.data(),
                                                    db.data(), pool_scratch.data(), g, pg, st);
            });
    for (const bool relu : {false, true}) {
      kernels::conv_direct_forward(x.data(), w.data(), b.data(), y.data(), relu, g, st);
      kernels::maxpool_forward(y.data(), ref_y.data(), ref_argmax.data(), pg, {}, st);
      const std::string impl = std::string("forward: direct pooled") + (relu ? " +relu" : "");
      if (!run_own(sw, where, impl, {{yp.data(), ref_y.data(), pooled_n, kExact}}, [&] {
            kernels::conv_direct_pool_forward(x.data(), w.data(), b.data(), relu, yp.data(), argmax.data(), g, pg, st);
          }))
        continue;
      if (to_cpu(ctx, argmax.data(), pooled_n) != to_cpu(ctx, ref_argmax.data(), pooled_n))
        sw.fail(where, impl + ": its argmaxes differ from maxpool_forward's");
    }
    sw.flush();  // the references are freed at the end of this block
  }
  if (!r.fused_pool) return;
  Buffer<float> pool_partials = floats(kernels::conv_pool_backward_scratch(pg, oc));
  for (const FusedPoolRef& f : r.fused) {
    const kernels::FusedDropout drop =
        f.dropout ? fused_dropout(sw.step(), static_cast<long>(oc) * s.pool_oh() * s.pool_ow()) : kernels::FusedDropout{};
    const std::string variant = std::string(f.relu ? " +relu" : "") + (f.dropout ? " +dropout" : "");
    Buffer<float> rfy = to_gpu(ctx, f.y), rfdx = to_gpu(ctx, f.dx), rfdb = to_gpu(ctx, f.db);
    if (!run_own(sw, where, "fused bias+pool: conv_pool_forward" + variant, {{yp.data(), rfy.data(), pooled_n, kExact}},
                 [&] {
                   kernels::conv_pool_forward(rnobias->data(), b.data(), f.relu, yp.data(), argmax.data(), pg, oc, drop, st);
                 }))
      continue;
    run_own(sw, where, "fused bias+pool: conv_pool_backward" + variant,
            {{dxp.data(), rfdx.data(), ys, kExact}, {db.data(), rfdb.data(), bn, kFloat32Tol, f.floor_db}},
            [&] {
              kernels::conv_pool_backward(dyp.data(), yp.data(), argmax.data(), f.relu, dxp.data(), db.data(),
                                          pool_partials.data(), pg, oc, drop, st);
            });
    // Beside dptrain's filter kernels (which sum the bias gradient themselves) the pass takes no db.
    run_own(sw, where, "fused bias+pool: conv_pool_backward without db" + variant, {{dxp.data(), rfdx.data(), ys, kExact}},
            [&] {
              kernels::conv_pool_backward(dyp.data(), yp.data(), argmax.data(), f.relu, dxp.data(), nullptr,
                                          pool_partials.data(), pg, oc, drop, st);
            });
    sw.flush();  // the references are freed at the end of this iteration
  }
}

/// Checks every shape: the CPU reference of shape i + 1 is built on a worker thread while the GPU
/// checks shape i.
void conv_sweep(Sweep& sw, uint64_t seed, const std::vector<sweep::ConvShape>& shapes, const std::vector<int>& indices) {
  if (shapes.empty()) return;
  Buffer<uint8_t> workspace(Device::Cuda, kMaxWorkspace);
  const auto start = [&](size_t i) {
    return std::async(std::launch::async, make_conv_ref, shapes[i], indices[i], seed);
  };
  std::future<ConvRef> next = start(0);
  double cpu_seconds = 0, gpu_seconds = 0;
  for (size_t i = 0; i < shapes.size(); ++i) {
    const std::string where = conv_where(shapes[i], indices[i]);
    std::optional<ConvRef> r;
    try {
      r = next.get();
    } catch (const std::exception& e) {
      sw.fail(where, std::string("the CPU reference threw: ") + e.what());
    }
    if (i + 1 < shapes.size()) next = start(i + 1);
    if (!r) continue;
    const Clock::time_point t = Clock::now();
    if (!guarded(sw, where, [&] { run_conv_on_gpu(sw, *r, workspace); })) break;
    sw.shape_done();
    const double gpu = seconds_since(t);
    cpu_seconds += r->seconds;
    gpu_seconds += gpu;
    if (r->seconds + gpu > 5.0)
      std::printf("sweep %s: slow shape (CPU reference %.1f s, GPU %.1f s): %s\n", sw.name().c_str(), r->seconds, gpu,
                  where.c_str());
    if ((i + 1) % 250 == 0)
      std::printf("sweep %s: %zu of %zu shapes, %ld failures, %.0f s\n", sw.name().c_str(), i + 1, shapes.size(),
                  sw.failures(), sw.seconds());
  }
  std::printf("sweep %s: CPU references %.1f s (on a worker thread), GPU checks %.1f s\n", sw.name().c_str(),
              cpu_seconds, gpu_seconds);
}

TEST_F(ShapeSweep, Conv) {
  const uint64_t seed = sweep_seed(1);
  sweep::ConvLimits lim;  // batch 1-8192, channels 1-256, kernels 1-7, strides 1-3, padding 0-3, images 5-64
  lim.max_input = lim.max_output = long_mode() ? int64_t{1} << 24 : int64_t{1} << 26;
  lim.max_flops = long_mode() ? 500'000'000 : 2'000'000'000;
  const int count = sweep_count("DPTRAIN_SWEEP_CONV", 56, 2000);
  Sweep sw("conv", seed);
  if (count > 0) {
    const std::vector<sweep::ConvShape> shapes = sweep::conv_shapes(seed, count, lim);
    std::vector<int> indices(shapes.size());
    for (size_t i = 0; i < indices.size(); ++i) indices[i] = static_cast<int>(i);
    conv_sweep(sw, seed, shapes, indices);
  }
  sw.finish();
}

// The tensor-core filter gradient past one wave of blocks: 256 from 6,000 units of 96 positions, 512
// from 12,288 (kernels/conv_mma.cu), which no drawn shape reaches (the FLOP caps above keep them
// under about 1,100 units). Fixed shapes, as sweep shapes of the 3x3 family: mnist_cnn's conv2 at
// 1000 samples (6,000 units: 256 blocks), a 32-channel plane at 1100 samples (14,300: 512) and
// 64 -> 64 channels at 1200 (6,000: 256 blocks, two tiles of 128 chunks). 11 to 18 GMAC a pass each,
// so a few seconds of CPU reference each; every implementation that serves the shape is checked,
// as in the sweep.
TEST_F(ShapeSweep, ConvTensorCoreFilterManyBlocks) {
  const uint64_t seed = sweep_seed(10);
  const auto conv3x3 = [](int n, int c, int side, int oc, int pad) {
    sweep::ConvShape s;
    s.n = n, s.c = c, s.h = s.w = side, s.oc = oc, s.k = 3, s.pad = pad;
    return s;
  };
  const std::vector<sweep::ConvShape> shapes = {conv3x3(1000, 32, 26, 64, 0), conv3x3(1100, 32, 34, 32, 1),
                                                conv3x3(1200, 64, 20, 64, 1)};
  std::vector<int> indices;  // in the 3x3 family's place of the seeded list, far past the drawn shapes
  for (size_t i = 0; i < shapes.size(); ++i) {
    ASSERT_TRUE(kernels::mma_conv_fits(geometry(shapes[i]))) << shapes[i].str();
    indices.push_back(static_cast<int>(sweep::kConvFamilies * (100000 + i)) + static_cast<int>(sweep::ConvFamily::Fast3x3));
  }
  Sweep sw("conv-mma-filter-blocks", seed);
  conv_sweep(sw, seed, shapes, indices);
  sw.finish();
}

// The large-batch family alone: batches 1024-8192 of small samples with few channels (grids of
// samples, the batch-sized sums of the filter and bias gradients).
TEST_F(ShapeSweep, ConvLargeBatch) {
  const uint64_t seed = sweep_seed(2);
  sweep::ConvLimits lim;
  lim.max_channels = 16;
  lim.max_input = lim.max_output = int64_t{1} << 26;
  lim.max_flops = long_mode() ? 1'000'000'000 : 2'000'000'000;
  const int count = sweep_count("DPTRAIN_SWEEP_CONV_LARGE", 6, 30);
  Sweep sw("conv-large-batch", seed);
  if (count > 0) {
    const std::vector<sweep::ConvShape> all = sweep::conv_shapes(seed, count * sweep::kConvFamilies, lim);
    std::vector<sweep::ConvShape> shapes;
    std::vector<int> indices;
    for (int i = 0; i < static_cast<int>(all.size()); ++i)
      if (sweep::conv_family(i) == sweep::ConvFamily::LargeBatch) {
        shapes.push_back(all[static_cast<size_t>(i)]);
        indices.push_back(i);
      }
    conv_sweep(sw, seed, shapes, indices);
  }
  sw.finish();
}

// ---------------------------------------------------------------------------------------------
// Linear layers: the skinny GEMMs and the cuBLAS fallback
// ---------------------------------------------------------------------------------------------

/// A cuBLAS handle in TF32 math on `stream` (the context's handles follow train.precision; the
/// sweep runs both).
CublasHandle make_tf32_cublas(cudaStream_t stream) {
  cublasHandle_t handle = nullptr;
  CUBLAS_CHECK(cublasCreate(&handle));
  CublasHandle owned(handle);
  CUBLAS_CHECK(cublasSetStream(handle, stream));
  CUBLAS_CHECK(cublasSetMathMode(handle, CUBLAS_TF32_TENSOR_OP_MATH));
  return owned;
}

/// The CPU dropout layer's mask over n x features (the layer run on ones).
std::vector<float> dropout_mask(int n, Dims d) {
  DeviceContext cpu;
  auto drop = make_layer<float>(dropout_config(kDropP), kDropLayer, d, Device::Cpu);
  drop->reserve(cpu, n);
  const std::vector<float> ones(static_cast<size_t>(n) * d.count(), 1.0f);
  std::vector<float> mask(ones.size());
  drop->forward(cpu, cview(ones, n, d), mview(mask, n, d), Phase::Train, kDropStep);
  return mask;
}

struct LinearRef {
  sweep::LinearShape s;
  std::string where;
  std::vector<float> x, w, b, dy;
  std::vector<float> y, y_relu, y_drop, dx, dw, db;
  std::vector<float> dy_masked, db_masked;       ///< dy where y_relu > 0, its column sums
  std::vector<float> dy_drop_masked, db_drop;    ///< dy times the dropout's mask where y_drop > 0, its sums
  double floor_y = 0, floor_dx = 0, floor_dw = 0, floor_db = 0, floor_db_masked = 0, floor_db_drop = 0;
};

LinearRef make_linear_ref(const sweep::LinearShape& s, int index, uint64_t seed) {
  LinearRef r;
  r.s = s;
  r.where = "linear #" + std::to_string(index) + " " + s.str();
  const uint64_t key = mix64(seed ^ (static_cast<uint64_t>(index) << 20));
  const int rows = s.rows, in = s.in, out = s.out;
  r.x = randoms(static_cast<size_t>(rows) * in, key + 1);
  r.w = randoms(static_cast<size_t>(out) * in, key + 2);
  r.b = randoms(static_cast<size_t>(out), key + 3);
  r.dy = randoms(static_cast<size_t>(rows) * out, key + 4);
  DeviceContext cpu;
  LayerConfig c = layer_config("linear");
  c.out_features = out;
  const Dims id{in, 1, 1}, od{out, 1, 1};
  auto layer = make_layer<double>(c, 1, id, Device::Cpu);
  std::vector<double> wd = widen(r.w), bd = widen(r.b), gw(wd.size()), gb(bd.size());
  layer->bind({{wd, gw}, {bd, gb}});
  layer->reserve(cpu, rows);
  std::vector<double> xd = widen(r.x), yd(r.dy.size()), dyd = widen(r.dy), dxd(xd.size());
  layer->forward(cpu, cview(xd, rows, id), mview(yd, rows, od), Phase::Train, StepInfo{});
  layer->backward(cpu, cview(xd, rows, id), cview(yd, rows, od), cview(dyd, rows, od), mview(dxd, rows, id));
  r.y = narrow(yd);
  r.dx = narrow(dxd);
  r.dw = narrow(gw);
  r.db = narrow(gb);
  const std::vector<float> mask = dropout_mask(rows, od);
  const size_t ny = r.y.size();
  r.y_relu.resize(ny);
  r.y_drop.resize(ny);
  r.dy_masked.resize(ny);
  r.dy_drop_masked.resize(ny);
  for (size_t i = 0; i < ny; ++i) {
    r.y_relu[i] = r.y[i] > 0.0f ? r.y[i] : 0.0f;
    r.y_drop[i] = r.y_relu[i] * mask[i];
    r.dy_masked[i] = r.y_relu[i] > 0.0f ? r.dy[i] : 0.0f;
    const float g = r.dy[i] * mask[i];  // bias_grad_rows: the dropout's backward, then the ReLU's mask
    r.dy_drop_masked[i] = r.y_drop[i] > 0.0f ? g : 0.0f;
  }
  r.db_masked = narrow(channel_sums(r.dy_masked, rows, out, 1));
  r.db_drop = narrow(channel_sums(r.dy_drop_masked, rows, out, 1));
  // Sums of squared terms (the floors): exact, by factoring over the shared index.
  std::vector<double> x2_col(static_cast<size_t>(in), 0.0), x2_row(static_cast<size_t>(rows), 0.0),
      w2_col(static_cast<size_t>(in), 0.0), w2_row(static_cast<size_t>(out), 0.0),
      d2_col(static_cast<size_t>(out), 0.0), d2_row(static_cast<size_t>(rows), 0.0);
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < in; ++j) {
      const double v = r.x[static_cast<size_t>(i) * in + j];
      x2_col[static_cast<size_t>(j)] += v * v;
      x2_row[static_cast<size_t>(i)] += v * v;
    }
  for (int o = 0; o < out; ++o)
    for (int j = 0; j < in; ++j) {
      const double v = r.w[static_cast<size_t>(o) * in + j];
      w2_col[static_cast<size_t>(j)] += v * v;
      w2_row[static_cast<size_t>(o)] += v * v;
    }
  for (int i = 0; i < rows; ++i)
    for (int o = 0; o < out; ++o) {
      const double v = r.dy[static_cast<size_t>(i) * out + o];
      d2_col[static_cast<size_t>(o)] += v * v;
      d2_row[static_cast<size_t>(i)] += v * v;
    }
  double ty = 0, tdx = 0, tdw = 0;
  for (int j = 0; j < in; ++j) ty += x2_col[static_cast<size_t>(j)] * w2_col[static_cast<size_t>(j)];
  for (int o = 0; o < out; ++o) tdx += d2_col[static_cast<size_t>(o)] * w2_row[static_cast<size_t>(o)];
  for (int i = 0; i < rows; ++i) tdw += d2_row[static_cast<size_t>(i)] * x2_row[static_cast<size_t>(i)];
  r.floor_y = std::sqrt(ty);
  r.floor_dx = std::sqrt(tdx);
  r.floor_dw = std::sqrt(tdw);
  r.floor_db = std::sqrt(sum_squares(r.dy));
  r.floor_db_masked = std::sqrt(sum_squares(r.dy_masked));
  r.floor_db_drop = std::sqrt(sum_squares(r.dy_drop_masked));
  return r;
}

void run_linear_on_gpu(Sweep& sw, const LinearRef& r, cublasHandle_t tf32_blas) {
  DeviceContext& ctx = sw.ctx();
  const cudaStream_t st = sw.stream();
  const std::string& where = r.where;
  const int rows = r.s.rows, in = r.s.in, out = r.s.out;
  const size_t ny = r.y.size(), nx = r.x.size(), nw = r.w.size(), nb = r.b.size();
  Buffer<float> x = to_gpu(ctx, r.x), w = to_gpu(ctx, r.w), b = to_gpu(ctx, r.b), dy = to_gpu(ctx, r.dy);
  Buffer<float> ry = to_gpu(ctx, r.y), ry_relu = to_gpu(ctx, r.y_relu), ry_drop = to_gpu(ctx, r.y_drop),
                rdx = to_gpu(ctx, r.dx), rdw = to_gpu(ctx, r.dw), rdb = to_gpu(ctx, r.db),
                rmasked = to_gpu(ctx, r.dy_masked), rdb_m = to_gpu(ctx, r.db_masked),
                rmasked_drop = to_gpu(ctx, r.dy_drop_masked), rdb_drop = to_gpu(ctx, r.db_drop);
  Buffer<float> y = floats(ny), dx = floats(nx), dw = floats(nw), db = floats(nb), masked = floats(ny);
  const kernels::FusedDropout drop = fused_dropout(sw.step(), out);

  // The skinny GEMMs, in the layouts LinearCuda uses (it takes them up to 256 rows; their guard
  // admits more, so they are checked wherever it does).
  const char* band = rows <= 256 ? " (rows <= 256)" : " (rows > 256, beyond the layer's use)";
  const kernels::SkinnyGemm fwd{x.data(), false, w.data(), true, y.data(), rows, out, in};
  if (kernels::skinny_gemm_fits(fwd)) {
    Buffer<float> partials = floats(kernels::skinny_gemm_partials(rows, out, in));
    const std::string name = std::string("forward: skinny split") + band;
    run_own(sw, where, name, {{y.data(), ry.data(), ny, kFloat32Tol, r.floor_y}},
            [&] { kernels::skinny_gemm(fwd, {b.data(), false, {}}, partials.data(), st); });
    run_own(sw, where, name + " +relu", {{y.data(), ry_relu.data(), ny, kFloat32Tol, r.floor_y}},
            [&] { kernels::skinny_gemm(fwd, {b.data(), true, {}}, partials.data(), st); });
    run_own(sw, where, name + " +relu +dropout", {{y.data(), ry_drop.data(), ny, kFloat32Tol, r.floor_y}},
            [&] { kernels::skinny_gemm(fwd, {b.data(), true, drop}, partials.data(), st); });
    run_own(sw, where, std::string("forward: skinny unsplit") + band, {{y.data(), ry.data(), ny, kFloat32Tol, r.floor_y}},
            [&] { kernels::skinny_gemm(fwd, {b.data(), false, {}}, nullptr, st); });
    sw.flush();  // partials is freed here
  } else {
    sw.not_eligible("forward: skinny (skinny_gemm_fits says no)");
  }
  const kernels::SkinnyGemm data{dy.data(), false, w.data(), false, dx.data(), rows, in, out};
  if (kernels::skinny_gemm_fits(data))
    run_own(sw, where, std::string("input gradient: skinny") + band, {{dx.data(), rdx.data(), nx, kFloat32Tol, r.floor_dx}},
            [&] { kernels::skinny_gemm(data, {}, nullptr, st); });
  else
    sw.not_eligible("input gradient: skinny (skinny_gemm_fits says no)");
  const kernels::SkinnyGemm weights{dy.data(), true, x.data(), false, dw.data(), out, in, rows};
  if (kernels::skinny_gemm_fits(weights))
    run_own(sw, where, std::string("weight gradient: skinny") + band, {{dw.data(), rdw.data(), nw, kFloat32Tol, r.floor_dw}},
            [&] { kernels::skinny_gemm(weights, {}, nullptr, st); });
  else
    sw.not_eligible("weight gradient: skinny (skinny_gemm_fits says no)");

  // cuBLAS, as LinearCuda calls it, in float32 (the context's handle) and TF32.
  constexpr float kOne = 1.0f, kZero = 0.0f;
  for (const bool tf32 : {false, true}) {
    const cublasHandle_t blas = tf32 ? tf32_blas : ctx.cuda().cublas();
    const double tol = tf32 ? kTf32Tol : kFloat32Tol;
    const std::string suffix = tf32 ? " cuBLAS tf32" : " cuBLAS float32";
    const auto forward = [&] {
      CUBLAS_CHECK(cublasSgemm(blas, CUBLAS_OP_T, CUBLAS_OP_N, out, rows, in, &kOne, w.data(), in, x.data(), in, &kZero,
                               y.data(), out));
    };
    run_own(sw, where, "forward:" + suffix + " +add_bias_rows", {{y.data(), ry.data(), ny, tol, r.floor_y}}, [&] {
      forward();
      kernels::add_bias_rows(y.data(), b.data(), rows, out, false, {}, st);
    });
    if (!tf32) {
      run_own(sw, where, "forward:" + suffix + " +add_bias_rows relu", {{y.data(), ry_relu.data(), ny, tol, r.floor_y}},
              [&] {
                forward();
                kernels::add_bias_rows(y.data(), b.data(), rows, out, true, {}, st);
              });
      run_own(sw, where, "forward:" + suffix + " +add_bias_rows relu dropout",
              {{y.data(), ry_drop.data(), ny, tol, r.floor_y}}, [&] {
                forward();
                kernels::add_bias_rows(y.data(), b.data(), rows, out, true, drop, st);
              });
    }
    run_own(sw, where, "input gradient:" + suffix, {{dx.data(), rdx.data(), nx, tol, r.floor_dx}}, [&] {
      CUBLAS_CHECK(cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_N, in, rows, out, &kOne, w.data(), in, dy.data(), out, &kZero,
                               dx.data(), in));
    });
    run_own(sw, where, "weight gradient:" + suffix, {{dw.data(), rdw.data(), nw, tol, r.floor_dw}}, [&] {
      CUBLAS_CHECK(cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_T, in, out, rows, &kOne, x.data(), in, dy.data(), out,
                               &kZero, dw.data(), in));
    });
  }
  // cuBLASLt's GEMM with the bias (and ReLU) epilogue, as LinearCuda's forward runs past the skinny GEMMs
  // and in TF32 (layers/cuda/bias_gemm.h); once more with the weights and bias 4 bytes off a 16-byte
  // boundary, as views into the flat parameter buffer may be (another alignment: another algorithm).
  Buffer<float> w_off = floats(nw + 1), b_off = floats(nb + 1);
  CUDA_CHECK(cudaMemcpyAsync(w_off.data() + 1, w.data(), nw * sizeof(float), cudaMemcpyDeviceToDevice, st));
  CUDA_CHECK(cudaMemcpyAsync(b_off.data() + 1, b.data(), nb * sizeof(float), cudaMemcpyDeviceToDevice, st));
  CudaContext& cu = ctx.cuda();
  for (const bool tf32 : {false, true})
    for (const bool relu : {false, true})
      for (const bool offset : {false, true}) {
        if (offset && !relu) continue;
        BiasGemm gemm(out, in, relu, tf32);
        const std::string name = std::string("forward: cuBLASLt bias epilogue") + (tf32 ? " tf32" : " float32") +
                                 (relu ? " +relu" : "") + (offset ? " (weights, bias 4-byte aligned)" : "");
        run_own(
            sw, where, name, {{y.data(), (relu ? ry_relu : ry).data(), ny, tf32 ? kTf32Tol : kFloat32Tol, r.floor_y}},
            [&] {
              const float* wp = offset ? w_off.data() + 1 : w.data();
              const float* bp = offset ? b_off.data() + 1 : b.data();
              if (!gemm.run(cu.cublaslt(), x.data(), wp, bp, y.data(), rows, cu.cublas_workspace(),
                            cu.cublas_workspace_size(), st))
                throw CudaError("cuBLASLt has no algorithm for the case");
            },
            /*refusal_ok=*/true);
        sw.flush();  // gemm's descriptors are freed here
      }

  // The bias gradient pass: plain, masked by an absorbed ReLU, and by an absorbed ReLU and dropout.
  run_own(sw, where, "bias gradient: bias_grad_rows", {{db.data(), rdb.data(), nb, kFloat32Tol, r.floor_db}},
          [&] { kernels::bias_grad_rows(dy.data(), nullptr, masked.data(), db.data(), rows, out, {}, st); });
  run_own(sw, where, "bias gradient: bias_grad_rows +relu",
          {{db.data(), rdb_m.data(), nb, kFloat32Tol, r.floor_db_masked}, {masked.data(), rmasked.data(), ny, kExact}},
          [&] { kernels::bias_grad_rows(dy.data(), ry_relu.data(), masked.data(), db.data(), rows, out, {}, st); });
  run_own(sw, where, "bias gradient: bias_grad_rows +relu +dropout",
          {{db.data(), rdb_drop.data(), nb, kFloat32Tol, r.floor_db_drop},
           {masked.data(), rmasked_drop.data(), ny, kExact}},
          [&] { kernels::bias_grad_rows(dy.data(), ry_drop.data(), masked.data(), db.data(), rows, out, drop, st); });
  sw.flush();  // before the references are freed
}

TEST_F(ShapeSweep, Linear) {
  const uint64_t seed = sweep_seed(3);
  sweep::LinearLimits lim;  // rows 1-8192, inputs 1-10000, outputs 1-1000
  lim.max_elems = long_mode() ? int64_t{1} << 22 : int64_t{1} << 24;
  lim.max_flops = long_mode() ? 300'000'000 : 1'000'000'000;
  const int count = sweep_count("DPTRAIN_SWEEP_LINEAR", 40, 400);
  Sweep sw("linear", seed);
  const CublasHandle tf32_blas = make_tf32_cublas(sw.stream());
  const std::vector<sweep::LinearShape> shapes = sweep::linear_shapes(seed, count, lim);
  for (size_t i = 0; i < shapes.size(); ++i) {
    const std::string where = "linear #" + std::to_string(i) + " " + shapes[i].str();
    if (!guarded(sw, where, [&] { run_linear_on_gpu(sw, make_linear_ref(shapes[i], static_cast<int>(i), seed), tf32_blas); }))
      break;
    sw.shape_done();
  }
  sw.finish();
}

// ---------------------------------------------------------------------------------------------
// The loss: softmax cross-entropy, the fused classifier backward, the path through LinearCuda
// ---------------------------------------------------------------------------------------------

std::vector<int32_t> random_labels(int n, int classes, uint64_t seed) {
  std::vector<int32_t> labels(static_cast<size_t>(n));
  sweep::Rng r(seed);
  for (int32_t& l : labels) l = r.uniform_int(0, classes - 1);
  return labels;
}

/// The CPU loss (float, as training runs it): dL/dlogits (grad_scale 1/n) and the sums.
struct LossRun {
  std::vector<float> dlogits;
  double loss = 0, correct = 0;
};
LossRun cpu_loss(const std::vector<float>& logits, const std::vector<int32_t>& labels, int n, int classes,
                 float smoothing) {
  DeviceContext cpu;
  auto loss = make_softmax_cross_entropy<float>(Device::Cpu, smoothing);
  LossRun r;
  r.dlogits.resize(logits.size());
  double sums[2] = {0, 0};
  loss->forward_backward(cpu, cview(logits, n, Dims{classes, 1, 1}), labels.data(), 1.0f / static_cast<float>(n),
                         mview(r.dlogits, n, Dims{classes, 1, 1}), sums);
  r.loss = sums[0];
  r.correct = sums[1];
  return r;
}

/// The floor of dL/dlogits = scale (p - t): the size of its two terms, the probability p and the
/// target t, with scale 1/n. Where the label's p is near 1, p - t cancels to a small number that
/// carries the rounding of p (1 ulp of 1, 6e-8); against its own size that is 1e-6 or more on a row
/// of two classes, against the terms' it is what float32 promises.
double loss_grad_floor(const std::vector<float>& dlogits, const std::vector<int32_t>& labels, int n, int classes,
                       float smoothing) {
  const double scale = 1.0 / n, off = static_cast<double>(smoothing) / classes;
  double sum = 0;
  for (int i = 0; i < n; ++i)
    for (int c = 0; c < classes; ++c) {
      const double t = off + (c == labels[static_cast<size_t>(i)] ? 1.0 - smoothing : 0.0);
      const double p = dlogits[static_cast<size_t>(i) * classes + c] / scale + t;
      sum += p * p + t * t;
    }
  return scale * std::sqrt(sum);
}

/// Rows whose two largest logits are closer than `gap`: their argmax may differ between two
/// computations of the logits that round differently.
int near_ties(const std::vector<float>& logits, int n, int classes, float gap) {
  int count = 0;
  for (int i = 0; i < n; ++i) {
    const float* z = logits.data() + static_cast<size_t>(i) * classes;
    float first = -std::numeric_limits<float>::infinity(), second = first;
    for (int c = 0; c < classes; ++c) {
      if (z[c] > first) second = first, first = z[c];
      else if (z[c] > second) second = z[c];
    }
    count += first - second <= gap;
  }
  return count;
}

double rel_scalar(double got, double want) {
  return std::abs(got - want) / std::max(std::abs(want), 1e-30);
}

/// The largest batch linear_loss_backward admits for (classes, inputs), at most n (0: none).
int largest_fused_batch(int n, int classes, int inputs) {
  int lo = 0, hi = n;  // fits(lo) (or lo = 0), the answer in [lo, hi]
  while (lo < hi) {
    const int mid = lo + (hi - lo + 1) / 2;
    if (kernels::linear_loss_backward_fits(mid, classes, inputs))
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

/// linear_loss_backward's scratch for a batch of n (kernels::LinearLossScratch), counters zeroed.
struct LinearLossScratchBuffers {
  kernels::LinearLossScratchSize size;
  Buffer<float> partials;
  Buffer<double> loss_partials;
  Buffer<uint32_t> arrivals;
  LinearLossScratchBuffers(int n, int classes, int inputs)
      : size(kernels::linear_loss_backward_scratch(n, classes, inputs)),
        partials(Device::Cuda, size.floats),
        loss_partials(Device::Cuda, size.doubles),
        arrivals(Device::Cuda, size.counters) {
    arrivals.zero();
  }
  kernels::LinearLossScratch view() { return {partials.data(), loss_partials.data(), arrivals.data()}; }
};

/// The floors of a linear layer's backward from dl = dL/dlogits [n][out], x [n][in], w [out][in]:
/// the square roots of the sums of the squared terms of dx (dl w), dw (dl x) and db (dl), exact
/// by factoring over the index the terms share.
struct LinearFloors {
  double dx = 0, dw = 0, db = 0;
};
LinearFloors linear_backward_floors(const std::vector<float>& x, const std::vector<float>& w, const std::vector<float>& dl,
                                    int n, int in, int out) {
  std::vector<double> dl_row(static_cast<size_t>(n), 0.0), dl_col(static_cast<size_t>(out), 0.0),
      x_row(static_cast<size_t>(n), 0.0), w_row(static_cast<size_t>(out), 0.0);
  for (int i = 0; i < n; ++i)
    for (int c = 0; c < out; ++c) {
      const double v = dl[static_cast<size_t>(i) * out + c];
      dl_row[static_cast<size_t>(i)] += v * v;
      dl_col[static_cast<size_t>(c)] += v * v;
    }
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < in; ++j) x_row[static_cast<size_t>(i)] += static_cast<double>(x[static_cast<size_t>(i) * in + j]) * x[static_cast<size_t>(i) * in + j];
  for (int c = 0; c < out; ++c)
    for (int j = 0; j < in; ++j) w_row[static_cast<size_t>(c)] += static_cast<double>(w[static_cast<size_t>(c) * in + j]) * w[static_cast<size_t>(c) * in + j];
  LinearFloors f;
  double tdx = 0, tdw = 0, tdb = 0;
  for (int c = 0; c < out; ++c) tdx += dl_col[static_cast<size_t>(c)] * w_row[static_cast<size_t>(c)];
  for (int i = 0; i < n; ++i) tdw += dl_row[static_cast<size_t>(i)] * x_row[static_cast<size_t>(i)];
  for (int c = 0; c < out; ++c) tdb += dl_col[static_cast<size_t>(c)];
  f.dx = std::sqrt(tdx);
  f.dw = std::sqrt(tdw);
  f.db = std::sqrt(tdb);
  return f;
}

/// softmax_cross_entropy's scratch for a batch of n x classes (kernels::LossScratch), counter zeroed.
struct LossScratchBuffers {
  Buffer<double> partials;
  Buffer<uint32_t> arrivals;
  LossScratchBuffers(int n, int classes)
      : partials(Device::Cuda, kernels::softmax_cross_entropy_partials(n, classes)), arrivals(Device::Cuda, 1) {
    arrivals.zero();
  }
  kernels::LossScratch view() { return {partials.data(), arrivals.data()}; }
};

void run_loss_shape(Sweep& sw, const sweep::LossShape& s, int index, uint64_t seed) {
  DeviceContext& ctx = sw.ctx();
  const cudaStream_t st = sw.stream();
  const uint64_t key = mix64(seed ^ (static_cast<uint64_t>(index) << 20));
  const int n = s.rows, classes = s.classes;
  const size_t nl = static_cast<size_t>(n) * classes;
  // Every third shape with label smoothing (train.label_smoothing), the others without: both kinds
  // of target on every path, at every class count the sweep draws (2..1000).
  const float smoothing = index % 3 == 1 ? 0.1f : 0.0f;
  const std::string where = "loss #" + std::to_string(index) + " " + s.str() +
                            (smoothing != 0.0f ? ", label_smoothing 0.1" : "");

  // 1. The loss kernel on the CPU's logits.
  {
    const std::vector<float> logits = randoms(nl, key + 1, 6.0f);
    const std::vector<int32_t> labels = random_labels(n, classes, key + 2);
    const LossRun want = cpu_loss(logits, labels, n, classes, smoothing);
    const double grad_floor = loss_grad_floor(want.dlogits, labels, n, classes, smoothing);
    Buffer<float> dl = to_gpu(ctx, logits), rdl = to_gpu(ctx, want.dlogits), g = floats(nl);
    Buffer<int32_t> dlab = to_gpu(ctx, labels);
    Buffer<double> sums(Device::Cuda, 2);
    LossScratchBuffers scratch(n, classes);
    for (const bool with_gradient : {true, false}) {  // the second launch reuses the scratch's counter
      const std::string impl = std::string("loss kernel softmax_cross_entropy") +
                               (classes <= 32 ? " (a thread per row)" : " (a warp per row)") +
                               (with_gradient ? "" : " without dL/dlogits");
      sw.poison(g.data(), nl);
      CUDA_CHECK(cudaMemsetAsync(sums.data(), 0, 2 * sizeof(double), st));
      kernels::softmax_cross_entropy(dl.data(), dlab.data(), n, classes, 1.0f / static_cast<float>(n), smoothing,
                                     with_gradient ? g.data() : nullptr, sums.data(), scratch.view(), st);
      sw.ran();
      sw.check_equal(where, impl + ": the blocks' arrival counter is reset", to_cpu(ctx, scratch.arrivals.data(), 1)[0], 0);
      if (with_gradient) sw.expect_close(g.data(), rdl.data(), nl, where, impl + ": dL/dlogits", kLossGradTol, grad_floor);
      const std::vector<double> got = to_cpu(ctx, sums.data(), 2);
      sw.check(where, impl + ": loss sum", rel_scalar(got[0], want.loss), kFloat32Tol);
      sw.check_equal(where, impl + ": correct count", got[1], want.correct);
    }
    sw.flush();
  }

  // 2. The fused classifier backward (up to 32 classes) at this batch, or at the largest it
  //    admits; the logits are the CPU linear layer's.
  sweep::Rng pick(key + 3);
  const int inputs = static_cast<int>(sweep::edge_or_log_uniform(pick, 1, 512, 0.4));
  if (classes <= 32) {
    const int nf = largest_fused_batch(n, classes, inputs);
    if (nf == 0) {
      sw.not_eligible("fused classifier backward: no batch fits");
    } else {
      const std::string at = where + (nf < n ? " (fused at batch " + std::to_string(nf) + ", the most it admits)" : "") +
                             ", " + std::to_string(inputs) + " inputs";
      const std::vector<float> x = randoms(static_cast<size_t>(nf) * inputs, key + 4, 2.0f),
                               wv = randoms(static_cast<size_t>(classes) * inputs, key + 5, 0.3f),
                               bv = randoms(static_cast<size_t>(classes), key + 6, 0.3f);
      const std::vector<int32_t> labels = random_labels(nf, classes, key + 7);
      // CPU: float linear forward, float loss, double linear backward of the CPU's dL/dlogits.
      DeviceContext cpu;
      LayerConfig lc = layer_config("linear");
      lc.out_features = classes;
      const Dims id{inputs, 1, 1}, od{classes, 1, 1};
      auto lf = make_layer<float>(lc, 9, id, Device::Cpu);
      std::vector<float> wf = wv, bf = bv, gwf(wf.size()), gbf(bf.size());
      lf->bind({{wf, gwf}, {bf, gbf}});
      lf->reserve(cpu, nf);
      std::vector<float> logits(static_cast<size_t>(nf) * classes);
      lf->forward(cpu, cview(x, nf, id), mview(logits, nf, od), Phase::Train, StepInfo{});
      const LossRun want = cpu_loss(logits, labels, nf, classes, smoothing);
      auto ld = make_layer<double>(lc, 9, id, Device::Cpu);
      std::vector<double> wd = widen(wv), bd = widen(bv), gwd(wd.size()), gbd(bd.size());
      ld->bind({{wd, gwd}, {bd, gbd}});
      ld->reserve(cpu, nf);
      std::vector<double> xd = widen(x), yd = widen(logits), dld = widen(want.dlogits), dxd(xd.size());
      ld->backward(cpu, cview(xd, nf, id), cview(yd, nf, od), cview(dld, nf, od), mview(dxd, nf, id));
      const LinearFloors floors = linear_backward_floors(x, wv, want.dlogits, nf, inputs, classes);
      Buffer<float> gx = to_gpu(ctx, x), gw = to_gpu(ctx, wv), glog = to_gpu(ctx, logits), rdl = to_gpu(ctx, want.dlogits);
      Buffer<float> rdx = to_gpu(ctx, narrow(dxd)), rdw = to_gpu(ctx, narrow(gwd)), rdb = to_gpu(ctx, narrow(gbd));
      Buffer<int32_t> glab = to_gpu(ctx, labels);
      Buffer<float> dl = floats(logits.size()), dl_apart = floats(logits.size()), dx = floats(x.size()),
                    dw = floats(wv.size()), db = floats(bv.size());
      Buffer<double> sums(Device::Cuda, 2), sums_apart(Device::Cuda, 2);
      const std::string impl = "fused classifier backward linear_loss_backward";
      sw.poison(dl.data(), logits.size());
      sw.poison(dl_apart.data(), logits.size());
      sw.poison(dx.data(), x.size());
      sw.poison(dw.data(), wv.size());
      sw.poison(db.data(), bv.size());
      CUDA_CHECK(cudaMemsetAsync(sums.data(), 0, 2 * sizeof(double), st));
      CUDA_CHECK(cudaMemsetAsync(sums_apart.data(), 0, 2 * sizeof(double), st));
      LossScratchBuffers apart_scratch(nf, classes);
      LinearLossScratchBuffers scratch(nf, classes, inputs);
      const kernels::LinearLossBackward args{gx.data(), gw.data(), glog.data(), glab.data(), nf, classes, inputs,
                                             1.0f / static_cast<float>(nf), smoothing, dl.data(), sums.data(), dw.data(),
                                             db.data(), dx.data(), scratch.view()};
      bool ran = true;
      try {
        kernels::linear_loss_backward(args, st);
        kernels::softmax_cross_entropy(glog.data(), glab.data(), nf, classes, 1.0f / static_cast<float>(nf), smoothing,
                                       dl_apart.data(), sums_apart.data(), apart_scratch.view(), st);
      } catch (const CudaError& e) {
        sw.fail(at, impl + ": its guard admits the shape, but the call threw: " + e.what());
        ran = false;
      }
      if (ran) {
        sw.ran();
        sw.expect_close(dl.data(), rdl.data(), logits.size(), at, impl + ": dL/dlogits", kFloat32Tol);
        sw.expect_close(dl.data(), dl_apart.data(), logits.size(), at, impl + ": dL/dlogits equal the loss kernel's", kExact);
        sw.expect_close(dx.data(), rdx.data(), x.size(), at, impl + ": input gradient", kFloat32Tol, floors.dx);
        sw.expect_close(dw.data(), rdw.data(), wv.size(), at, impl + ": weight gradient", kFloat32Tol, floors.dw);
        sw.expect_close(db.data(), rdb.data(), bv.size(), at, impl + ": bias gradient", kFloat32Tol, floors.db);
        const std::vector<double> got = to_cpu(ctx, sums.data(), 2);
        sw.check(at, impl + ": loss sum", rel_scalar(got[0], want.loss), kFloat32Tol);
        sw.check_equal(at, impl + ": correct count", got[1], want.correct);
        if (scratch.size.counters > 0) {
          const std::vector<uint32_t> arrivals = to_cpu(ctx, scratch.arrivals.data(), scratch.size.counters);
          const auto unreset = std::count_if(arrivals.begin(), arrivals.end(), [](uint32_t a) { return a != 0; });
          if (unreset > 0)
            sw.fail(at, impl + ": " + std::to_string(unreset) + " of " + std::to_string(arrivals.size()) +
                            " slices' arrival counters are not reset");
        }
        // A second launch (the counters reused, as a replayed step reuses them) gives the same bits and
        // adds the same loss again.
        const std::vector<float> dw1 = to_cpu(ctx, dw.data(), wv.size()), db1 = to_cpu(ctx, db.data(), bv.size()),
                                 dx1 = to_cpu(ctx, dx.data(), x.size());
        sw.poison(dw.data(), wv.size());
        sw.poison(db.data(), bv.size());
        sw.poison(dx.data(), x.size());
        kernels::linear_loss_backward(args, st);
        sw.ran();
        const auto differ = [](const std::vector<float>& a, const std::vector<float>& b) {
          size_t bad = 0;
          for (size_t i = 0; i < a.size(); ++i) bad += std::memcmp(&a[i], &b[i], sizeof(float)) != 0;
          return bad;
        };
        const std::pair<const char*, size_t> repeats[] = {
            {"weight gradient", differ(to_cpu(ctx, dw.data(), wv.size()), dw1)},
            {"bias gradient", differ(to_cpu(ctx, db.data(), bv.size()), db1)},
            {"input gradient", differ(to_cpu(ctx, dx.data(), x.size()), dx1)}};
        for (const auto& [what, bad] : repeats)
          if (bad > 0) sw.fail(at, impl + ": a second launch's " + what + " differs from the first's in " + std::to_string(bad) + " elements");
        const std::vector<double> again = to_cpu(ctx, sums.data(), 2);
        if (again[0] != 2 * got[0] || again[1] != 2 * got[1])
          sw.fail(at, impl + ": a second launch did not add the same loss and correct count again");
        sw.flush();
      }
    }
  }

  // 3. Through LinearCuda (fused where linear_loss_backward_fits, else the loss kernel and the
  //    layer's backward) against the CPU's layer and loss, as in LinearBackwardWithLossMatchesCpu.
  {
    const int li = std::min(inputs, 64);
    const std::string at = where + ", through LinearCuda with " + std::to_string(li) + " inputs";
    const std::vector<float> x = randoms(static_cast<size_t>(n) * li, key + 8, 2.0f);
    std::vector<float> params = randoms(static_cast<size_t>(classes) * (li + 1), key + 9, 0.3f);
    const std::vector<int32_t> labels = random_labels(n, classes, key + 10);
    LayerConfig lc = layer_config("linear");
    lc.out_features = classes;
    const Dims id{li, 1, 1}, od{classes, 1, 1};
    const size_t nw = static_cast<size_t>(classes) * li;
    // CPU
    DeviceContext cpu;
    auto lcpu = make_layer<float>(lc, 9, id, Device::Cpu);
    std::vector<float> pc = params, gc(params.size());
    lcpu->bind({{std::span<float>(pc).subspan(0, nw), std::span<float>(gc).subspan(0, nw)},
                {std::span<float>(pc).subspan(nw), std::span<float>(gc).subspan(nw)}});
    lcpu->reserve(cpu, n);
    std::vector<float> logits(nl), dxc(x.size());
    lcpu->forward(cpu, cview(x, n, id), mview(logits, n, od), Phase::Train, StepInfo{});
    const LossRun want = cpu_loss(logits, labels, n, classes, smoothing);
    lcpu->backward(cpu, cview(x, n, id), cview(logits, n, od), cview(want.dlogits, n, od), mview(dxc, n, id));
    // GPU
    auto lg = make_layer<float>(lc, 9, id, Device::Cuda);
    auto loss = make_softmax_cross_entropy<float>(Device::Cuda, smoothing);
    loss->reserve(ctx, n, classes);
    Buffer<float> pv = to_gpu(ctx, params), pgrad = floats(params.size()), bx = to_gpu(ctx, x), by = floats(nl),
                  bdy = floats(nl), bdx = floats(x.size());
    Buffer<int32_t> bl = to_gpu(ctx, labels);
    Buffer<double> sums(Device::Cuda, 2);
    lg->bind({{{pv.data(), nw}, {pgrad.data(), nw}},
              {{pv.data() + nw, static_cast<size_t>(classes)}, {pgrad.data() + nw, static_cast<size_t>(classes)}}});
    lg->reserve(ctx, n);
    sw.poison(by.data(), nl);
    sw.poison(bdy.data(), nl);
    sw.poison(bdx.data(), x.size());
    sw.poison(pgrad.data(), params.size());
    CUDA_CHECK(cudaMemsetAsync(sums.data(), 0, 2 * sizeof(double), st));
    const TensorView<const float> xin{bx.data(), n, id};
    const TensorView<float> yv{by.data(), n, od}, dyv{bdy.data(), n, od}, dxv{bdx.data(), n, id};
    lg->forward(ctx, xin, yv, Phase::Train, kDropStep);
    const float scale = 1.0f / static_cast<float>(n);
    const bool fused = lg->backward_with_loss(ctx, xin, yv, bl.data(), scale, smoothing, sums.data(), dyv, dxv);
    const bool fits = kernels::linear_loss_backward_fits(n, classes, li);
    if (fused != fits)
      sw.fail(at, std::string("LinearCuda::backward_with_loss returned ") + (fused ? "true" : "false") +
                      " where linear_loss_backward_fits says " + (fits ? "true" : "false"));
    if (!fused) {
      loss->forward_backward(ctx, yv, bl.data(), scale, dyv, sums.data());
      lg->backward(ctx, xin, yv, dyv, dxv);
    }
    sw.ran();
    const std::string impl = std::string("through LinearCuda: ") + (fused ? "fused" : "loss kernel + backward");
    const std::vector<float> got_logits = to_cpu(ctx, by.data(), nl), got_dl = to_cpu(ctx, bdy.data(), nl),
                             got_dx = to_cpu(ctx, bdx.data(), x.size()), got_g = to_cpu(ctx, pgrad.data(), params.size());
    const std::vector<double> got_sums = to_cpu(ctx, sums.data(), 2);
    const std::vector<float> wc(params.begin(), params.begin() + static_cast<std::ptrdiff_t>(nw));
    const LinearFloors floors = linear_backward_floors(x, wc, want.dlogits, n, li, classes);
    std::vector<double> w2_col(static_cast<size_t>(li), 0.0);  // each logit's terms are x w: the logits' floor
    for (int c = 0; c < classes; ++c)
      for (int j = 0; j < li; ++j)
        w2_col[static_cast<size_t>(j)] += static_cast<double>(wc[static_cast<size_t>(c) * li + j]) * wc[static_cast<size_t>(c) * li + j];
    double logit_terms = 0;
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < li; ++j) {
        const double v = x[static_cast<size_t>(i) * li + j];
        logit_terms += v * v * w2_col[static_cast<size_t>(j)];
      }
    sw.check(at, impl + ": logits", rel_host(got_logits, logits, std::sqrt(logit_terms)), kFloat32Tol);
    sw.check(at, impl + ": dL/dlogits", rel_host(got_dl, want.dlogits), kFloat32Tol);
    sw.check(at, impl + ": input gradient", rel_host(got_dx, dxc, floors.dx), kFloat32Tol);
    sw.check(at, impl + ": parameter gradients", rel_host(got_g, gc, std::hypot(floors.dw, floors.db)), kFloat32Tol);
    sw.check(at, impl + ": loss sum", rel_scalar(got_sums[0], want.loss), kFloat32Tol);
    // The GPU's logits round differently from the CPU's (by about 1e-7 of the terms' size): a row
    // whose two best logits are closer than 1e-5 of the largest may pick another argmax.
    float largest = 0;
    for (float v : logits) largest = std::max(largest, std::abs(v));
    const int ambiguous = near_ties(logits, n, classes, 1e-5f * (1.0f + largest));
    sw.check_equal(at, impl + ": correct count", got_sums[1], want.correct, ambiguous);
  }
}

TEST_F(ShapeSweep, Loss) {
  const uint64_t seed = sweep_seed(4);
  sweep::LossLimits lim;  // rows 1-8192, classes 2-1000
  lim.max_elems = int64_t{1} << 22;
  const int count = sweep_count("DPTRAIN_SWEEP_LOSS", 32, 400);
  Sweep sw("loss", seed);
  const std::vector<sweep::LossShape> shapes = sweep::loss_shapes(seed, count, lim);
  for (size_t i = 0; i < shapes.size(); ++i) {
    const std::string where = "loss #" + std::to_string(i) + " " + shapes[i].str();
    if (!guarded(sw, where, [&] { run_loss_shape(sw, shapes[i], static_cast<int>(i), seed); })) break;
    sw.shape_done();
  }
  sw.finish();
}

// ---------------------------------------------------------------------------------------------
// Max pooling, alone and fused with the convolution's bias
// ---------------------------------------------------------------------------------------------

void run_pool_shape(Sweep& sw, const sweep::PoolShape& s, int index, uint64_t seed) {
  DeviceContext& ctx = sw.ctx();
  const cudaStream_t st = sw.stream();
  const std::string where = "pool #" + std::to_string(index) + " " + s.str();
  const uint64_t key = mix64(seed ^ (static_cast<uint64_t>(index) << 20));
  const Dims in{s.c, s.h, s.w};
  const bool ties = index % 2 == 1, dropout = index % 3 == 2;
  std::vector<float> x = randoms(static_cast<size_t>(s.input_elems()), key + 1);
  if (ties)
    for (float& v : x) v = std::round(v * 2.0f);  // five values: ties in most windows
  const std::vector<float> dy = randoms(static_cast<size_t>(s.output_elems()), key + 2);
  const kernels::PoolGeometry g{s.n * s.c, s.h, s.w, s.oh(), s.ow(), s.k, s.stride, s.pad};
  const std::string variant = std::string(ties ? " (ties)" : "") + (dropout ? " +dropout" : "");
  {
    const PoolRun want = cpu_pool(x, dy, s.n, in, s.k, s.stride, s.pad, dropout);
    Buffer<float> gx = to_gpu(ctx, x), gdy = to_gpu(ctx, dy), ry = to_gpu(ctx, want.y), rdx = to_gpu(ctx, want.dx);
    Buffer<float> y = floats(dy.size()), dx = floats(x.size());
    Buffer<int32_t> argmax(Device::Cuda, std::max<size_t>(dy.size(), 1));
    const kernels::FusedDropout drop = dropout ? fused_dropout(sw.step(), static_cast<long>(s.c) * s.oh() * s.ow())
                                               : kernels::FusedDropout{};
    if (run_own(sw, where, "maxpool_forward" + variant, {{y.data(), ry.data(), dy.size(), kExact}},
                [&] { kernels::maxpool_forward(gx.data(), y.data(), argmax.data(), g, drop, st); }))
      run_own(sw, where, "maxpool_backward" + variant, {{dx.data(), rdx.data(), x.size(), kExact}},
              [&] { kernels::maxpool_backward(gdy.data(), argmax.data(), dx.data(), g, drop, st); });
    sw.flush();
  }
  // conv_pool_forward/backward: on this shape where its guard admits it (one output a thread where
  // pooled rows are not a multiple of 4 long), and for a tiling window of 2 or 3 on the nearest plane
  // whose pooled rows are (four outputs a thread, 16-byte accesses).
  std::vector<std::pair<kernels::PoolGeometry, std::string>> fused;
  if (kernels::conv_pool_fits(g)) fused.push_back({g, where});
  if (s.tiles() && (s.k == 2 || s.k == 3)) {
    const int pw = std::max(4, s.ow() / 4 * 4);
    const kernels::PoolGeometry g4{s.n * s.c, s.h, pw * s.k, s.oh(), pw, s.k, s.k, 0};
    if (g4.w != g.w) {
      if (kernels::conv_pool_fits(g4))
        fused.push_back({g4, where + ", width " + std::to_string(g4.w) + " for conv_pool"});
      else
        sw.fail(where, "conv_pool_fits refuses a " + std::to_string(s.k) + "x" + std::to_string(s.k) +
                           " tiling pool with pooled rows of " + std::to_string(pw) + " (inside its documented family)");
    }
  }
  for (const auto& entry : fused) {
    const kernels::PoolGeometry fg = entry.first;
    const std::string& at = entry.second;
    const int n = s.n, c = s.c;
    const std::vector<float> pre = randoms(static_cast<size_t>(fg.planes) * fg.h * fg.w, key + 3);
    const std::vector<float> bias = randoms(static_cast<size_t>(c), key + 4);
    const std::vector<float> dyp = randoms(static_cast<size_t>(fg.planes) * fg.oh * fg.ow, key + 5);
    Buffer<float> gpre = to_gpu(ctx, pre), gb = to_gpu(ctx, bias), gdy = to_gpu(ctx, dyp);
    Buffer<float> y = floats(dyp.size()), dx = floats(pre.size()), db = floats(bias.size());
    Buffer<float> partials = floats(kernels::conv_pool_backward_scratch(fg, c));
    Buffer<int32_t> argmax(Device::Cuda, std::max<size_t>(dyp.size(), 1));
    for (int variant = 0; variant < 4; ++variant) {
      const bool relu = variant == 1 || variant == 2, drop_on = variant == 1 || variant == 3;
      const FusedPoolRef f = fused_pool_ref(pre, bias, n, c, fg.h, fg.w, fg.k, relu, drop_on, dyp);
      const kernels::FusedDropout drop =
          drop_on ? fused_dropout(sw.step(), static_cast<long>(c) * fg.oh * fg.ow) : kernels::FusedDropout{};
      const std::string v = std::string(relu ? " +relu" : "") + (drop_on ? " +dropout" : "");
      Buffer<float> ry = to_gpu(ctx, f.y), rdx = to_gpu(ctx, f.dx), rdb = to_gpu(ctx, f.db);
      if (run_own(sw, at, "conv_pool_forward" + v, {{y.data(), ry.data(), dyp.size(), kExact}},
                  [&] { kernels::conv_pool_forward(gpre.data(), gb.data(), relu, y.data(), argmax.data(), fg, c, drop, st); }))
        run_own(sw, at, "conv_pool_backward" + v,
                {{dx.data(), rdx.data(), pre.size(), kExact}, {db.data(), rdb.data(), bias.size(), kFloat32Tol, f.floor_db}},
                [&] {
                  kernels::conv_pool_backward(gdy.data(), y.data(), argmax.data(), relu, dx.data(), db.data(),
                                              partials.data(), fg, c, drop, st);
                });
      sw.flush();  // before the references are freed
    }
  }
}

TEST_F(ShapeSweep, MaxPool) {
  const uint64_t seed = sweep_seed(5);
  sweep::PoolLimits lim;  // batch 1-8192, channels 1-256, planes 1-64 a side
  lim.max_elems = int64_t{1} << 24;
  const int count = sweep_count("DPTRAIN_SWEEP_POOL", 30, 400);
  std::vector<sweep::PoolShape> shapes = sweep::pool_shapes(seed, count, lim);
  // The edges of the launch grids: one element; a plane of 2896 x 2896 (the backward's grid.y,
  // 65522 of 65535 blocks); 2^23 planes of 1 x 1 and a million 2 x 2 windows.
  for (const sweep::PoolShape& e : {sweep::PoolShape{1, 1, 1, 1, 1, 1, 0}, sweep::PoolShape{1, 1, 2896, 2896, 3, 2, 1},
                                    sweep::PoolShape{1, 1, 2896, 2896, 2, 2, 0}, sweep::PoolShape{8192, 1024, 1, 1, 1, 1, 0},
                                    sweep::PoolShape{8192, 128, 2, 4, 2, 2, 0}, sweep::PoolShape{3, 5, 8, 8, 7, 3, 3}})
    shapes.push_back(e);
  Sweep sw("maxpool", seed);
  for (size_t i = 0; i < shapes.size(); ++i) {
    const std::string where = "pool #" + std::to_string(i) + " " + shapes[i].str();
    if (!guarded(sw, where, [&] { run_pool_shape(sw, shapes[i], static_cast<int>(i), seed); })) break;
    sw.shape_done();
  }
  sw.finish();
}

// ---------------------------------------------------------------------------------------------
// Average pooling (avgpool2d, global_avgpool)
// ---------------------------------------------------------------------------------------------

/// The CUDA kernels against the CPU layer in float: the same sums in the same order, then the
/// same division, so equal bit for bit (kernels/pool_kernels.h); through AvgPoolCuda too.
void run_avgpool_shape(Sweep& sw, const sweep::AvgPoolShape& a, int index, uint64_t seed) {
  DeviceContext& ctx = sw.ctx();
  const cudaStream_t st = sw.stream();
  const sweep::PoolShape& s = a.pool;
  const std::string where = "avgpool #" + std::to_string(index) + " " + a.str();
  const uint64_t key = mix64(seed ^ (static_cast<uint64_t>(index) << 20));
  const Dims in{s.c, s.h, s.w}, od{s.c, a.oh(), a.ow()};
  const std::vector<float> x = randoms(static_cast<size_t>(s.input_elems()), key + 1);
  const std::vector<float> dy = randoms(static_cast<size_t>(a.output_elems()), key + 2);
  LayerConfig pc = layer_config(a.global ? "global_avgpool" : "avgpool2d");
  if (!a.global) pc.kernel = s.k, pc.stride = s.stride, pc.padding = s.pad;
  DeviceContext cpu;
  auto lc = make_layer<float>(pc, 3, in, Device::Cpu);
  std::vector<float> want_y(dy.size()), want_dx(x.size());
  lc->forward(cpu, cview(x, s.n, in), mview(want_y, s.n, od), Phase::Train, StepInfo{});
  lc->backward(cpu, cview(x, s.n, in), cview(want_y, s.n, od), cview(dy, s.n, od), mview(want_dx, s.n, in));
  Buffer<float> gx = to_gpu(ctx, x), gdy = to_gpu(ctx, dy), ry = to_gpu(ctx, want_y), rdx = to_gpu(ctx, want_dx);
  Buffer<float> y = floats(dy.size()), dx = floats(x.size());
  const kernels::AvgPoolGeometry g{s.n * s.c, s.h, s.w, a.oh(), a.ow(), a.kh(), a.kw(), a.stride(), a.pad()};
  if (run_own(sw, where, "avgpool_forward", {{y.data(), ry.data(), dy.size(), kExact}},
              [&] { kernels::avgpool_forward(gx.data(), y.data(), g, st); }))
    run_own(sw, where, "avgpool_backward", {{dx.data(), rdx.data(), x.size(), kExact}},
            [&] { kernels::avgpool_backward(gdy.data(), dx.data(), g, st); });
  // The layer (its geometry from the config) on the same buffers.
  auto lg = make_layer<float>(pc, 3, in, Device::Cuda);
  lg->reserve(ctx, s.n);
  if (run_own(sw, where, "AvgPoolCuda forward", {{y.data(), ry.data(), dy.size(), kExact}},
              [&] { lg->forward(ctx, TensorView<const float>{gx.data(), s.n, in}, TensorView<float>{y.data(), s.n, od},
                                Phase::Train, StepInfo{}); }))
    run_own(sw, where, "AvgPoolCuda backward", {{dx.data(), rdx.data(), x.size(), kExact}}, [&] {
      lg->backward(ctx, TensorView<const float>{gx.data(), s.n, in}, TensorView<const float>{y.data(), s.n, od},
                   TensorView<const float>{gdy.data(), s.n, od}, TensorView<float>{dx.data(), s.n, in});
    });
  sw.flush();  // before the references are freed
}

TEST_F(ShapeSweep, AvgPool) {
  const uint64_t seed = sweep_seed(9);
  sweep::PoolLimits lim;  // batch 1-8192, channels 1-256, planes 1-64 a side
  lim.max_elems = int64_t{1} << 22;
  const int count = sweep_count("DPTRAIN_SWEEP_AVGPOOL", 30, 400);
  std::vector<sweep::AvgPoolShape> shapes = sweep::avgpool_shapes(seed, count, lim);
  // Edges: one element; a global window over a 1024 x 1024 plane (a million-term sum per thread);
  // 2^23 planes of 1 x 1; padding of half a 7-window.
  for (const sweep::AvgPoolShape& e :
       {sweep::AvgPoolShape{sweep::PoolShape{1, 1, 1, 1, 1, 1, 0}, false},
        sweep::AvgPoolShape{sweep::PoolShape{1, 1, 1024, 1024, 1, 1, 0}, true},
        sweep::AvgPoolShape{sweep::PoolShape{8192, 1024, 1, 1, 1, 1, 0}, true},
        sweep::AvgPoolShape{sweep::PoolShape{3, 5, 8, 8, 7, 3, 3}, false}})
    shapes.push_back(e);
  Sweep sw("avgpool", seed);
  for (size_t i = 0; i < shapes.size(); ++i) {
    const std::string where = "avgpool #" + std::to_string(i) + " " + shapes[i].str();
    if (!guarded(sw, where, [&] { run_avgpool_shape(sw, shapes[i], static_cast<int>(i), seed); })) break;
    sw.shape_done();
  }
  sw.finish();
}

// ---------------------------------------------------------------------------------------------
// Dropout, the data gather, the optimizers: boundary sizes, bit for bit
// ---------------------------------------------------------------------------------------------

/// The CPU and CUDA dropout layers on one tensor: outputs and input gradients equal (the masks
/// are the same bit for bit), as CudaBackend.LinearReluPoolDropoutFlattenMatchCpu checks at one size.
void run_dropout_shape(Sweep& sw, const sweep::ElementwiseShape& s, int index, uint64_t seed) {
  DeviceContext& ctx = sw.ctx();
  const std::string where = "dropout #" + std::to_string(index) + " " + s.str();
  const uint64_t key = mix64(seed ^ (static_cast<uint64_t>(index) << 20));
  const double ps[] = {0.25, 0.5, 0.1, 0.9};
  const double p = ps[index % 4];
  LayerConfig c = dropout_config(p);
  const int layer_index = 3 + index % 5;
  const Dims d{s.c, s.h, s.w};
  const StepInfo step{0x9e37ull + static_cast<uint64_t>(index), static_cast<uint32_t>(index % 7),
                      static_cast<uint32_t>(index) * 1000u};
  const std::vector<float> x = randoms(static_cast<size_t>(s.elems()), key + 1),
                           dy = randoms(static_cast<size_t>(s.elems()), key + 2);
  std::vector<float> yc(x.size()), dxc(x.size());
  {
    DeviceContext cpu;
    auto l = make_layer<float>(c, layer_index, d, Device::Cpu);
    l->reserve(cpu, s.n);
    l->forward(cpu, cview(x, s.n, d), mview(yc, s.n, d), Phase::Train, step);
    l->backward(cpu, cview(x, s.n, d), cview(yc, s.n, d), cview(dy, s.n, d), mview(dxc, s.n, d));
  }
  auto l = make_layer<float>(c, layer_index, d, Device::Cuda);
  l->reserve(ctx, s.n);
  Buffer<float> gx = to_gpu(ctx, x), gdy = to_gpu(ctx, dy), gy = floats(x.size()), gdx = floats(x.size());
  sw.poison(gy.data(), x.size());
  sw.poison(gdx.data(), x.size());
  ctx.set_step(StepState{step, {}});
  l->forward(ctx, {gx.data(), s.n, d}, {gy.data(), s.n, d}, Phase::Train, step);
  l->backward(ctx, {gx.data(), s.n, d}, {gy.data(), s.n, d}, {gdy.data(), s.n, d}, {gdx.data(), s.n, d});
  ctx.set_step(StepState{kDropStep, {}});
  sw.ran();
  const std::string impl = "dropout (p " + std::to_string(p).substr(0, 4) + ")";
  sw.check_count(where, impl + " forward", mismatches(to_cpu(ctx, gy.data(), x.size()), yc), x.size());
  sw.check_count(where, impl + " backward", mismatches(to_cpu(ctx, gdx.data(), x.size()), dxc), x.size());
}

TEST_F(ShapeSweep, Dropout) {
  const uint64_t seed = sweep_seed(6);
  sweep::ElementwiseLimits lim;
  lim.max_elems = int64_t{1} << 24;
  const int count = sweep_count("DPTRAIN_SWEEP_DROPOUT", 24, 300);
  std::vector<sweep::ElementwiseShape> shapes = sweep::elementwise_shapes(seed, count, lim);
  // Either side of the forward's blocks (256 elements of a sample) and its grid (65535 samples),
  // and of the backward's capped grid (65535 * 16 blocks of 256: 268,431,360 elements; long mode).
  for (const sweep::ElementwiseShape& e :
       {sweep::ElementwiseShape{1, 1, 1, 1}, sweep::ElementwiseShape{1, 255, 1, 1}, sweep::ElementwiseShape{1, 256, 1, 1},
        sweep::ElementwiseShape{1, 257, 1, 1}, sweep::ElementwiseShape{3, 4097, 1, 1},
        sweep::ElementwiseShape{65535, 3, 1, 1}, sweep::ElementwiseShape{2, 1409, 243, 49}})  // 65535 * 256 + 3
    shapes.push_back(e);
  if (long_mode()) shapes.push_back(sweep::ElementwiseShape{64, 338, 12409, 1});  // 268,431,488 elements
  Sweep sw("dropout", seed);
  for (size_t i = 0; i < shapes.size(); ++i) {
    const std::string where = "dropout #" + std::to_string(i) + " " + shapes[i].str();
    if (!guarded(sw, where, [&] { run_dropout_shape(sw, shapes[i], static_cast<int>(i), seed); })) break;
    sw.shape_done();
  }
  sw.finish();
}

/// The CPU and CUDA batch sources on a synthetic dataset: the epoch's order (radix sort on the
/// device, std::sort on the host) and the normalised gather, bit for bit.
TEST_F(ShapeSweep, Gather) {
  const uint64_t seed = sweep_seed(7);
  struct Case {
    int count, rows, cols, first, batch;
    bool step;  ///< gather_step (the position read from the StepState) rather than gather
  };
  // Either side of 256-element blocks and of the gather's capped grid (65535 * 4 blocks of 256:
  // 67,107,840 elements; 90000 samples of 28 x 28 are 70,560,000).
  std::vector<Case> cases{{1, 1, 1, 0, 1, false},       {257, 5, 7, 0, 257, false},     {1000, 28, 28, 744, 256, false},
                          {1000, 28, 28, 100, 64, true}, {5000, 16, 16, 903, 4097, false}, {90000, 28, 28, 0, 90000, false}};
  if (long_mode()) cases.push_back({70000, 32, 32, 1, 65536, true});
  Sweep sw("gather", seed);
  DataConfig config;
  for (size_t ci = 0; ci < cases.size(); ++ci) {
    const Case& k = cases[ci];
    const std::string where = "gather #" + std::to_string(ci) + ": " + std::to_string(k.batch) + " of " +
                              std::to_string(k.count) + " samples of " + std::to_string(k.rows) + "x" +
                              std::to_string(k.cols) + " from position " + std::to_string(k.first) +
                              (k.step ? " (gather_step)" : "");
    const bool ok = guarded(sw, where, [&] {
      Dataset data;
      data.source = "synthetic";
      data.count = k.count;
      data.rows = k.rows;
      data.cols = k.cols;
      data.images.resize(static_cast<size_t>(k.count) * k.rows * k.cols);
      data.labels.resize(static_cast<size_t>(k.count));
      const uint64_t key = mix64(seed + ci);
      for (size_t i = 0; i < data.images.size(); ++i) data.images[i] = static_cast<uint8_t>(mix64(key ^ i) >> 56);
      for (size_t i = 0; i < data.labels.size(); ++i) data.labels[i] = static_cast<int32_t>(mix64(~key ^ i) % 10);
      DeviceContext cpu;
      DeviceContext& gpu = sw.ctx();
      auto hs = make_batch_source(data, config, true, cpu);
      auto gs = make_batch_source(data, config, true, gpu);
      const uint32_t epoch = static_cast<uint32_t>(ci * 3 + 1);
      hs->begin_epoch(seed, epoch);
      gs->begin_epoch(seed, epoch);
      const size_t nx = static_cast<size_t>(k.batch) * k.rows * k.cols;
      std::vector<float> xc(nx);
      std::vector<int32_t> yc(static_cast<size_t>(k.batch));
      Buffer<float> xg = floats(nx);
      Buffer<int32_t> yg(Device::Cuda, yc.size());
      sw.poison(xg.data(), nx);
      if (k.step) {
        const StepState state{{seed, epoch, static_cast<uint32_t>(k.first)}, {}};
        cpu.set_step(state);
        gpu.set_step(state);
        hs->gather_step(cpu, k.batch, xc.data(), yc.data());
        gs->gather_step(gpu, k.batch, xg.data(), yg.data());
      } else {
        hs->gather(cpu, k.first, k.batch, xc.data(), yc.data());
        gs->gather(gpu, k.first, k.batch, xg.data(), yg.data());
      }
      sw.ran();
      const std::vector<float> xh = to_cpu(gpu, xg.data(), nx);
      const std::vector<int32_t> yh = to_cpu(gpu, yg.data(), yc.size());
      gpu.set_step(StepState{kDropStep, {}});
      sw.check_count(where, "gather_normalize: pixels", mismatches(xh, xc), nx);
      size_t bad_labels = 0;
      for (size_t i = 0; i < yc.size(); ++i) bad_labels += yh[i] != yc[i];
      sw.check_count(where, "gather_normalize: labels", bad_labels, yc.size());
    });
    if (!ok) break;
    sw.shape_done();
  }
  sw.finish();
}

/// The CPU and CUDA optimizers over n elements, 3 steps with a rate that changes each step: equal
/// parameters and state bit for bit (test_optim_gpu.cpp checks 20 steps at a few sizes; this sweeps
/// the sizes: either side of the 256-thread blocks and of the kernels' capped grid of 65535 * 8
/// blocks, 134,215,680 elements).
TEST_F(ShapeSweep, Optimizers) {
  const uint64_t seed = sweep_seed(8);
  struct Case {
    std::string name;
    OptimizerConfig config;
  };
  std::vector<Case> configs;
  {
    OptimizerConfig sgd;
    sgd.type = "sgd";
    sgd.lr = 0.05;
    sgd.momentum = 0.9;
    sgd.dampening = 0.2;
    sgd.weight_decay = 1e-3;
    configs.push_back({"sgd momentum", sgd});
    for (const char* type : {"adam", "adamw"}) {
      OptimizerConfig adam;
      adam.type = type;
      adam.lr = 1e-3;
      adam.eps = 1e-8;
      adam.weight_decay = 0.01;
      configs.push_back({type, adam});
    }
    OptimizerConfig adadelta;
    adadelta.type = "adadelta";
    adadelta.lr = 1.0;
    configs.push_back({"adadelta", adadelta});
  }
  constexpr size_t kGridCap = size_t{65535} * 8 * 256;
  const std::vector<size_t> sizes{1, 3, 255, 256, 257, 1025, 65537, 1000003};
  Sweep sw("optimizers", seed);
  DeviceContext& gpu = sw.ctx();
  const auto run = [&](const Case& k, size_t n) {
    const std::string where = k.name + " over " + std::to_string(n) + " elements";
    const bool ok = guarded(sw, where, [&] {
      DeviceContext cpu;
      auto oc = make_optimizer(k.config, Device::Cpu, n);
      auto og = make_optimizer(k.config, Device::Cuda, n);
      std::vector<float> pc = randoms(n, seed + n, 0.1f);
      Buffer<float> pg = to_gpu(gpu, pc), gg = floats(n), scalars(Device::Cuda, sizeof(StepScalars) / sizeof(float));
      for (int t = 1; t <= 3; ++t) {
        const std::vector<float> grads = randoms(n, seed + n + 1000 * static_cast<uint64_t>(t));
        const StepScalars s = oc->scalars(k.config.lr * (1.0 - 0.1 * t), t);
        oc->step(cpu, std::span<float>(pc), std::span<const float>(grads), &s);
        upload(gpu, std::span<float>(gg.data(), n), std::span<const float>(grads));
        CUDA_CHECK(cudaMemcpyAsync(scalars.data(), &s, sizeof s, cudaMemcpyHostToDevice, sw.stream()));
        og->step(gpu, std::span<float>(pg.data(), n), std::span<const float>(gg.data(), n),
                 reinterpret_cast<const StepScalars*>(scalars.data()));
        CUDA_CHECK(cudaStreamSynchronize(sw.stream()));  // s lives on this iteration's stack
      }
      sw.ran();
      sw.check_count(where, k.name + ": parameters", mismatches(to_cpu(gpu, pg.data(), n), pc), n);
      for (size_t i = 0; i < oc->slot_names().size(); ++i) {
        const std::vector<float> want = to_cpu(cpu, oc->slot(i).data(), n), got = to_cpu(gpu, og->slot(i).data(), n);
        sw.check_count(where, k.name + ": " + oc->slot_names()[i], mismatches(got, want), n);
      }
    });
    if (ok) sw.shape_done();
    return ok;
  };
  bool ok = true;
  for (const Case& k : configs)
    for (size_t n : sizes)
      if (ok) ok = run(k, n);
  // Past the capped grid (every thread loops): SGD in the default mode, all of them in the long one.
  for (const Case& k : configs)
    if (ok && (long_mode() || k.name == "sgd momentum")) ok = run(k, kGridCap + 1);
  sw.finish();
}

// The reference kernels' guard (host code: runs without a GPU). The planner checks against them only
// where it admits the shape; ShapeSweep.Conv runs them wherever it does.
TEST(ConvReference, GuardAdmitsConsistentShapesWithinItsCost) {
  using G = kernels::ConvGeometry;
  EXPECT_TRUE(kernels::reference_conv_fits(G{256, 1, 28, 28, 24, 24, 24, 5, 1, 0}));   // mnist_fast's conv1
  EXPECT_TRUE(kernels::reference_conv_fits(G{1000, 32, 26, 26, 64, 24, 24, 3, 1, 0}));  // mnist_cnn's conv2, eval
  EXPECT_TRUE(kernels::reference_conv_fits(G{3, 5, 9, 7, 2, 3, 3, 3, 3, 1}));           // stride 3, pad 1
  EXPECT_FALSE(kernels::reference_conv_fits(G{256, 1, 28, 28, 24, 25, 24, 5, 1, 0}));  // oh inconsistent
  EXPECT_FALSE(kernels::reference_conv_fits(G{256, 1, 28, 28, 24, 24, 23, 5, 1, 0}));  // ow inconsistent
  EXPECT_FALSE(kernels::reference_conv_fits(G{1, 1, 2, 2, 1, 0, 0, 5, 1, 1}));         // kernel past the padded image
  EXPECT_FALSE(kernels::reference_conv_fits(G{0, 1, 28, 28, 24, 24, 24, 5, 1, 0}));    // empty batch
  EXPECT_FALSE(kernels::reference_conv_fits(G{8, 1, 28, 28, 24, 24, 24, 5, 0, 0}));    // stride 0
  EXPECT_FALSE(kernels::reference_conv_fits(G{8, 1, 28, 28, 24, 26, 26, 5, 1, -1}));   // negative padding
  // Past its cost (mnist_cnn's conv2 at batch 2048: 2.2e10 multiply-adds): cuDNN's implicit GEMM checks.
  const G big{2048, 32, 26, 26, 64, 24, 24, 3, 1, 0};
  EXPECT_GT(kernels::conv_multiply_adds(big), kernels::kReferenceConvMaxMultiplyAdds);
  EXPECT_FALSE(kernels::reference_conv_fits(big));
}

// The reference kernels' element math, run on the host (it compiles for both), against the CPU
// backend on seeded shapes of every family: padding past the kernel, strides to 3, kernels to 7,
// channels to 256 on tiny images. The index arithmetic the planner's checks rely on is proved here
// without a GPU; ShapeSweep.Conv runs the kernels themselves.
TEST(ConvReference, ElementMathMatchesTheCpuBackendOnSweptShapes) {
  const uint64_t seed = sweep_seed(7);
  int checked = 0;
  for (const sweep::ConvLimits& lim : {sweep::ConvLimits::small(), sweep::ConvLimits::small_wide()}) {
    const std::vector<sweep::ConvShape> shapes = sweep::conv_shapes(seed + checked, 48, lim);
    for (size_t i = 0; i < shapes.size(); ++i) {
      const ConvRef r = make_conv_ref(shapes[i], static_cast<int>(i), seed);
      SCOPED_TRACE(r.where);
      const kernels::ConvGeometry g = geometry(r.s);
      // Rounded to float once, as the kernels store them.
      std::vector<float> y(r.y.size()), dx(r.dx.size()), dw(r.dw.size()), db(r.db.size());
      for (size_t o = 0; o < y.size(); ++o)
        y[o] = static_cast<float>(kernels::reference_conv_output(r.x.data(), r.w.data(), r.b.data(), g, o));
      for (size_t o = 0; o < dx.size(); ++o)
        dx[o] = static_cast<float>(kernels::reference_conv_input_grad(r.dy.data(), r.w.data(), g, o));
      const size_t positions = size_t(g.n) * g.oh * g.ow;
      for (size_t o = 0; o < dw.size(); ++o) {
        double sum = 0;
        for (size_t j = 0; j < positions; ++j)
          sum += kernels::reference_conv_weight_grad_term(r.x.data(), r.dy.data(), g, o, j);
        dw[o] = static_cast<float>(sum);
      }
      for (size_t k = 0; k < db.size(); ++k) {
        double sum = 0;
        for (size_t j = 0; j < positions; ++j)
          sum += kernels::reference_conv_bias_grad_term(r.dy.data(), g, static_cast<int>(k), j);
        db[k] = static_cast<float>(sum);
      }
      EXPECT_LE(rel_host(y, r.y), 1e-5) << "forward";
      EXPECT_LE(rel_host(dx, r.dx), 1e-5) << "input gradient";
      EXPECT_LE(rel_host(dw, r.dw), 1e-5) << "filter gradient";
      EXPECT_LE(rel_host(db, r.db), 1e-5) << "bias gradient";
      ++checked;
    }
  }
  EXPECT_EQ(checked, 96);
}

}  // namespace
}  // namespace dptrain
