#include "train/weights.h"

#include <span>
#include <vector>

#include "core/device_ops.h"
#include "core/error.h"
#include "io/checkpoint.h"
#include "io/checkpoint_validation.h"
#include "train/train_state.h"

namespace dptrain {

WeightsFile read_weights_file(const std::string& path) {
  WeightsFile file{load_weights(path), Config{}};  // validated: structure, checksums, format
  file.config = parse_config(file.weights.config_yaml, path + " (embedded config)");
  return file;
}

LoadedModel load_model(const std::string& path, DeviceContext& ctx, int max_batch, bool forward_only) {
  return build_model(read_weights_file(path), ctx, max_batch, forward_only);
}

LoadedModel build_model(const WeightsFile& file, DeviceContext& ctx, int max_batch, bool forward_only) {
  const LoadedWeights& weights = file.weights;
  LoadedModel out;
  out.config = file.config;
  out.model = std::make_unique<Model<float>>(out.config.model, ctx, max_batch, out.config.train.label_smoothing,
                                             /*with_backward=*/!forward_only);
  ParamStore<float>& params = out.model->params();
  std::vector<float> host(params.size(), 0.0f);
  for (const ParamEntry& e : params.entries()) {
    const std::span<float> values = std::span<float>(host).subspan(e.offset, e.count);
    weights.copy_tensor(e.name, e.shape, values);
    // Evaluated, such weights would give chance accuracy without a word.
    if (const auto problem = non_finite_weights_problem(e.name, values)) throw InputError(weights.path, *problem);
  }
  upload(ctx, params.values().span(), std::span<const float>(host));
  restore_state_tensors(weights, ctx, out.model->state());  // batchnorm's running statistics
  return out;
}

}  // namespace dptrain
