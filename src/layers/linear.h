// LinearLayer: y = x W^T + b over the flattened input (PyTorch's nn.Linear: weight [out, in]).
#pragma once

#include "io/config.h"
#include "layers/layer.h"
#include "layers/layer_error.h"

namespace dptrain {

template <typename T>
class LinearLayer : public Layer<T> {
 public:
  LinearLayer(const LayerConfig& c, int index, Dims in)
      : Layer<T>(c.name, index, in), in_features_(static_cast<int>(in.count())), out_features_(c.out_features) {
    if (out_features_ <= 0) throw layer_error(index, c.name, "out_features must be > 0");
    this->set_output_dims(Dims{out_features_, 1, 1});
  }
  std::string_view type() const override { return "linear"; }
  std::vector<ParamSpec> param_specs() const override {
    return {{"weight", {out_features_, in_features_}, ParamInit::KaimingUniform, in_features_},
            {"bias", {out_features_}, ParamInit::FanInUniform, in_features_}};
  }
  int in_features() const { return in_features_; }
  int out_features() const { return out_features_; }

 private:
  int in_features_, out_features_;
};

}  // namespace dptrain
