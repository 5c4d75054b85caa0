// SGD, Adam/AdamW and Adadelta over the flat buffers: a loop on the CPU, a kernel on CUDA, the same
// update rule (core/update_rules.h) in both. The CPU loops of Adam and Adadelta are `omp simd`
// over local copies (their sqrt and division dominate); vector sqrt and division round exactly as
// the scalar ones, so the bits do not change.
#include <cmath>

#include "core/device_ops.h"
#include "core/error.h"
#include "optim/optimizer.h"
#include "core/update_rules.h"
#if DPTRAIN_HAVE_CUDA
#include "core/cuda_context.h"
#include "kernels/optimizer_kernels.h"
#endif

namespace dptrain {

namespace {

/// State slots of one optimizer, zero-initialised in the device's memory.
class Slots {
 public:
  Slots(Device device, size_t n, std::vector<std::string> names) : names_(std::move(names)) {
    for (size_t i = 0; i < names_.size(); ++i) {
      buffers_.emplace_back(device, n);
      buffers_.back().zero();
    }
  }
  const std::vector<std::string>& names() const { return names_; }
  Buffer<float>& operator[](size_t i) { return buffers_.at(i); }

 private:
  std::vector<std::string> names_;
  std::vector<Buffer<float>> buffers_;
};

#if DPTRAIN_HAVE_CUDA
cudaStream_t stream_of(DeviceContext& ctx, cudaStream_t stream) { return stream != nullptr ? stream : ctx.cuda().stream(); }

/// Elements [begin, end) of a flat buffer (a state slot, or null for none).
float* part(float* buffer, size_t begin) { return buffer != nullptr ? buffer + begin : nullptr; }
#endif

class Sgd final : public Optimizer {
 public:
  Sgd(const OptimizerConfig& c, Device d, size_t n)
      : h_{c.momentum != 0.0, static_cast<float>(c.dampening), static_cast<float>(c.weight_decay), c.nesterov},
        momentum_(c.momentum), slots_(d, n, c.momentum != 0.0 ? std::vector<std::string>{"momentum_buffer"} : std::vector<std::string>{}) {}
  std::string_view type() const override { return "sgd"; }
  std::vector<std::string> slot_names() const override { return slots_.names(); }
  Buffer<float>& slot(size_t i) override { return slots_[i]; }
  StepScalars scalars(double lr, int64_t t, std::optional<double> momentum) const override {
    StepScalars s;
    s.lr = static_cast<float>(lr);
    s.first_step = t == 1 ? 1.0f : 0.0f;
    s.momentum = static_cast<float>(momentum.value_or(momentum_));
    return s;
  }
  void update([[maybe_unused]] DeviceContext& ctx, std::span<float> p, std::span<const float> g, const StepScalars* s,
              size_t begin, size_t end, [[maybe_unused]] cudaStream_t stream) override {
    float* buf = h_.momentum ? slots_[0].data() : nullptr;
#if DPTRAIN_HAVE_CUDA
    if (ctx.on_cuda())
      return kernels::sgd_step(p.data() + begin, g.data() + begin, part(buf, begin), end - begin, h_, s,
                               stream_of(ctx, stream));
#endif
    const StepScalars sc = *s;
    float dummy = 0.0f;
#pragma omp parallel for schedule(static) firstprivate(dummy)
    for (size_t i = begin; i < end; ++i) rules::sgd(p[i], g[i], buf != nullptr ? buf[i] : dummy, h_, sc);
  }

 private:
  rules::SgdHyper h_;
  double momentum_;
  Slots slots_;
};

class Adam final : public Optimizer {
 public:
  Adam(const OptimizerConfig& c, Device d, size_t n, bool decoupled)
      : h_{static_cast<float>(c.beta2), static_cast<float>(c.eps), static_cast<float>(c.weight_decay), decoupled},
        beta1_(c.beta1), beta2_(c.beta2), slots_(d, n, {"exp_avg", "exp_avg_sq"}) {}
  std::string_view type() const override { return h_.decoupled ? "adamw" : "adam"; }
  std::vector<std::string> slot_names() const override { return slots_.names(); }
  Buffer<float>& slot(size_t i) override { return slots_[i]; }
  StepScalars scalars(double lr, int64_t t, std::optional<double> momentum) const override {
    // torch.optim.Adam: bias_correction1 = 1 - beta1 ** step with the group's current beta1 (in
    // double), the moment's lerp with beta1 as a float.
    const double beta1 = momentum.value_or(beta1_);
    StepScalars s;
    s.lr = static_cast<float>(lr);
    s.momentum = static_cast<float>(beta1);
    s.bias_correction1 = static_cast<float>(1.0 - std::pow(beta1, static_cast<double>(t)));
    s.bias_correction2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(beta2_, static_cast<double>(t))));
    return s;
  }
  void update([[maybe_unused]] DeviceContext& ctx, std::span<float> p, std::span<const float> g, const StepScalars* s,
              size_t begin, size_t end, [[maybe_unused]] cudaStream_t stream) override {
    float* m = slots_[0].data();
    float* v = slots_[1].data();
#if DPTRAIN_HAVE_CUDA
    if (ctx.on_cuda())
      return kernels::adam_step(p.data() + begin, g.data() + begin, m + begin, v + begin, end - begin, h_, s,
                                stream_of(ctx, stream));
#endif
    const StepScalars sc = *s;
    const rules::AdamHyper h = h_;
    float* pp = p.data();
    const float* gp = g.data();
#pragma omp parallel for simd schedule(static)
    for (size_t i = begin; i < end; ++i) rules::adam(pp[i], gp[i], m[i], v[i], h, sc);
  }

