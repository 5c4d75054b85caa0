#include "model/fused_train_step.h"

#include <string>

namespace dptrain {

namespace {

bool conv(const LayerConfig& l, int out, int kernel, int padding) {
  return l.type == "conv2d" && l.out_channels == out && l.kernel == kernel && (l.stride == 0 || l.stride == 1) &&
         l.padding == padding;
}
bool pool2(const LayerConfig& l) {
  return l.type == "maxpool2d" && l.kernel == 2 && (l.stride == 0 || l.stride == 2) && l.padding == 0;
}
bool linear(const LayerConfig& l, int out) { return l.type == "linear" && l.out_features == out; }
bool is(const LayerConfig& l, const char* type) { return l.type == type; }

}  // namespace

bool is_lenet5(const ModelConfig& c) {
  const auto& l = c.layers;
  return c.input == Dims{1, 28, 28} && c.num_classes == 10 && l.size() == 12 && conv(l[0], 6, 5, 2) &&
         is(l[1], "relu") && pool2(l[2]) && conv(l[3], 16, 5, 0) && is(l[4], "relu") && pool2(l[5]) &&
         is(l[6], "flatten") && linear(l[7], 120) && is(l[8], "relu") && linear(l[9], 84) && is(l[10], "relu") &&
         linear(l[11], 10);
}

std::unique_ptr<FusedTrainStep> make_fused_train_step(const ModelConfig& config, const std::vector<ParamEntry>& params,
                                                      DeviceContext& ctx, int max_batch, double label_smoothing) {
  if (!ctx.on_cuda()) return nullptr;
  if (is_lenet5(config)) return make_lenet5_train_step(params, max_batch, label_smoothing);
  return nullptr;
}

}  // namespace dptrain
