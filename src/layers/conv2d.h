// Conv2dLayer: square-kernel 2-D convolution with bias, PyTorch's nn.Conv2d layout (weight
// [out, in, k, k], bias [out]). This base holds the geometry; backends implement the arithmetic.
#pragma once

#include "io/config.h"
#include "layers/layer.h"
#include "layers/layer_error.h"

namespace dptrain {

template <typename T>
class Conv2dLayer : public Layer<T> {
 public:
  static constexpr std::string_view kType = "conv2d";
  /// Geometry, defaults and shape checks: the "conv2d" entry of io/layer_types.cpp.
  Conv2dLayer(const LayerConfig& c, int index, Dims in) : Layer<T>(c.name, index, in) {
    const CheckedLayer checked = check_layer(kType, c, index, in);
    out_channels_ = checked.config.out_channels;
    kernel_ = checked.config.kernel;
    stride_ = checked.config.stride;
    padding_ = checked.config.padding;
    this->set_output_dims(checked.output);
  }
  std::string_view type() const override { return kType; }
  std::vector<ParamSpec> param_specs() const override {
    const int64_t fan_in = int64_t{this->input_dims().c} * kernel_ * kernel_;
    return {{"weight", {out_channels_, this->input_dims().c, kernel_, kernel_}, ParamInit::KaimingUniform, fan_in},
            {"bias", {out_channels_}, ParamInit::FanInUniform, fan_in}};
  }
  int out_channels() const { return out_channels_; }
  int kernel() const { return kernel_; }
  int stride() const { return stride_; }
  int padding() const { return padding_; }

 private:
  int out_channels_ = 0, kernel_ = 0, stride_ = 0, padding_ = 0;
};

}  // namespace dptrain
