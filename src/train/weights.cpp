#include "train/weights.h"

#include <vector>

#include "core/device_ops.h"
#include "core/error.h"
#include "io/checkpoint.h"
#include "train/train_state.h"

namespace dptrain {

LoadedModel load_model(const std::string& path, DeviceContext& ctx, int max_batch) {
  const LoadedWeights weights = load_weights(path);  // validated: structure, checksums, format
  LoadedModel out;
  out.config = parse_config(weights.config_yaml, path + " (embedded config)");
  out.model = std::make_unique<Model<float>>(out.config.model, ctx, max_batch,
                                               out.config.train.label_smoothing);
  ParamStore<float>& params = out.model->params();
  std::vector<float> host(params.size(), 0.0f);
  for (const ParamEntry& e : params.entries())
    weights.copy_tensor(e.name, e.shape, std::span<float>(host).subspan(e.offset, e.count));
  upload(ctx, params.values().span(), std::span<const float>(host));
  restore_state_tensors(weights, ctx, out.model->state());  // batchnorm's running statistics
  return out;
}

}  // namespace dptrain
