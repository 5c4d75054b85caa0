// Builds a layer from its config for a device (Caffe's layer registry, without the macros: the
// set of layer types is closed and listed in one place, io/layer_types.h; each backend's makers
// are a table keyed by those names, layer_factory.cpp for the CPU, cuda/cuda_layer_factory.cpp for
// CUDA).
#pragma once

#include <memory>
#include <string_view>
#include <vector>

#include "core/device.h"
#include "io/config.h"
#include "layers/layer.h"

namespace dptrain {

/// Throws InputError naming the layer if the type is unknown or the shapes do not work.
/// Device::Cuda is available for T = float only.
template <typename T>
std::unique_ptr<Layer<T>> make_layer(const LayerConfig& config, int index, Dims input, Device device);

/// The types the CPU maker table serves, in its order (for the check that it matches layer_types()).
std::vector<std::string_view> cpu_layer_types();

}  // namespace dptrain
