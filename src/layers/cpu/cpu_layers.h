// The CPU reference backend's layers and loss, for float (training) and double (gradient checks).
#pragma once

#include <memory>

#include "io/config.h"
#include "layers/layer.h"
#include "layers/softmax_cross_entropy.h"

namespace dptrain {

template <typename T> std::unique_ptr<Layer<T>> make_conv2d_cpu(const LayerConfig& c, int index, Dims in);
template <typename T> std::unique_ptr<Layer<T>> make_linear_cpu(const LayerConfig& c, int index, Dims in);
template <typename T> std::unique_ptr<Layer<T>> make_avgpool2d_cpu(const LayerConfig& c, int index, Dims in);
template <typename T> std::unique_ptr<Layer<T>> make_global_avgpool_cpu(const LayerConfig& c, int index, Dims in);
template <typename T> std::unique_ptr<Layer<T>> make_maxpool2d_cpu(const LayerConfig& c, int index, Dims in);
template <typename T> std::unique_ptr<Layer<T>> make_relu_cpu(const LayerConfig& c, int index, Dims in);
template <typename T> std::unique_ptr<Layer<T>> make_dropout_cpu(const LayerConfig& c, int index, Dims in);
template <typename T> std::unique_ptr<Layer<T>> make_flatten_cpu(const LayerConfig& c, int index, Dims in);
template <typename T> std::unique_ptr<SoftmaxCrossEntropy<T>> make_softmax_cross_entropy_cpu(double label_smoothing);
template <typename T> std::unique_ptr<Layer<T>> make_batchnorm2d_cpu(const LayerConfig& c, int index, Dims in);
template <typename T> std::unique_ptr<Layer<T>> make_batchnorm1d_cpu(const LayerConfig& c, int index, Dims in);

}  // namespace dptrain
