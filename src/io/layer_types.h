// The registry of layer types (STYLE.md, "One registry of layer types"): for each type its name,
// its config fields with their defaults, and its shape rule, in one table (layer_types.cpp).
//
// The table lives here, in io beside LayerConfig, so that includes keep pointing down: the config
// reader and to_yaml (io/config.cpp) loop over an entry's fields without including any layer,
// and the layers (which already include io/config.h) take their output shape and resolved
// defaults from it. What only a higher floor can hold stays there, keyed by the same names, one
// line per type:
//  - the CPU makers: kCpuMakers in layers/layer_factory.cpp;
//  - the CUDA makers: kCudaMakers in cuda/cuda_layer_factory.cpp (absent from a CPU-only build,
//    which has no CUDA factory: core/cuda_support.h).
// tests/unit/test_layer_types.cpp checks that both maker tables name exactly these types, and
// that README.md's "Layers:" line lists exactly these types and fields, in this order.
//
// A new layer type is its LayerConfig members (if it needs new ones), one entry here, its layer
// classes, and one line in each maker table.
//
// Invariants: the order of kLayerTypes is the order of every list of types shown to the user
// (error messages, README); the order of an entry's fields is the order in which to_yaml writes
// them. Both are part of saved configs and messages, so changing them changes checkpoints' text.
#pragma once

#include <span>
#include <string>
#include <string_view>

#include "core/tensor.h"
#include "io/config.h"

namespace dptrain {

/// One key of a layer type's YAML mapping and the LayerConfig member it fills. Exactly one of
/// int_member and float_member is set; the key is the member's name.
struct LayerField {
  std::string_view key;
  int LayerConfig::*int_member = nullptr;       ///< an integer (written as one)
  double LayerConfig::*float_member = nullptr;  ///< a number (written as its shortest form)
  /// Integer fields' default: what the value 0 (also the value of an absent key) stands for. 0 stays 0 (the
  /// shape rule then decides whether 0 is allowed) unless zero_means is set, or zero_means_field
  /// names another field of the same type whose value it takes (maxpool2d's stride = kernel).
  int zero_means = 0;
  std::string_view zero_means_field = {};
  // A field whose 0 is a legitimate value (batchnorm's momentum, sync) or whose default is not an
  // integer (eps) leaves zero_means at 0: its absent key keeps the LayerConfig member's initialiser.
};

/// A layer's output shape for one input shape, or the problem that makes the config or the input
/// shape impossible (the layer reports it naming itself: layers/layer_error.h).
/// Bounds every layer's shape rule enforces, far beyond MNIST-class networks and below where sizes
/// overflow the ints of shapes and kernels or the memory of any machine: a side of a plane, the
/// values of one sample's activation (512 MiB in float32), a layer's parameters (4 GiB).
constexpr int64_t kMaxSide = int64_t{1} << 16;
constexpr int64_t kMaxValuesPerSample = int64_t{1} << 27;
constexpr int64_t kMaxLayerParameters = int64_t{1} << 30;

/// The problem with a shape as a layer's input or output, if any (a side or a count over the bounds).
std::string shape_size_problem(Dims d);

struct LayerShape {
  Dims output{};
  std::string problem;  ///< empty when the shape works
};

/// The shape rule of a layer type: `config` has its defaults resolved (with_defaults()).
using LayerShapeRule = LayerShape (*)(const LayerConfig& config, Dims in);

/// One layer type.
struct LayerType {
  std::string_view name;  ///< the config's `type`
  std::span<const LayerField> fields;
  LayerShapeRule shape;
  std::string_view doc;  ///< one line: what the type computes
};

/// Every layer type, in the order lists show them.
std::span<const LayerType> layer_types();

/// The entry named `name`, or nullptr.
const LayerType* find_layer_type(std::string_view name);

/// The types' names for messages: "conv2d, relu, maxpool2d, dropout, flatten, linear".
std::string layer_type_names();

/// `config` with each of its type's zero fields replaced by its default (LayerField::zero_means).
LayerConfig with_defaults(const LayerType& type, LayerConfig config);

}  // namespace dptrain
