#include "train/evaluator.h"

#include <algorithm>
#include <array>
#include <cmath>

#include "core/device_ops.h"

namespace dptrain {

Evaluator::Evaluator(const Dataset& data, const DataConfig& config, int batch_size, DeviceContext& ctx)
    : source_(make_batch_source(data, config, /*shuffle=*/false, ctx)),
      batch_(batch_for(batch_size, data)),
      dims_{1, data.rows, data.cols},
      x_(ctx.device(), static_cast<size_t>(batch_) * data.rows * data.cols),
      y_(ctx.device(), static_cast<size_t>(batch_)),
      sums_(ctx.device(), 2) {}

std::vector<int> Evaluator::batch_sizes() const {
  const int64_t count = source_->size();
  std::vector<int> sizes;
  if (batch_ > 0) sizes.push_back(batch_);
  if (batch_ > 0 && count % batch_ != 0) sizes.push_back(static_cast<int>(count % batch_));
  return sizes;
}

EvalResult Evaluator::run(Model<float>& model, DeviceContext& ctx) {
  source_->begin_epoch(0, 0);
  zero_async(ctx, sums_.span());
  const int64_t n = source_->size();
  for (int64_t first = 0; first < n; first += batch_) {
    const int count = static_cast<int>(std::min<int64_t>(batch_, n - first));
    source_->gather(ctx, first, count, x_.data(), y_.data());
    model.forward(ctx, TensorView<const float>{x_.data(), count, dims_}, Phase::Eval, StepInfo{});
    model.loss(ctx, y_.data(), 1.0f, sums_.data(), /*backward=*/false, nullptr);
  }
  std::array<double, 2> host{};
  download(ctx, std::span<const double>(sums_.span()), std::span<double>(host));
  EvalResult r;
  r.count = n;
  r.correct = std::llround(host[1]);
  r.loss = n > 0 ? host[0] / static_cast<double>(n) : 0.0;
  r.accuracy = n > 0 ? static_cast<double>(r.correct) / static_cast<double>(n) : 0.0;
  return r;
}

}  // namespace dptrain