 private:
  rules::AdamHyper h_;
  double beta1_, beta2_;
  Slots slots_;
};

class Adadelta final : public Optimizer {
 public:
  Adadelta(const OptimizerConfig& c, Device d, size_t n)
      : h_{static_cast<float>(c.rho), static_cast<float>(c.eps), static_cast<float>(c.weight_decay)},
        slots_(d, n, {"square_avg", "acc_delta"}) {}
  std::string_view type() const override { return "adadelta"; }
  std::vector<std::string> slot_names() const override { return slots_.names(); }
  Buffer<float>& slot(size_t i) override { return slots_[i]; }
  StepScalars scalars(double lr, int64_t, std::optional<double>) const override {
    StepScalars s;
    s.lr = static_cast<float>(lr);
    return s;
  }
  void update([[maybe_unused]] DeviceContext& ctx, std::span<float> p, std::span<const float> g, const StepScalars* s,
              size_t begin, size_t end, [[maybe_unused]] cudaStream_t stream) override {
    float* sq = slots_[0].data();
    float* acc = slots_[1].data();
#if DPTRAIN_HAVE_CUDA
    if (ctx.on_cuda())
      return kernels::adadelta_step(p.data() + begin, g.data() + begin, sq + begin, acc + begin, end - begin, h_, s,
                                    stream_of(ctx, stream));
#endif
    const StepScalars sc = *s;
    const rules::AdadeltaHyper h = h_;
    float* pp = p.data();
    const float* gp = g.data();
#pragma omp parallel for simd schedule(static)
    for (size_t i = begin; i < end; ++i) rules::adadelta(pp[i], gp[i], sq[i], acc[i], h, sc);
  }

 private:
  rules::AdadeltaHyper h_;
  Slots slots_;
};

void check(bool ok, const char* key, const std::string& problem) {
  if (!ok) throw InputError(std::string("train.optimizer.") + key, problem);
}

}  // namespace

std::unique_ptr<Optimizer> make_optimizer(const OptimizerConfig& c, Device device, size_t n) {
  check(std::isfinite(c.lr) && c.lr >= 0, "lr", "must be >= 0");
  check(std::isfinite(c.weight_decay) && c.weight_decay >= 0, "weight_decay", "must be >= 0");
  if (c.type == "sgd") {
    check(c.momentum >= 0, "momentum", "must be >= 0");
    check(c.dampening >= 0 && c.dampening <= 1, "dampening", "must be in [0, 1]");
    check(!c.nesterov || (c.momentum > 0 && c.dampening == 0), "nesterov",
          "needs momentum > 0 and dampening 0 (as torch.optim.SGD)");
    return std::make_unique<Sgd>(c, device, n);
  }
  if (c.type == "adam" || c.type == "adamw") {
    check(c.beta1 >= 0 && c.beta1 < 1, "beta1", "must be in [0, 1)");
    check(c.beta2 >= 0 && c.beta2 < 1, "beta2", "must be in [0, 1)");
    check(c.eps > 0, "eps", "must be > 0");
    return std::make_unique<Adam>(c, device, n, c.type == "adamw");
  }
  if (c.type == "adadelta") {
    check(c.rho >= 0 && c.rho <= 1, "rho", "must be in [0, 1]");
    check(c.eps > 0, "eps", "must be > 0");
    return std::make_unique<Adadelta>(c, device, n);
  }
  throw InputError("train.optimizer.type", "unknown optimizer '" + c.type + "' (sgd, adam, adamw, adadelta)");
}

}  // namespace dptrain
