// Shape and config errors that name the layer: "model.layers[3] (conv2): problem".
#pragma once

#include <string>

#include "core/error.h"

namespace dptrain {

inline InputError layer_error(int index, const std::string& name, const std::string& problem) {
  return InputError("model.layers[" + std::to_string(index) + "] (" + name + ")", problem);
}

}  // namespace dptrain
