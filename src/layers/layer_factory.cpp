// The factories' dispatch: the CPU makers as a table, one line per layer type of io/layer_types.h
// keyed by its name; CUDA layers come from the CUDA floor's own table (cuda/cuda_layer_factory.cpp).
#include "layers/layer_factory.h"

#include <type_traits>

#include "core/error.h"
#include "layers/cuda/cuda_layers.h"
#include "io/layer_types.h"
#include "layers/cpu/cpu_layers.h"
#include "layers/layer_error.h"

namespace dptrain {

namespace {

template <typename T>
struct CpuMaker {
  std::string_view type;
  std::unique_ptr<Layer<T>> (*make)(const LayerConfig& c, int index, Dims in);
};

/// Every type of io/layer_types.h, no other (LayerTypes.EveryTypeHasOneCpuMaker checks it).
template <typename T>
constexpr CpuMaker<T> kCpuMakers[] = {
    {"conv2d", make_conv2d_cpu<T>},
    {"relu", make_relu_cpu<T>},
    {"maxpool2d", make_maxpool2d_cpu<T>},
    {"dropout", make_dropout_cpu<T>},
    {"flatten", make_flatten_cpu<T>},
    {"linear", make_linear_cpu<T>},
    {"avgpool2d", make_avgpool2d_cpu<T>},
    {"global_avgpool", make_global_avgpool_cpu<T>},
    {"batchnorm2d", make_batchnorm2d_cpu<T>},
    {"batchnorm1d", make_batchnorm1d_cpu<T>},
};

}  // namespace

template <typename T>
std::unique_ptr<Layer<T>> make_layer(const LayerConfig& c, int index, Dims input, Device device) {
  if (device == Device::Cuda) {
    if constexpr (std::is_same_v<T, float>) return make_cuda_layer(c, index, input);
    else throw layer_error(index, c.name, "the CUDA backend computes in float32 only");
  }
  for (const CpuMaker<T>& maker : kCpuMakers<T>)
    if (maker.type == c.type) return maker.make(c, index, input);
  throw layer_error(index, c.name, "unknown layer type '" + c.type + "' (" + layer_type_names() + ")");
}

std::vector<std::string_view> cpu_layer_types() {
  std::vector<std::string_view> types;
  for (const CpuMaker<float>& maker : kCpuMakers<float>) types.push_back(maker.type);
  return types;
}

template <typename T>
std::unique_ptr<SoftmaxCrossEntropy<T>> make_softmax_cross_entropy(Device device, double label_smoothing) {
  if (!(label_smoothing >= 0.0 && label_smoothing < 1.0))
    throw InputError("train.label_smoothing", "must be in [0, 1)");
  if (device == Device::Cuda) {
    if constexpr (std::is_same_v<T, float>) return make_softmax_cross_entropy_cuda(static_cast<float>(label_smoothing));
    else throw InputError("model", "the CUDA backend computes in float32 only");
  }
  return make_softmax_cross_entropy_cpu<T>(label_smoothing);
}

template std::unique_ptr<Layer<float>> make_layer<float>(const LayerConfig&, int, Dims, Device);
template std::unique_ptr<Layer<double>> make_layer<double>(const LayerConfig&, int, Dims, Device);
template std::unique_ptr<SoftmaxCrossEntropy<float>> make_softmax_cross_entropy<float>(Device, double);
template std::unique_ptr<SoftmaxCrossEntropy<double>> make_softmax_cross_entropy<double>(Device, double);

}  // namespace dptrain
