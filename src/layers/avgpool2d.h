// AvgPoolLayer: average pooling, for two layer types of io/layer_types.cpp:
//  - avgpool2d: square windows, PyTorch's nn.AvgPool2d with its defaults (count_include_pad=True,
//    ceil_mode=False): floor output sizes, stride defaulting to the kernel, zero padding counted in
//    the divisor, which is therefore kernel^2 for every window;
//  - global_avgpool: one window over the whole plane, nn.AdaptiveAvgPool2d(1) (output C x 1 x 1).
// Both are one geometry (AvgPoolWindow), so the CPU and CUDA backends have one implementation each.
// Every backend sums a window in row-major order and then divides, and the backward gathers, per
// input element, the output gradients of the windows that hold it in output order and then
// divides: the same arithmetic on both backends, without atomics.
#pragma once

#include <string_view>

#include "io/config.h"
#include "layers/layer.h"
#include "layers/layer_error.h"

namespace dptrain {

/// Windows of kh x kw with one stride and one padding on both axes.
struct AvgPoolWindow {
  int kh = 1, kw = 1, stride = 1, pad = 0;
};

template <typename T>
class AvgPoolLayer : public Layer<T> {
 public:
  /// `type`: "avgpool2d" or "global_avgpool"; geometry, defaults and shape checks: its entry of
  /// io/layer_types.cpp.
  AvgPoolLayer(std::string_view type, const LayerConfig& c, int index, Dims in)
      : Layer<T>(c.name, index, in), type_(type) {
    const CheckedLayer checked = check_layer(type, c, index, in);
    window_ = type == "global_avgpool" ? AvgPoolWindow{in.h, in.w, 1, 0}
                                       : AvgPoolWindow{checked.config.kernel, checked.config.kernel,
                                                       checked.config.stride, checked.config.padding};
    this->set_output_dims(checked.output);
  }
  std::string_view type() const override { return type_; }
  const AvgPoolWindow& window() const { return window_; }

 private:
  std::string_view type_;  // one of the table's names (static storage)
  AvgPoolWindow window_;
};

}  // namespace dptrain
