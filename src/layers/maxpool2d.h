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
  MaxPool2dLayer(const LayerConfig& c, int index, Dims in)
      : Layer<T>(c.name, index, in), kernel_(c.kernel), stride_(c.stride == 0 ? c.kernel : c.stride), padding_(c.padding) {
    if (kernel_ <= 0) throw layer_error(index, c.name, "kernel must be > 0");
    if (stride_ <= 0) throw layer_error(index, c.name, "stride must be > 0");
    if (padding_ < 0 || 2 * padding_ > kernel_)
      throw layer_error(index, c.name, "padding must be between 0 and half the kernel");
    if (in.h + 2 * padding_ < kernel_ || in.w + 2 * padding_ < kernel_)
      throw layer_error(index, c.name, "kernel " + std::to_string(kernel_) + " does not fit the input " + to_string(in));
    this->set_output_dims(Dims{in.c, spec().pooled(in.h), spec().pooled(in.w)});
  }
  std::string_view type() const override { return "maxpool2d"; }
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
  int kernel_, stride_, padding_;
  bool absorbed_ = false;
};

}  // namespace dptrain
