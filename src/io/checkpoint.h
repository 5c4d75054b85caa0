// dptrain's files in the safetensors format: the weights file (final.safetensors: the model's
// tensors named and shaped as PyTorch's state_dict, plus the resolved config) and, later, full
// training checkpoints. Both are written atomically (io/atomic_file.h).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "io/safetensors.h"

namespace dptrain {

/// A host float32 tensor to store under a state_dict name.
struct NamedTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::span<const float> values;
};

/// final.safetensors: the tensors plus metadata {format: dptrain-weights, config: <yaml>}.
void save_weights(const std::string& path, const std::vector<NamedTensor>& tensors, const std::string& config_yaml);

/// Reads and validates a weights file or a checkpoint (whose optimizer tensors the caller ignores).
/// InputError naming the file for anything malformed or not a dptrain file.
SafeTensorsFile load_weights(const std::string& path);

}  // namespace dptrain
