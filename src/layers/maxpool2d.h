// MaxPool2dLayer: square-window max pooling, PyTorch's nn.MaxPool2d (floor output size, stride
// defaulting to the kernel, padding read as -infinity). The gradient goes to the first maximum of
// each window in row-major order, as PyTorch's CPU kernel does.
#pragma once

#include "io/config.h"
#include "layers/layer.h"
#include "layers/layer_error.h"

namespace dptrain {

template <typename T>
class MaxPool2dLayer : public Layer<T> {
 public:
  static constexpr std::string_view kType = "maxpool2d";
  /// Geometry, defaults and shape checks: the "maxpool2d" entry of io/layer_types.cpp.
  MaxPool2dLayer(const LayerConfig& c, int index, Dims in) : Layer<T>(c.name, index, in) {
    const CheckedLayer checked = check_layer(kType, c, index, in);
    kernel_ = checked.config.kernel;
    stride_ = checked.config.stride;
    padding_ = checked.config.padding;
    this->set_output_dims(checked.output);
  }
  std::string_view type() const override { return kType; }
  int kernel() const { return kernel_; }
  int stride() const { return stride_; }
  int padding() const { return padding_; }
  PoolSpec spec() const { return {kernel_, stride_, padding_}; }
  bool is_view() const override { return absorbed_; }
  /// The layer before applies this pooling (Layer::absorb_following_pool): forward and backward do
  /// nothing.
  void mark_absorbed() { absorbed_ = true; }
  bool absorbed() const { return absorbed_; }

 private:
  int kernel_ = 0, stride_ = 0, padding_ = 0;
  bool absorbed_ = false;
};

}  // namespace dptrain
