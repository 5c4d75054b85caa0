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
  Conv2dLayer(const LayerConfig& c, int index, Dims in)
      : Layer<T>(c.name, index, in), out_channels_(c.out_channels), kernel_(c.kernel),
        stride_(c.stride == 0 ? 1 : c.stride), padding_(c.padding) {
    if (out_channels_ <= 0) throw layer_error(index, c.name, "out_channels must be > 0");
    if (kernel_ <= 0) throw layer_error(index, c.name, "kernel must be > 0");
    if (stride_ <= 0) throw layer_error(index, c.name, "stride must be > 0");
    if (padding_ < 0) throw layer_error(index, c.name, "padding must be >= 0");
    const int oh = (in.h + 2 * padding_ - kernel_) / stride_ + 1;
    const int ow = (in.w + 2 * padding_ - kernel_) / stride_ + 1;
    if (in.h + 2 * padding_ < kernel_ || in.w + 2 * padding_ < kernel_ || oh <= 0 || ow <= 0)
      throw layer_error(index, c.name, "kernel " + std::to_string(kernel_) + " does not fit the input " +
                                           to_string(in) + " with padding " + std::to_string(padding_));
    this->set_output_dims(Dims{out_channels_, oh, ow});
  }
  std::string_view type() const override { return "conv2d"; }
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
  int out_channels_, kernel_, stride_, padding_;
};

}  // namespace dptrain
