// LinearLayer: y = x W^T + b over the flattened input (PyTorch's nn.Linear: weight [out, in]).
#pragma once

#include "io/config.h"
#include "layers/layer.h"
#include "layers/layer_error.h"

namespace dptrain {

template <typename T>
class LinearLayer : public Layer<T> {
 public:
  static constexpr std::string_view kType = "linear";
  /// Shape checks: the "linear" entry of io/layer_types.cpp.
  LinearLayer(const LayerConfig& c, int index, Dims in)
      : Layer<T>(c.name, index, in), in_features_(static_cast<int>(in.count())) {
    const CheckedLayer checked = check_layer(kType, c, index, in);
    out_features_ = checked.config.out_features;
    this->set_output_dims(checked.output);
  }
  std::string_view type() const override { return kType; }
  std::vector<ParamSpec> param_specs() const override {
    return {{"weight", {out_features_, in_features_}, ParamInit::KaimingUniform, in_features_},
            {"bias", {out_features_}, ParamInit::FanInUniform, in_features_}};
  }
  int in_features() const { return in_features_; }
  int out_features() const { return out_features_; }

 private:
  int in_features_, out_features_ = 0;
};

}  // namespace dptrain
