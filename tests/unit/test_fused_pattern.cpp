// Which models get a fused training pass (model/fused_train_step.h): LeNet-5 exactly as configured,
// layer names free, nothing else. The pass itself is tested on the GPU (tests/gpu/test_fused_step_gpu.cpp).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/device_context.h"
#include "io/config.h"
#include "model/fused_train_step.h"
#include "model/model.h"

namespace dptrain {
namespace {

Config config(const std::string& name, const std::vector<std::string>& sets = {}) {
  return load_config(std::string(DPTRAIN_SOURCE_DIR) + "/configs/" + name + ".yaml", sets);
}

TEST(FusedPattern, Lenet5AsConfiguredMatches) {
  EXPECT_TRUE(is_lenet5(config("lenet5").model));
  EXPECT_TRUE(is_lenet5(config("lenet5", {"model.layers.0.name=first", "model.layers.3.stride=1"}).model));
}

TEST(FusedPattern, EveryChangeOfShapeOrLayerDoesNot) {
  for (const std::string set : {"model.layers.0.out_channels=8", "model.layers.0.padding=1", "model.layers.0.kernel=3",
                                "model.layers.3.out_channels=32", "model.layers.3.stride=2", "model.layers.2.kernel=3",
                                "model.layers.5.stride=1", "model.layers.7.out_features=100",
                                "model.layers.9.out_features=64", "model.input=[1, 32, 32]", "model.input=[3, 28, 28]"})
    EXPECT_FALSE(is_lenet5(config("lenet5", {set}).model)) << set;
  for (const std::string name : {"mnist_cnn", "mnist_fast", "mnist_bn", "mnist_best"})
    EXPECT_FALSE(is_lenet5(config(name).model)) << name;
}

TEST(FusedPattern, NoFusedPassOnTheCpu) {
  DeviceContext cpu;
  Model<float> model(config("lenet5").model, cpu, 4);
  EXPECT_EQ(model.fused_step(), nullptr);
  model.plan(cpu, 4, true);
  EXPECT_FALSE(model.runs_fused(4));
}

}  // namespace
}  // namespace dptrain
