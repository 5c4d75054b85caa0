// Evaluator: mean loss and accuracy of a model over a whole dataset in dataset order, in batches,
// with the model in Eval phase (dropout off). Reads the device once, at the end.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/buffer.h"
#include "core/device_context.h"
#include "data/dataset.h"
#include "io/config.h"
#include "model/model.h"
#include "train/batch_source.h"

namespace dptrain {

struct EvalResult {
  double loss = 0.0;      ///< mean cross-entropy per sample
  double accuracy = 0.0;  ///< fraction correct, 0..1
  int64_t count = 0;
  int64_t correct = 0;
};

class Evaluator {
 public:
  /// The batch an evaluator asked for `requested` runs on `data`: never more than the whole set.
  /// The model is sized for it before the evaluator is made.
  static int batch_for(int requested, const Dataset& data) {
    return static_cast<int>(std::min<int64_t>(requested, data.count));
  }

  Evaluator(const Dataset& data, const DataConfig& config, int batch_size, DeviceContext& ctx);
  /// The model must have been built with max_batch >= batch_size().
  EvalResult run(Model<float>& model, DeviceContext& ctx);
  int batch_size() const { return batch_; }
  /// The batch sizes run() passes to the model: batch_size(), and the last, shorter one if any.
  std::vector<int> batch_sizes() const;

 private:
  std::unique_ptr<BatchSource> source_;
  int batch_;
  Dims dims_;
  Buffer<float> x_;
  Buffer<int32_t> y_;
  Buffer<double> sums_;
};

}  // namespace dptrain
