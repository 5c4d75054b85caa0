// Config loading: the shipped configs parse to the intended recipes, every kind of mistake is an
// InputError naming the file and key, overrides work on any dotted path, and the resolved YAML
// round-trips.
#include <gtest/gtest.h>

#include <string>

#include "core/error.h"
#include "io/config.h"

namespace dptrain {
namespace {

const std::string kConfigs = std::string(DPTRAIN_SOURCE_DIR) + "/configs/";

std::string error_of(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  try {
    parse_config(yaml, "test.yaml", overrides);
  } catch (const InputError& e) {
    return e.what();
  }
  return "no error";
}

const char* kMinimal = R"(
model:
  layers:
    - {name: fc, type: linear, out_features: 10}
)";

TEST(Config, MnistCnnIsPyTorchExamplesRecipe) {
  const Config c = load_config(kConfigs + "mnist_cnn.yaml");
  EXPECT_EQ(c.name, "mnist_cnn");
  ASSERT_EQ(c.model.layers.size(), 11u);
  EXPECT_EQ(c.model.layers[0].name, "conv1");
  EXPECT_EQ(c.model.layers[0].out_channels, 32);
  EXPECT_EQ(c.model.layers[0].kernel, 3);
  EXPECT_EQ(c.model.layers[0].stride, 1);
  EXPECT_EQ(c.model.layers[2].out_channels, 64);
  EXPECT_EQ(c.model.layers[4].type, "maxpool2d");
  EXPECT_EQ(c.model.layers[4].stride, 2);  // defaults to the kernel, as nn.MaxPool2d
  EXPECT_DOUBLE_EQ(c.model.layers[5].p, 0.25);
  EXPECT_EQ(c.model.layers[7].name, "fc1");
  EXPECT_EQ(c.model.layers[7].out_features, 128);
  EXPECT_DOUBLE_EQ(c.model.layers[9].p, 0.5);
  EXPECT_EQ(c.model.layers[10].out_features, 10);
  EXPECT_EQ(c.train.optimizer.type, "adadelta");
  EXPECT_DOUBLE_EQ(c.train.optimizer.lr, 1.0);
  EXPECT_DOUBLE_EQ(c.train.optimizer.rho, 0.9);
  EXPECT_DOUBLE_EQ(c.train.optimizer.eps, 1e-6);
  EXPECT_EQ(c.train.schedule.type, "step");
  EXPECT_DOUBLE_EQ(c.train.schedule.gamma, 0.7);
  EXPECT_EQ(c.train.schedule.step_size, 1);
  EXPECT_EQ(c.train.batch_size, 64);
  EXPECT_EQ(c.train.epochs, 14);
  EXPECT_DOUBLE_EQ(c.data.mean, 0.1307);
  EXPECT_DOUBLE_EQ(c.data.std, 0.3081);
}

TEST(Config, Lenet5UsesSgdWithMomentum) {
  const Config c = load_config(kConfigs + "lenet5.yaml");
  EXPECT_EQ(c.train.optimizer.type, "sgd");
  EXPECT_GT(c.train.optimizer.momentum, 0.0);
  EXPECT_EQ(c.model.layers.front().padding, 2);
}

TEST(Config, DefaultsPerOptimizerTypeFollowPyTorch) {
  const Config adam = parse_config(std::string(kMinimal) + "train: {optimizer: {type: adam}}", "t.yaml");
  EXPECT_DOUBLE_EQ(adam.train.optimizer.lr, 1e-3);
  EXPECT_DOUBLE_EQ(adam.train.optimizer.eps, 1e-8);
  const Config adamw = parse_config(std::string(kMinimal) + "train: {optimizer: {type: adamw}}", "t.yaml");
  EXPECT_DOUBLE_EQ(adamw.train.optimizer.weight_decay, 1e-2);
}

TEST(Config, UnnamedLayersGetTypeAndCount) {
  const Config c = load_config(kConfigs + "mnist_cnn.yaml");
  EXPECT_EQ(c.model.layers[1].name, "relu1");
  EXPECT_EQ(c.model.layers[3].name, "relu2");
  EXPECT_EQ(c.model.layers[6].name, "flatten1");
}

TEST(Config, OverridesReachAnyDottedKey) {
  const Config c = load_config(kConfigs + "mnist_cnn.yaml",
                               {"train.batch_size=128", "train.optimizer.lr=0.5", "model.layers.5.p=0.1",
                                "checkpoint.keep=7", "name=custom"});
  EXPECT_EQ(c.train.batch_size, 128);
  EXPECT_DOUBLE_EQ(c.train.optimizer.lr, 0.5);
  EXPECT_DOUBLE_EQ(c.model.layers[5].p, 0.1);
  EXPECT_EQ(c.checkpoint.keep, 7);
  EXPECT_EQ(c.name, "custom");
}

TEST(Config, ResolvedYamlRoundTrips) {
  const Config a = load_config(kConfigs + "mnist_cnn.yaml", {"train.seed=42"});
  const Config b = parse_config(to_yaml(a), "resolved.yaml");
  EXPECT_EQ(to_yaml(a), to_yaml(b));
  EXPECT_EQ(b.train.seed, 42u);
  EXPECT_TRUE(b.train.deterministic);
  const Config fast = parse_config(to_yaml(load_config(kConfigs + "mnist_cnn.yaml", {"train.deterministic=false"})),
                                   "resolved.yaml");
  EXPECT_FALSE(fast.train.deterministic);
  EXPECT_FALSE(b.train.exact_convolutions);
  const Config exact = parse_config(
      to_yaml(load_config(kConfigs + "mnist_cnn.yaml", {"train.exact_convolutions=true"})), "resolved.yaml");
  EXPECT_TRUE(exact.train.exact_convolutions);
  EXPECT_EQ(b.name, "mnist_cnn");
}

TEST(Config, ErrorsNameFileAndKey) {
  EXPECT_NE(error_of(std::string(kMinimal) + "trian: {}").find("test.yaml: 'trian': unknown key"), std::string::npos);
  EXPECT_NE(error_of(std::string(kMinimal) + "train: {batch_size: abc}").find("'train.batch_size': expected an integer, got 'abc'"),
            std::string::npos);
  EXPECT_NE(error_of(std::string(kMinimal) + "train: {batch_size: 0}").find("'train.batch_size': must be > 0"),
            std::string::npos);
  EXPECT_NE(error_of(std::string(kMinimal) + "train: {optimizer: {type: rmsprop}}").find("unknown optimizer 'rmsprop'"),
            std::string::npos);
  EXPECT_NE(error_of(std::string(kMinimal) + "train: {optimizer: {type: sgd, rho: 0.9}}")
                .find("'train.optimizer.rho': a setting of adadelta, not of sgd (the optimizer type changed?"),
            std::string::npos);
  EXPECT_NE(error_of(std::string(kMinimal) + "train: {optimizer: {type: adam, beta1: 0.9}}", {"train.optimizer.type=sgd"})
                .find("'train.optimizer.beta1': a setting of adam and adamw, not of sgd"),
            std::string::npos);
  EXPECT_NE(error_of(std::string(kMinimal) + "train: {optimizer: {type: sgd, betta: 0.9}}").find("'train.optimizer.betta': unknown key"),
            std::string::npos);
  EXPECT_NE(error_of("model: {layers: [{type: conv2d, p: 0.5}]}").find("'model.layers[0].p': unknown key"),
            std::string::npos);
  EXPECT_NE(error_of("model: {layers: [{type: convolution}]}").find("unknown layer type 'convolution'"),
            std::string::npos);
  EXPECT_NE(error_of("model: {layers: []}").find("'model.layers'"), std::string::npos);
  EXPECT_NE(error_of("model: {layers: [{name: a, type: relu}, {name: a, type: relu}]}").find("duplicate layer name 'a'"),
            std::string::npos);
  EXPECT_NE(error_of("model: [1, 2").find("test.yaml: not valid YAML"), std::string::npos);
  EXPECT_NE(error_of("").find("test.yaml: the config is empty"), std::string::npos);
  EXPECT_NE(error_of(std::string(kMinimal) + "train: {precision: fp16}").find("'train.precision'"), std::string::npos);
  // Complex keys are valid YAML; found by fuzz_config, they once escaped as a yaml-cpp exception.
  EXPECT_NE(error_of("model: {layers: [{type: relu}], [x]: 1}").find("'model': keys must be plain names"),
            std::string::npos);
  EXPECT_NE(error_of(std::string(kMinimal) + "? {a: 1}\n: 2\n").find("'(top level)': keys must be plain names"),
            std::string::npos);
  EXPECT_NE(error_of("model: {layers: [{type: relu, ? [k]: 1}]}").find("'model.layers[0]': keys must be plain names"),
            std::string::npos);
}

// Every number is finite (a NaN mean or an infinite momentum trained to garbage or diverged with a
// message about a step instead of the key), no key appears twice in a mapping (yaml-cpp answers
// with the first and the second was silently ignored), and the input is within the shape bounds.
TEST(Config, NonFiniteNumbersRepeatedKeysAndHugeInputsAreRefused) {
  for (const char* bad : {".nan", ".inf", "-.inf"}) {
    EXPECT_NE(error_of(std::string(kMinimal) + "data: {mean: " + bad + "}").find("'data.mean': expected a finite number, got '" + std::string(bad) + "'"),
              std::string::npos) << bad;
    EXPECT_NE(error_of(std::string(kMinimal) + "train: {optimizer: {type: sgd, momentum: " + bad + "}}").find("'train.optimizer.momentum': expected a finite number"),
              std::string::npos) << bad;
    EXPECT_NE(error_of(std::string(kMinimal) + "comm: {timeout_s: " + bad + "}").find("'comm.timeout_s'"), std::string::npos) << bad;
  }
  EXPECT_NE(error_of(std::string(kMinimal) + "train: {schedule: {type: cosine, min_lr: -5}}").find("'train.schedule.min_lr': must be >= 0"),
            std::string::npos);
  EXPECT_NE(error_of(std::string(kMinimal) + "train: {batch_size: 64}\ntrain: {batch_size: 32}\n").find("test.yaml: 'train': appears twice in the same mapping"),
            std::string::npos);
  EXPECT_NE(error_of(std::string(kMinimal) + "train: {batch_size: 64, batch_size: 32}").find("'train.batch_size': appears twice"),
            std::string::npos);
  EXPECT_NE(error_of("model: {input: [1, 100000, 100000], layers: [{type: relu}]}").find("'model.input': shape 1x100000x100000 has a side over 65536"),
            std::string::npos);
}

// A string value must be text that to_yaml writes back as read: the fuzzer found a data.dir of
// bytes that are not UTF-8 before a carriage return, which the written config read back without
// the carriage return.
TEST(Config, StringValuesAreTextWithoutControlCharacters) {
  const std::string fuzz_found = std::string(kMinimal) + "data: {dir: data/mn\xff\xff\xff\r}\n";
  EXPECT_EQ(error_of(fuzz_found), "test.yaml: 'data.dir': the value is not valid UTF-8");
  EXPECT_EQ(error_of(std::string(kMinimal) + "data: {dir: \"data/x\\r\"}"),
            "test.yaml: 'data.dir': the value contains a control character (\\x0d)");
  EXPECT_EQ(error_of(std::string(kMinimal) + "data: {dir: \"a\\tb\"}"),
            "test.yaml: 'data.dir': the value contains a control character (\\x09)");
  for (const char* bad : {"\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xe2\x82"})  // overlong, surrogate, past U+10FFFF, cut
    EXPECT_EQ(error_of(std::string(kMinimal) + "name: x" + bad + "y\n"), "test.yaml: 'name': the value is not valid UTF-8")
        << bad;
  // Text in any script is fine, and survives the round trip.
  const Config c = parse_config(std::string(kMinimal) + "name: données_数字_\xf0\x9f\x94\xa2\ndata: {dir: \"/tmp/my data\"}\n", "t.yaml");
  EXPECT_EQ(c.name, "données_数字_\xf0\x9f\x94\xa2");
  EXPECT_EQ(to_yaml(parse_config(to_yaml(c), "again.yaml")), to_yaml(c));
  EXPECT_EQ(parse_config(to_yaml(c), "again.yaml").data.dir, "/tmp/my data");
}

TEST(Config, BadOverridesAreReported) {
  EXPECT_NE(error_of(kMinimal, {"train.batch_size"}).find("expected key=value"), std::string::npos);
  EXPECT_NE(error_of(kMinimal, {"train.bogus=1"}).find("'train.bogus': unknown key"), std::string::npos);
  EXPECT_NE(error_of(kMinimal, {"model.layers.7.p=1"}).find("index 7 out of range"), std::string::npos);
  EXPECT_NE(error_of(kMinimal, {"train.batch_size=[1"}).find("not valid YAML"), std::string::npos);
  EXPECT_NE(error_of(kMinimal, {"train.=5"}).find("--set train.=5: empty component in key 'train.'"), std::string::npos);
  // A list at the top is the file's mistake, not the override's.
  EXPECT_NE(error_of("- 1\n- 2\n", {"data.dir=x"}).find("test.yaml: expected a YAML mapping at the top level"),
            std::string::npos);
}

TEST(Config, MissingFileIsNamed) {
  try {
    load_config("/nonexistent/dir/x.yaml");
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/dir/x.yaml: cannot open"), std::string::npos);
  }
}

}  // namespace
}  // namespace dptrain
