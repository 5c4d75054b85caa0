// The closed set of layer types, each with its CPU and CUDA implementation.
#include "layers/layer_factory.h"

#include <type_traits>

#include "core/error.h"
#include "cuda/cuda_layers.h"
#include "layers/cpu/cpu_layers.h"
#include "layers/layer_error.h"

namespace dptrain {

template <typename T>
std::unique_ptr<Layer<T>> make_layer(const LayerConfig& c, int index, Dims input, Device device) {
  if (device == Device::Cuda) {
    if constexpr (std::is_same_v<T, float>) return make_cuda_layer(c, index, input);
    else throw layer_error(index, c.name, "the CUDA backend computes in float32 only");
  }
  if (c.type == "conv2d") return make_conv2d_cpu<T>(c, index, input);
  if (c.type == "linear") return make_linear_cpu<T>(c, index, input);
  if (c.type == "maxpool2d") return make_maxpool2d_cpu<T>(c, index, input);
  if (c.type == "relu") return make_relu_cpu<T>(c, index, input);
  if (c.type == "dropout") return make_dropout_cpu<T>(c, index, input);
  if (c.type == "flatten") return make_flatten_cpu<T>(c, index, input);
  throw layer_error(index, c.name, "unknown layer type '" + c.type + "' (conv2d, relu, maxpool2d, dropout, flatten, linear)");
}

template <typename T>
std::unique_ptr<SoftmaxCrossEntropy<T>> make_softmax_cross_entropy(Device device) {
  if (device == Device::Cuda) {
    if constexpr (std::is_same_v<T, float>) return make_softmax_cross_entropy_cuda();
    else throw InputError("model", "the CUDA backend computes in float32 only");
  }
  return make_softmax_cross_entropy_cpu<T>();
}

template std::unique_ptr<Layer<float>> make_layer<float>(const LayerConfig&, int, Dims, Device);
template std::unique_ptr<Layer<double>> make_layer<double>(const LayerConfig&, int, Dims, Device);
template std::unique_ptr<SoftmaxCrossEntropy<float>> make_softmax_cross_entropy<float>(Device);
template std::unique_ptr<SoftmaxCrossEntropy<double>> make_softmax_cross_entropy<double>(Device);

}  // namespace dptrain
