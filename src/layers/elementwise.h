// The shape-preserving layers: ReLU, Dropout and Flatten (which keeps the values and reshapes
// C x H x W to (C*H*W) x 1 x 1).
//
// Dropout keeps element e of global sample s with probability 1 - p, decided by
// philox::dropout_uniform(seed, epoch, layer index, s, e) >= p, and scales kept values by
// 1 / (1 - p) (PyTorch's inverted dropout); in Eval it is the identity. Every backend uses that
// rule, so masks agree across backends, rank counts and resumed runs.
#pragma once

#include "io/config.h"
#include "layers/layer.h"
#include "layers/layer_error.h"

namespace dptrain {

template <typename T>
class ReluLayer : public Layer<T> {
 public:
  static constexpr std::string_view kType = "relu";
  ReluLayer(const LayerConfig& c, int index, Dims in) : Layer<T>(c.name, index, in) {
    this->set_output_dims(check_layer(kType, c, index, in).output);
  }
  std::string_view type() const override { return kType; }
  bool is_view() const override { return absorbed_; }
  /// The layer before applies this ReLU (Layer::absorb_following_relu): forward and backward do nothing.
  void mark_absorbed() { absorbed_ = true; }
  bool absorbed() const { return absorbed_; }

 private:
  bool absorbed_ = false;
};

template <typename T>
class DropoutLayer : public Layer<T> {
 public:
  static constexpr std::string_view kType = "dropout";
  /// p's range: the "dropout" entry of io/layer_types.cpp.
  DropoutLayer(const LayerConfig& c, int index, Dims in) : Layer<T>(c.name, index, in) {
    const CheckedLayer checked = check_layer(kType, c, index, in);
    p_ = checked.config.p;
    this->set_output_dims(checked.output);
  }
  std::string_view type() const override { return kType; }
  double p() const { return p_; }
  /// The factor applied to kept elements.
  T scale() const { return static_cast<T>(1.0 / (1.0 - p_)); }
  bool is_view() const override { return absorbed_; }
  /// The layer before applies this dropout (Layer::absorb_following_dropout): forward and backward
  /// do nothing.
  void mark_absorbed() { absorbed_ = true; }
  bool absorbed() const { return absorbed_; }
  DropoutSpec spec() const {
    return {static_cast<float>(p_), static_cast<float>(scale()), this->index()};
  }

 private:
  double p_ = 0.0;
  bool absorbed_ = false;
};

template <typename T>
class FlattenLayer : public Layer<T> {
 public:
  static constexpr std::string_view kType = "flatten";
  FlattenLayer(const LayerConfig& c, int index, Dims in) : Layer<T>(c.name, index, in) {
    this->set_output_dims(check_layer(kType, c, index, in).output);
  }
  std::string_view type() const override { return kType; }
  bool is_view() const override { return true; }
};

}  // namespace dptrain
