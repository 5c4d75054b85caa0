// The CUDA makers as a table, one line per layer type of io/layer_types.h keyed by its name (the
// CPU's is in layers/layer_factory.cpp). Only built with the CUDA backend; a CPU-only build's
// make_cuda_layer is cuda/cuda_absent.cpp's, which refuses.
#include <string>

#include "layers/cuda/cuda_layers.h"
#include "layers/layer_error.h"

namespace dptrain {

namespace {

struct CudaMaker {
  std::string_view type;
  std::unique_ptr<Layer<float>> (*make)(const LayerConfig& c, int index, Dims in);
};

/// Every type of io/layer_types.h, no other (LayerTypes.EveryTypeHasOneCudaMaker checks it).
constexpr CudaMaker kCudaMakers[] = {
    {"conv2d", make_conv2d_cuda},
    {"relu", make_relu_cuda},
    {"maxpool2d", make_maxpool2d_cuda},
    {"dropout", make_dropout_cuda},
    {"flatten", make_flatten_cuda},
    {"linear", make_linear_cuda},
    {"avgpool2d", make_avgpool2d_cuda},
    {"global_avgpool", make_global_avgpool_cuda},
    {"batchnorm2d", make_batchnorm2d_cuda},
    {"batchnorm1d", make_batchnorm1d_cuda},
};

}  // namespace

std::unique_ptr<Layer<float>> make_cuda_layer(const LayerConfig& c, int index, Dims in) {
  for (const CudaMaker& maker : kCudaMakers)
    if (maker.type == c.type) return maker.make(c, index, in);
  throw layer_error(index, c.name, "unknown layer type '" + c.type + "'");
}

std::vector<std::string_view> cuda_layer_types() {
  std::vector<std::string_view> types;
  for (const CudaMaker& maker : kCudaMakers) types.push_back(maker.type);
  return types;
}

}  // namespace dptrain
