// Shape and config errors that name the layer: "model.layers[3] (conv2): problem", and the check
// every layer's constructor starts with: its type's shape rule (io/layer_types.h).
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

#include "core/error.h"
#include "io/config.h"
#include "io/layer_types.h"

namespace dptrain {

inline InputError layer_error(int index, const std::string& name, const std::string& problem) {
  return InputError("model.layers[" + std::to_string(index) + "] (" + name + ")", problem);
}

/// A layer's config with its type's defaults filled in, and its output shape.
struct CheckedLayer {
  LayerConfig config;
  Dims output;
};

/// Layer `index` of type `type` (the constructing class's own type, whatever c.type says) on input
/// `in`: its defaults resolved (a LayerConfig made in code may leave them 0) and its shape rule
/// applied. Throws layer_error with the rule's problem.
inline CheckedLayer check_layer(std::string_view type, const LayerConfig& c, int index, Dims in) {
  const LayerType* entry = find_layer_type(type);
  if (entry == nullptr) throw std::logic_error("layer type '" + std::string(type) + "' is not in io/layer_types.cpp");
  CheckedLayer checked{with_defaults(*entry, c), {}};
  const LayerShape shape = entry->shape(checked.config, in);
  if (!shape.problem.empty()) throw layer_error(index, c.name, shape.problem);
  if (const std::string too_large = shape_size_problem(shape.output); !too_large.empty())
    throw layer_error(index, c.name, "output " + too_large);
  checked.output = shape.output;
  return checked;
}

}  // namespace dptrain
