// The CUDA backend's layers (cuDNN convolution, pooling and activation; cuBLAS linear; custom
// kernels for dropout and the loss) and its resident-data batch source, float32 only.
#pragma once

#include <memory>

#include "io/config.h"
#include "layers/layer.h"
#include "layers/softmax_cross_entropy.h"

namespace dptrain {

std::unique_ptr<Layer<float>> make_cuda_layer(const LayerConfig& config, int index, Dims input);
std::unique_ptr<SoftmaxCrossEntropy<float>> make_softmax_cross_entropy_cuda();

}  // namespace dptrain
