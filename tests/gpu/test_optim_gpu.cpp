// CUDA optimizer kernels against the CPU loop: every optimizer, 20 steps on random data with a
// rate that changes each step, must give bitwise-equal parameters and state (both apply the
// shared rules of core/update_rules.h with explicitly rounded float ops). Covers the float4 path
// with a tail, the unaligned scalar path, and a captured CUDA graph replayed with new scalars.
#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/cuda_check.h"
#include "core/cuda_context.h"
#include "core/cuda_raii.h"
#include "optim/optimizer.h"

namespace dptrain {
namespace {

constexpr int kSteps = 20;

struct Case {
  std::string name;
  OptimizerConfig config;
  bool cycled = false;  ///< momentum / beta1 given every step (onecycle's cycle_momentum)
};

std::vector<Case> cases() {
  std::vector<Case> out;
  auto add = [&](const std::string& name, auto&& set) {
    OptimizerConfig c;
    set(c);
    out.push_back({name, c});
  };
  add("sgd", [](OptimizerConfig& c) { c.type = "sgd"; c.lr = 0.1; });
  add("sgd_momentum_dampening_wd", [](OptimizerConfig& c) {
    c.type = "sgd"; c.lr = 0.05; c.momentum = 0.9; c.dampening = 0.2; c.weight_decay = 1e-3; });
  add("sgd_nesterov", [](OptimizerConfig& c) { c.type = "sgd"; c.lr = 0.05; c.momentum = 0.8; c.nesterov = true; });
  add("adam", [](OptimizerConfig& c) { c.type = "adam"; c.lr = 1e-3; c.eps = 1e-8; });
  add("adam_wd_low_beta1", [](OptimizerConfig& c) {
    c.type = "adam"; c.lr = 1e-3; c.eps = 1e-8; c.weight_decay = 0.01; c.beta1 = 0.3; });
  add("adamw", [](OptimizerConfig& c) { c.type = "adamw"; c.lr = 1e-3; c.eps = 1e-8; c.weight_decay = 0.01; });
  add("adadelta", [](OptimizerConfig& c) { c.type = "adadelta"; c.lr = 1.0; });
  add("adadelta_wd", [](OptimizerConfig& c) { c.type = "adadelta"; c.lr = 0.5; c.rho = 0.95; c.weight_decay = 0.01; });
  add("sgd_cycled_momentum", [](OptimizerConfig& c) { c.type = "sgd"; c.lr = 0.05; c.momentum = 0.95; c.weight_decay = 1e-3; });
  out.back().cycled = true;
  add("adam_cycled_beta1", [](OptimizerConfig& c) { c.type = "adam"; c.lr = 1e-3; c.eps = 1e-8; c.beta1 = 0.95; });
  out.back().cycled = true;
  return out;
}

/// Distance in units in the last place between two floats (0 for bitwise equal).
int64_t ulp_distance(float a, float b) {
  int32_t ia, ib;
  std::memcpy(&ia, &a, 4);
  std::memcpy(&ib, &b, 4);
  // Map the sign-magnitude encoding onto a monotonic integer line.
  const int64_t la = ia < 0 ? int64_t{INT32_MIN} - ia : ia;
  const int64_t lb = ib < 0 ? int64_t{INT32_MIN} - ib : ib;
  return la > lb ? la - lb : lb - la;
}

/// Largest ulp distance over two arrays; also counts bitwise differences.
int64_t max_ulp(const std::vector<float>& a, const std::vector<float>& b, size_t* differing) {
  int64_t worst = 0;
  *differing = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::memcmp(&a[i], &b[i], 4) != 0) ++*differing;
    worst = std::max(worst, ulp_distance(a[i], b[i]));
  }
  return worst;
}

std::vector<float> to_host(const Buffer<float>& b, size_t offset = 0, size_t count = SIZE_MAX) {
  std::vector<float> all(b.size());
  b.copy_to_host(all);
  if (count == SIZE_MAX) count = all.size() - offset;
  return {all.begin() + static_cast<std::ptrdiff_t>(offset), all.begin() + static_cast<std::ptrdiff_t>(offset + count)};
}

class OptimGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    ctx_ = std::make_unique<DeviceContext>(std::make_unique<CudaContext>(CudaOptions{}));
    scalars_dev_ = Buffer<float>(Device::Cuda, sizeof(StepScalars) / sizeof(float));
  }

  cudaStream_t stream() const { return ctx_->cuda().stream(); }

  void upload_scalars(const StepScalars& s) {
    CUDA_CHECK(cudaMemcpyAsync(scalars_dev_.data(), &s, sizeof s, cudaMemcpyHostToDevice, stream()));
  }
  const StepScalars* scalars_dev() const { return reinterpret_cast<const StepScalars*>(scalars_dev_.data()); }

  /// Runs `c` for kSteps on CPU and CUDA over n elements starting `offset` floats into the
  /// buffers (offset 1 makes the CUDA pointers unaligned), graph-captured on CUDA if asked, and
  /// requires bitwise-equal parameters and state.
  void compare(const Case& k, size_t n, size_t offset, bool graph) {
    SCOPED_TRACE(k.name + " n=" + std::to_string(n) + " offset=" + std::to_string(offset) +
                 (graph ? " graph" : ""));
    std::mt19937 rng(1234);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    const size_t total = n + offset;
    std::vector<float> p0(total);
    for (size_t i = 0; i < total; ++i) p0[i] = 0.1f * normal(rng);
    // A run of padding: zero weight, zero gradient (must stay zero on both devices).
    for (size_t i = offset; i < offset + std::min<size_t>(n, 37); ++i) p0[i] = 0.0f;

    DeviceContext cpu_ctx;
    auto cpu = make_optimizer(k.config, Device::Cpu, n);
    auto gpu = make_optimizer(k.config, Device::Cuda, n);
    std::vector<float> cpu_params = p0;
    Buffer<float> gpu_params(Device::Cuda, total);
    Buffer<float> gpu_grads(Device::Cuda, total);
    gpu_params.copy_from_host(p0);
    const std::span<float> gpu_p = gpu_params.span().subspan(offset, n);
    const std::span<const float> gpu_g = std::span<const float>(gpu_grads.span()).subspan(offset, n);

    CudaGraphExec exec;
    std::vector<float> grads(total, 0.0f);
    for (int t = 1; t <= kSteps; ++t) {
      for (size_t i = offset + std::min<size_t>(n, 37); i < total; ++i) grads[i] = normal(rng);
      // A rate that changes every step: a stale value read by the kernel would show.
      // and, when cycled, a momentum / beta1 that changes every step too (read from the scalars).
      const double lr = k.config.lr * (1.0 - 0.03 * t);
      const StepScalars s = k.cycled ? cpu->scalars(lr, t, 0.95 - 0.005 * t) : cpu->scalars(lr, t);
      cpu->step(cpu_ctx, std::span<float>(cpu_params).subspan(offset, n),
                std::span<const float>(grads).subspan(offset, n), &s);

      CUDA_CHECK(cudaMemcpyAsync(gpu_grads.data(), grads.data(), total * sizeof(float), cudaMemcpyHostToDevice,
                                 stream()));
      upload_scalars(s);
      if (!graph) {
        gpu->step(*ctx_, gpu_p, gpu_g, scalars_dev());
      } else {
        if (t == 1) {
          cudaGraph_t g = nullptr;
          CUDA_CHECK(cudaStreamBeginCapture(stream(), cudaStreamCaptureModeThreadLocal));
          gpu->step(*ctx_, gpu_p, gpu_g, scalars_dev());
          CUDA_CHECK(cudaStreamEndCapture(stream(), &g));
          CudaGraph owned(g);
          cudaGraphExec_t e = nullptr;
          CUDA_CHECK(cudaGraphInstantiate(&e, owned.get(), 0));
          exec = CudaGraphExec(e);
        }
        CUDA_CHECK(cudaGraphLaunch(exec.get(), stream()));
      }
      CUDA_CHECK(cudaStreamSynchronize(stream()));  // the host grads/scalars are rewritten next step
    }

    size_t differing = 0;
    const int64_t worst_p =
        max_ulp(std::vector<float>(cpu_params.begin() + static_cast<std::ptrdiff_t>(offset), cpu_params.end()),
                to_host(gpu_params, offset, n), &differing);
    EXPECT_EQ(differing, 0u) << "params differ; max " << worst_p << " ulp";
    RecordProperty(k.name + "_params_max_ulp", std::to_string(worst_p));
    for (size_t i = 0; i < cpu->slot_names().size(); ++i) {
      const int64_t worst = max_ulp(to_host(cpu->slot(i)), to_host(gpu->slot(i)), &differing);
      EXPECT_EQ(differing, 0u) << cpu->slot_names()[i] << " differs; max " << worst << " ulp";
    }
    const std::vector<float> moved = to_host(gpu_params, offset, n);
    EXPECT_NE(moved.back(), p0.back()) << "the update did run";
    for (size_t i = 0; i < std::min<size_t>(n, 37); ++i) ASSERT_EQ(moved[i], 0.0f) << "padding " << i;
  }

  std::unique_ptr<DeviceContext> ctx_;
  Buffer<float> scalars_dev_;
};

TEST_F(OptimGpu, AlignedFloat4PathWithTailMatchesCpuBitwise) {
  for (const Case& k : cases()) compare(k, 10007, 0, false);  // 10007 = 4 * 2501 + 3: float4 body and tail
}

TEST_F(OptimGpu, UnalignedScalarPathMatchesCpuBitwise) {
  for (const Case& k : cases()) compare(k, 4099, 1, false);
}

TEST_F(OptimGpu, LargeGridStrideMatchesCpuBitwise) {
  // More float4s than threads in the capped grid (2048 blocks * 256): every thread loops.
  for (const Case& k : cases())
    if (k.name == "adam" || k.name == "sgd_momentum_dampening_wd") compare(k, (size_t{1} << 22) + 5, 0, false);
}

TEST_F(OptimGpu, CapturedGraphReadsNewScalarsEveryReplay) {
  for (const Case& k : cases()) compare(k, 1031, 0, true);
}

TEST_F(OptimGpu, EmptyBufferLaunchesNothing) {
  OptimizerConfig c;
  c.type = "adam";
  c.eps = 1e-8;
  auto opt = make_optimizer(c, Device::Cuda, 0);
  upload_scalars(opt->scalars(1e-3, 1));
  EXPECT_NO_THROW(opt->step(*ctx_, {}, {}, scalars_dev()));
  CUDA_CHECK(cudaStreamSynchronize(stream()));
}

}  // namespace
}  // namespace dptrain
