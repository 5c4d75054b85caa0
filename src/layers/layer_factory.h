// Builds a layer from its config for a device (Caffe's layer registry, without the macros: the
// set of layer types is closed and listed in one place, layer_factory.cpp).
#pragma once

#include <memory>

#include "core/device.h"
#include "io/config.h"
#include "layers/layer.h"

namespace dptrain {

/// Throws InputError naming the layer if the type is unknown or the shapes do not work.
/// Device::Cuda is available for T = float only.
template <typename T>
std::unique_ptr<Layer<T>> make_layer(const LayerConfig& config, int index, Dims input, Device device);

}  // namespace dptrain
