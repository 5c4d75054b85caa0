// Weights files as eval and predict load them (train/weights.h): a file holding NaN or Inf is bad
// input naming the tensor, not a model that silently scores at chance.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "core/device_context.h"
#include "core/error.h"
#include "io/checkpoint.h"
#include "io/config.h"
#include "train/weights.h"

namespace dptrain {
namespace {

TEST(Weights, NonFiniteValuesAreRefusedNamingTheTensor) {
  const Config config =
      parse_config("model: {layers: [{type: flatten}, {name: fc, type: linear, out_features: 10}]}", "t.yaml");
  const auto dir = std::filesystem::temp_directory_path() / ("dptrain_weights_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "w.safetensors").string();
  std::vector<float> weight(10 * 784, 0.01f), bias(10, 0.0f);
  const std::vector<NamedTensor> tensors = {{"fc.weight", {10, 784}, weight}, {"fc.bias", {10}, bias}};
  DeviceContext ctx;
  save_weights(path, tensors, to_yaml(config));
  EXPECT_NO_THROW(build_model(read_weights_file(path), ctx, 1, /*forward_only=*/true));
  bias[3] = std::numeric_limits<float>::quiet_NaN();
  weight[7] = std::numeric_limits<float>::infinity();
  save_weights(path, tensors, to_yaml(config));
  try {
    build_model(read_weights_file(path), ctx, 1, /*forward_only=*/true);
    ADD_FAILURE() << "accepted";
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()),
              path + ": tensor 'fc.weight' holds 1 values that are NaN or Inf (weights of a diverged model?)");
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace dptrain
