// plan_fused_pass (model/fused_train_step.h): the fused training pass checked against the layered
// one, then timed against it, at each training batch size.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "core/buffer.h"
#include "core/cuda_check.h"
#include "core/cuda_context.h"
#include "core/device_ops.h"
#include "io/plan_cache.h"
#include "layers/cuda/graph_timer.h"
#include "model/fused_train_step.h"

namespace dptrain {

namespace {

// A batch of n samples in normalised MNIST's range and labels 0..9, the same for every n's prefix
// (a small linear congruential generator: planning should not spend its time drawing numbers).
void seeded_batch(int n, int sample_size, std::vector<float>& x, std::vector<int32_t>& y) {
  uint64_t state = 0x9E3779B97F4A7C15ull;
  const auto next = [&] {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<uint32_t>(state >> 33);
  };
  x.resize(static_cast<size_t>(n) * static_cast<size_t>(sample_size));
  y.resize(static_cast<size_t>(n));
  for (float& v : x) v = -0.42f + 3.2f * static_cast<float>(next()) / 2147483648.0f;
  for (int32_t& v : y) v = static_cast<int32_t>(next() % 10);
}

std::vector<float> gradients(DeviceContext& ctx, const float* grads, size_t size) {
  std::vector<float> host(size);
  download(ctx, std::span<const float>(grads, size), std::span<float>(host));
  return host;
}

}  // namespace

bool plan_fused_pass(DeviceContext& ctx, FusedTrainStep& fused, int n, Dims input, const float* params, float* grads,
                     std::span<const ParamEntry> entries, const LayeredPass& layered) {
  CudaContext& cu = ctx.cuda();
  const CudaOptions& o = cu.options();
  const std::string what = std::string(fused.name()) + " fused training pass at batch " + std::to_string(n);
  const std::string key = plan_key({{"op", "train_pass"},
                                    {"net", fused.name()},
                                    {"n", std::to_string(n)},
                                    {"precision", o.tf32 ? "tf32" : "float32"},
                                    {"deterministic", std::to_string(int(o.deterministic))},
                                    {"exact", std::to_string(int(o.exact_convolutions))},
                                    {"timed", std::to_string(int(o.cudnn_benchmark))}});
  PlanBook* book = ctx.plan_book();
  std::optional<bool> chosen;
  if (book != nullptr) {
    if (const std::optional<PlanRecord> r = book->find(key)) {
      if (r->impl == "fused" || r->impl == "layered") {
        chosen = r->impl == "fused";
      } else {
        cu.warn(what + ": the recorded plan names '" + r->impl + "' (stale); planned afresh");
        book->erase(key);
      }
    } else if (book->fixed) {
      cu.warn(what + ": not in " + book->source + "; planned here");
    }
  }
  const auto record = [&](bool fused_chosen) {
    if (book != nullptr) book->put(key, PlanRecord{fused_chosen ? "fused" : "layered", 0, 0});
    return fused_chosen;
  };
  if (chosen == false) return record(false);

  std::vector<float> hx;
  std::vector<int32_t> hy;
  seeded_batch(n, static_cast<int>(input.count()), hx, hy);
  Buffer<float> x(Device::Cuda, hx.size());
  Buffer<int32_t> y(Device::Cuda, hy.size());
  Buffer<double> sums(Device::Cuda, 2);
  x.copy_from_host(hx);
  y.copy_from_host(hy);
  const size_t size = entries.empty() ? 0 : entries.back().offset + entries.back().count;

  // The check: each tensor's gradient from the fused pass against the layered pass's.
  layered(x.data(), y.data(), sums.data());
  const std::vector<float> want = gradients(ctx, grads, size);
  fused.run(ctx, params, x.data(), y.data(), n, 1.0f / static_cast<float>(n), grads, sums.data(), nullptr);
  const std::vector<float> got = gradients(ctx, grads, size);
  const double limit = o.tf32 ? 2e-2 : 1e-3;
  for (const ParamEntry& e : entries) {
    double diff = 0, norm = 0;
    for (size_t i = e.offset; i < e.offset + e.count; ++i) {
      diff += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
      norm += double(want[i]) * want[i];
    }
    const double rel = std::sqrt(diff / std::max(norm, 1e-30));
    if (!(rel <= limit)) {
      char line[160];
      std::snprintf(line, sizeof line,
                    ": the gradient of %s differs from the layered pass's by %.3g (limit %.0e); not used",
                    e.name.c_str(), rel, limit);
      cu.warn(what + line);
      return record(false);
    }
  }
  if (chosen) return record(true);
  if (!o.cudnn_benchmark) return record(true);  // dptrain's own kernels first, as the convolutions' planner does
  cudaStream_t stream = cu.stream();
  double layered_us = 0, fused_us = 0;
  try {
    layered_us = graph_time_us(stream, [&] { layered(x.data(), y.data(), sums.data()); });
    fused_us = graph_time_us(stream, [&] {
      fused.run(ctx, params, x.data(), y.data(), n, 1.0f / static_cast<float>(n), grads, sums.data(), nullptr);
    });
  } catch (const CudaError& e) {
    cu.warn(what + ": could not be timed (" + e.what() + "); the layered pass runs");
    return record(false);
  }
  const bool fused_wins = fused_us < layered_us;
  char line[200];
  std::snprintf(line, sizeof line, "train pass %s batch %d: fused %.1f us, layered %.1f us -> %s", fused.name(), n,
                fused_us, layered_us, fused_wins ? "fused" : "layered");
  cu.note_choice(line);
  return record(fused_wins);
}

}  // namespace dptrain
