#include "train/weights.h"

#include <cstring>
#include <vector>

#include "core/device_ops.h"
#include "core/error.h"
#include "io/checkpoint.h"

namespace dptrain {

namespace {

std::string shape_text(const std::vector<int64_t>& s) {
  std::string t = "[";
  for (size_t i = 0; i < s.size(); ++i) {
    if (i > 0) t += ',';
    t += std::to_string(s[i]);
  }
  return t + "]";
}

}  // namespace

LoadedModel load_model(const std::string& path, DeviceContext& ctx, int max_batch) {
  const SafeTensorsFile file = load_weights(path);
  const auto cfg = file.metadata.find("config");
  if (cfg == file.metadata.end()) throw InputError(path, "no 'config' in the metadata: not a dptrain weights file");
  LoadedModel out;
  out.config = parse_config(cfg->second, path + " (embedded config)");
  out.model = std::make_unique<Model<float>>(out.config.model, ctx, max_batch);
  ParamStore<float>& params = out.model->params();
  std::vector<float> host(params.size(), 0.0f);
  for (const ParamEntry& e : params.entries()) {
    const SafeTensor* t = file.find(e.name);
    if (t == nullptr) throw InputError(path, "tensor '" + e.name + "' is missing");
    if (t->dtype != "F32") throw InputError(path, "tensor '" + e.name + "' has dtype " + t->dtype + ", expected F32");
    if (t->shape != e.shape)
      throw InputError(path, "tensor '" + e.name + "' has shape " + shape_text(t->shape) + ", the model needs " +
                                 shape_text(e.shape));
    std::memcpy(host.data() + e.offset, t->data.data(), e.count * sizeof(float));
  }
  upload(ctx, params.values().span(), std::span<const float>(host));
  return out;
}

}  // namespace dptrain
