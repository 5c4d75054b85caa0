// Rebuilding a trained model from a weights file or checkpoint (which carries its config).
#pragma once

#include <memory>
#include <string>

#include "core/device_context.h"
#include "io/config.h"
#include "model/model.h"

namespace dptrain {

struct LoadedModel {
  Config config;
  std::unique_ptr<Model<float>> model;
};

/// Reads `path` (validated), builds the model its config describes with room for max_batch
/// samples, and copies every tensor in; a missing tensor or wrong shape is an InputError naming
/// the file and the tensor.
LoadedModel load_model(const std::string& path, DeviceContext& ctx, int max_batch);

}  // namespace dptrain
