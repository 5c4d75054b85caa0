// Rebuilding a trained model from a weights file or checkpoint (which carries its config).
#pragma once

#include <memory>
#include <string>

#include "core/device_context.h"
#include "io/checkpoint.h"
#include "io/config.h"
#include "model/model.h"

namespace dptrain {

struct LoadedModel {
  Config config;
  std::unique_ptr<Model<float>> model;
};

/// A weights file or checkpoint read and validated on the host, with its config parsed: the part
/// of loading that needs no device (eval reads it on a thread while CUDA starts).
struct WeightsFile {
  LoadedWeights weights;
  Config config;
};
WeightsFile read_weights_file(const std::string& path);

/// Builds the model `file`'s config describes with room for max_batch samples (forward-only:
/// no backward buffers, for eval and predict) and copies every tensor in; a missing tensor or
/// wrong shape is an InputError naming the file and the tensor.
LoadedModel build_model(const WeightsFile& file, DeviceContext& ctx, int max_batch, bool forward_only = false);

/// read_weights_file, then build_model.
LoadedModel load_model(const std::string& path, DeviceContext& ctx, int max_batch, bool forward_only = false);

}  // namespace dptrain
