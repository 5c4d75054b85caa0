// The CUDA backend's layers (cuDNN convolution, pooling and activation; cuBLAS linear; custom
// kernels for dropout and the loss) and its resident-data batch source, float32 only.
//
// make_cuda_layer and make_softmax_cross_entropy_cuda exist in every build (a CPU-only build's
// cuda/cuda_absent.cpp refuses them); the per-type makers and the maker table's list exist only
// where the CUDA backend is built.
#pragma once

#include <memory>
#include <string_view>
#include <vector>

#include "core/cuda_support.h"
#include "io/config.h"
#include "layers/layer.h"
#include "layers/softmax_cross_entropy.h"

namespace dptrain {

/// Builds a layer by its type's line in the CUDA maker table (cuda/cuda_layer_factory.cpp).
std::unique_ptr<Layer<float>> make_cuda_layer(const LayerConfig& config, int index, Dims input);
std::unique_ptr<SoftmaxCrossEntropy<float>> make_softmax_cross_entropy_cuda(float label_smoothing);

#if DPTRAIN_HAVE_CUDA
/// The types the CUDA maker table serves, in its order (for the check that it matches layer_types()).
std::vector<std::string_view> cuda_layer_types();

// One maker per layer type, each beside its layer's class.
std::unique_ptr<Layer<float>> make_conv2d_cuda(const LayerConfig& c, int index, Dims in);  // conv2d_cuda.cpp
std::unique_ptr<Layer<float>> make_linear_cuda(const LayerConfig& c, int index, Dims in);  // linear_cuda.cpp
std::unique_ptr<Layer<float>> make_avgpool2d_cuda(const LayerConfig& c, int index, Dims in);       // avgpool2d_cuda.cpp
std::unique_ptr<Layer<float>> make_global_avgpool_cuda(const LayerConfig& c, int index, Dims in);  // avgpool2d_cuda.cpp
// elementwise_cuda.cpp:
std::unique_ptr<Layer<float>> make_relu_cuda(const LayerConfig& c, int index, Dims in);
std::unique_ptr<Layer<float>> make_maxpool2d_cuda(const LayerConfig& c, int index, Dims in);
std::unique_ptr<Layer<float>> make_dropout_cuda(const LayerConfig& c, int index, Dims in);
std::unique_ptr<Layer<float>> make_flatten_cuda(const LayerConfig& c, int index, Dims in);
std::unique_ptr<Layer<float>> make_batchnorm2d_cuda(const LayerConfig& c, int index, Dims in);  // batchnorm_cuda.cpp
std::unique_ptr<Layer<float>> make_batchnorm1d_cuda(const LayerConfig& c, int index, Dims in);
#endif

}  // namespace dptrain
