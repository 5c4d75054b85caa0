// LeNet-5's fused training pass (model/fused_train_step.h) on kernels/lenet5_step.h: the scratch for
// the largest batch, allocated once, and the model's parameter offsets.
#include <algorithm>
#include <array>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/buffer.h"
#include "core/cuda_context.h"
#include "kernels/lenet5_step.h"
#include "model/fused_train_step.h"

namespace dptrain {

namespace {

class Lenet5TrainStep final : public FusedTrainStep {
 public:
  Lenet5TrainStep(const std::vector<ParamEntry>& params, int max_batch, double label_smoothing)
      : max_batch_(std::min(max_batch, kernels::kLenet5MaxBatch)),
        label_smoothing_(static_cast<float>(label_smoothing)) {
    if (params.size() != kernels::kLenet5Tensors)
      throw std::logic_error("Lenet5TrainStep: " + std::to_string(params.size()) + " parameter tensors, not 10");
    for (size_t t = 0; t < params.size(); ++t) {
      if (params[t].count != static_cast<size_t>(kernels::kLenet5TensorSizes[t]))
        throw std::logic_error("Lenet5TrainStep: " + params[t].name + " has " + std::to_string(params[t].count) +
                               " elements");
      offsets_[t] = static_cast<int>(params[t].offset);
    }
    // Larger batches take the layered pass (fits): no scratch for them.
    const kernels::Lenet5ScratchSize size = kernels::lenet5_step_scratch(max_batch_);
    scratch_ = Buffer<float>(Device::Cuda, size.floats);
    scratch_bytes_ = Buffer<uint8_t>(Device::Cuda, size.bytes);
  }

  const char* name() const override { return "lenet5"; }
  bool fits(int n) const override { return n <= max_batch_ && kernels::lenet5_step_fits(n); }

  void run(DeviceContext& ctx, const float* params, const float* input, const int32_t* labels, int n, float grad_scale,
           float* grads, double* sums, const StepGather* gather) override {
    if (!fits(n))
      throw std::logic_error("Lenet5TrainStep: a batch of " + std::to_string(n) + " past its " +
                             std::to_string(max_batch_));
    kernels::Lenet5Step p{};
    p.params = params;
    p.offsets = offsets_;
    p.x = input;
    p.labels = labels;
    p.n = n;
    p.grad_scale = grad_scale;
    p.label_smoothing = label_smoothing_;
    p.grads = grads;
    p.sums = sums;
    p.scratch = scratch_.data();
    p.scratch_bytes = scratch_bytes_.data();
    if (gather != nullptr) p.gather = *gather;
    kernels::lenet5_step(p, ctx.cuda().stream());
  }

 private:
  int max_batch_;
  float label_smoothing_;
  std::array<int, kernels::kLenet5Tensors> offsets_{};
  Buffer<float> scratch_;
  Buffer<uint8_t> scratch_bytes_;
};

}  // namespace

std::unique_ptr<FusedTrainStep> make_lenet5_train_step(const std::vector<ParamEntry>& params, int max_batch,
                                                       double label_smoothing) {
  if (!kernels::lenet5_step_supported()) return nullptr;
  return std::make_unique<Lenet5TrainStep>(params, max_batch, label_smoothing);
}

}  // namespace dptrain
