// batchnorm2d / batchnorm1d on the CPU: config fields and errors that name the layer, PyTorch's
// train/eval semantics checked by hand (ghost groups and the whole batch), running statistics
// with the unbiased variance, finite-difference gradients (layer and whole model, ghost and
// sync), state tensors in the model's state buffer and in files (num_batches_tracked as I64),
// a checkpoint without them named in the error, and the tail split at group boundaries.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <tuple>
#include <filesystem>

#include "core/error.h"
#include "data/sampler.h"
#include "gradient_checker.h"
#include "io/checkpoint.h"
#include "io/config.h"
#include "layers/layer_factory.h"
#include "model/model.h"
#include "train/numerics_checker.h"
#include "train/train_state.h"

namespace dptrain {
namespace {

using testing::check_model_gradients;
using testing::random_vector;
using testing::rel_error;

std::string error_of(const std::string& yaml) {
  try {
    parse_config(yaml, "test.yaml");
  } catch (const InputError& e) {
    return e.what();
  }
  return "no error";
}

LayerConfig bn(const std::string& type, int group, int sync = 0, double momentum = 0.1) {
  LayerConfig c;
  c.type = type;
  c.name = "bn";
  c.group_size = group;
  c.sync = sync;
  c.momentum = momentum;
  return c;
}

/// A layer with its parameters and state in vectors of its own (weight, bias given).
struct BoundLayer {
  std::unique_ptr<Layer<double>> layer;
  std::vector<double> w, b, dw, db, rm, rv, tracked{0.0};
};

BoundLayer bind(const LayerConfig& c, Dims in, std::vector<double> w, std::vector<double> b) {
  BoundLayer l;
  l.layer = make_layer<double>(c, 0, in, Device::Cpu);
  const size_t ch = static_cast<size_t>(in.c);
  l.w = std::move(w), l.b = std::move(b), l.dw.assign(ch, 0), l.db.assign(ch, 0), l.rm.assign(ch, 0), l.rv.assign(ch, 1);
  l.layer->bind({{l.w, l.dw}, {l.b, l.db}});
  l.layer->bind_state({l.rm, l.rv, l.tracked});
  DeviceContext ctx;
  l.layer->reserve(ctx, 64);
  return l;
}

TEST(BatchNormConfig, FieldsDefaultToPyTorchsAndZeroMomentumIsKept) {
  const Config c = parse_config(R"(
model:
  input: [1, 4, 4]
  layers:
    - {name: bn1, type: batchnorm2d}
    - {name: bn2, type: batchnorm2d, momentum: 0, eps: 0.001, group_size: 8}
    - {name: bn3, type: batchnorm2d, sync: 1}
    - {type: flatten}
    - {name: fc, type: linear, out_features: 10}
)", "t.yaml");
  EXPECT_DOUBLE_EQ(c.model.layers[0].momentum, 0.1);
  EXPECT_DOUBLE_EQ(c.model.layers[0].eps, 1e-5);
  EXPECT_EQ(c.model.layers[0].group_size, 32);
  EXPECT_EQ(c.model.layers[0].sync, 0);
  EXPECT_DOUBLE_EQ(c.model.layers[1].momentum, 0.0);  // an explicit 0 freezes the running statistics
  EXPECT_DOUBLE_EQ(c.model.layers[1].eps, 0.001);
  EXPECT_EQ(c.model.layers[1].group_size, 8);
  EXPECT_EQ(c.model.layers[2].sync, 1);
  const Config again = parse_config(to_yaml(c), "resolved.yaml");
  EXPECT_DOUBLE_EQ(again.model.layers[1].momentum, 0.0);
  EXPECT_DOUBLE_EQ(again.model.layers[0].eps, 1e-5);
  EXPECT_EQ(again.model.layers[1].group_size, 8);
}

TEST(BatchNormConfig, ErrorsNameTheLayer) {
  const std::string head = "model: {input: [2, 4, 4], layers: [";
  const std::string tail = ", {type: flatten}, {type: linear, out_features: 10}]}";
  DeviceContext ctx;
  const auto model_error = [&](const std::string& layer) {
    try {
      const Config c = parse_config(head + layer + tail, "t.yaml");
      Model<float> m(c.model, ctx, 8);
    } catch (const InputError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(model_error("{name: bn1, type: batchnorm2d, eps: 0}").find("model.layers[0] (bn1): eps must be > 0"),
            std::string::npos);
  EXPECT_NE(model_error("{name: bn1, type: batchnorm2d, momentum: 1.5}").find("(bn1): momentum must be in [0, 1]"),
            std::string::npos);
  EXPECT_NE(model_error("{name: bn1, type: batchnorm2d, group_size: 0}").find("(bn1): group_size must be > 0"),
            std::string::npos);
  EXPECT_NE(model_error("{name: bn1, type: batchnorm2d, sync: 2}").find("(bn1): sync must be 0"), std::string::npos);
  EXPECT_NE(model_error("{name: bn1, type: batchnorm1d}").find("(bn1): batchnorm1d normalises features"),
            std::string::npos);
  EXPECT_NE(error_of("model: {layers: [{type: batchnorm2d, p: 0.5}]}").find("'model.layers[0].p': unknown key"),
            std::string::npos);
  EXPECT_EQ(model_error("{name: bn1, type: batchnorm2d, group_size: 4}"), "no error");
}

TEST(BatchNormCpu, TrainNormalisesEachGhostGroupAndEvalUsesRunningStatistics) {
  const Dims in{2, 3, 1};  // 2 channels, 3 positions
  BoundLayer l = bind(bn("batchnorm2d", 2), in, {2.0, 1.0}, {0.5, -1.0});
  const int n = 4;  // two groups of 2 samples
  const std::vector<double> x = random_vector(static_cast<size_t>(n) * 6, 5, -2, 3);
  std::vector<double> y(x.size());
  DeviceContext ctx;
  l.layer->forward(ctx, TensorView<const double>{x.data(), n, in}, TensorView<double>{y.data(), n, in}, Phase::Train, {});
  double want_mean[2] = {0, 0}, want_var[2] = {0, 0};
  for (int g = 0; g < 2; ++g)
    for (int c = 0; c < 2; ++c) {
      double sum = 0, sq = 0;
      for (int i = 2 * g; i < 2 * g + 2; ++i)
        for (int s = 0; s < 3; ++s) sum += x[static_cast<size_t>((i * 2 + c) * 3 + s)];
      const double mean = sum / 6;
      for (int i = 2 * g; i < 2 * g + 2; ++i)
        for (int s = 0; s < 3; ++s) sq += std::pow(x[static_cast<size_t>((i * 2 + c) * 3 + s)] - mean, 2);
      for (int i = 2 * g; i < 2 * g + 2; ++i)
        for (int s = 0; s < 3; ++s) {
          const size_t k = static_cast<size_t>((i * 2 + c) * 3 + s);
          EXPECT_NEAR(y[k], (x[k] - mean) / std::sqrt(sq / 6 + 1e-5) * l.w[static_cast<size_t>(c)] + l.b[static_cast<size_t>(c)], 1e-12);
        }
      want_mean[c] += mean / 2;
      want_var[c] += sq / 5 / 2;  // unbiased, averaged over the two groups
    }
  EXPECT_EQ(l.rm[0], 0.0);  // the running statistics move at the step's end, not in forward
  l.layer->end_train_step(ctx);
  for (int c = 0; c < 2; ++c) {
    EXPECT_NEAR(l.rm[static_cast<size_t>(c)], 0.1 * want_mean[c], 1e-12);
    EXPECT_NEAR(l.rv[static_cast<size_t>(c)], 0.9 + 0.1 * want_var[c], 1e-12);
  }
  EXPECT_EQ(l.tracked[0], 1.0);
  l.layer->forward(ctx, TensorView<const double>{x.data(), n, in}, TensorView<double>{y.data(), n, in}, Phase::Eval, {});
  for (size_t k = 0; k < x.size(); ++k) {
    const size_t c = (k / 3) % 2;
    EXPECT_NEAR(y[k], (x[k] - l.rm[c]) / std::sqrt(l.rv[c] + 1e-5) * l.w[c] + l.b[c], 1e-12);
  }
}

TEST(BatchNormCpu, SyncIsOneGroupAndATailEndsInAPartialGroup) {
  const Dims in{3, 1, 1};
  const std::vector<double> x = random_vector(5 * 3, 8, -1, 2);
  std::vector<double> whole(x.size()), ghost(x.size());
  DeviceContext ctx;
  BoundLayer sync = bind(bn("batchnorm1d", 0, 1), in, {1, 1, 1}, {0, 0, 0});
  sync.layer->forward(ctx, TensorView<const double>{x.data(), 5, in}, TensorView<double>{whole.data(), 5, in}, Phase::Train, {});
  BoundLayer big = bind(bn("batchnorm1d", 8), in, {1, 1, 1}, {0, 0, 0});  // one partial group of 5
  big.layer->forward(ctx, TensorView<const double>{x.data(), 5, in}, TensorView<double>{ghost.data(), 5, in}, Phase::Train, {});
  for (size_t k = 0; k < x.size(); ++k) EXPECT_NEAR(whole[k], ghost[k], 1e-12);
  // Groups of 2 over 5 samples: [0,1], [2,3], [4]: the last sample alone normalises to 0.
  BoundLayer pairs = bind(bn("batchnorm1d", 2), in, {1, 1, 1}, {0, 0, 0});
  pairs.layer->forward(ctx, TensorView<const double>{x.data(), 5, in}, TensorView<double>{ghost.data(), 5, in}, Phase::Train, {});
  for (int c = 0; c < 3; ++c) EXPECT_NEAR(ghost[static_cast<size_t>(12 + c)], 0.0, 1e-12);
  pairs.layer->end_train_step(ctx);  // 3 groups; the single's variance counts as its biased 0
  double var_sum = 0;
  for (int g = 0; g < 2; ++g) {
    const double a = x[static_cast<size_t>(2 * g * 3)], b = x[static_cast<size_t>((2 * g + 1) * 3)];
    var_sum += (a - b) * (a - b) / 2;  // unbiased variance of two values
  }
  EXPECT_NEAR(pairs.rv[0], 0.9 + 0.1 * var_sum / 3, 1e-12);
}

TEST(BatchNormCpu, GradientsMatchFiniteDifferences) {
  for (const auto& [type, dims, n] : {std::tuple{"batchnorm2d", Dims{3, 2, 2}, 4}, std::tuple{"batchnorm1d", Dims{5, 1, 1}, 6}})
    for (int group : {0, 2, 3}) {
      SCOPED_TRACE(std::string(type) + " group " + std::to_string(group));
      auto layer = make_layer<double>(bn(type, group == 0 ? 32 : group, group == 0 ? 1 : 0), 0, dims, Device::Cpu);
      testing::check_layer_gradients(*layer, random_vector(static_cast<size_t>(n) * dims.count(), 21, -1, 2), n,
                                     Phase::Train, 1e-5);
    }
}

const char* kBnNet = R"(
model:
  input: [1, 6, 6]
  num_classes: 3
  layers:
    - {name: conv1, type: conv2d, out_channels: 3, kernel: 3}
    - {name: bn1, type: batchnorm2d, group_size: 2}
    - {type: relu}
    - {type: flatten}
    - {name: fc1, type: linear, out_features: 5}
    - {name: bn2, type: batchnorm1d, group_size: 2}
    - {type: relu}
    - {name: fc2, type: linear, out_features: 3}
)";

TEST(BatchNormModel, WholeNetworkGradientMatchesFiniteDifferences) {
  for (const char* sync : {"0", "1"}) {
    SCOPED_TRACE(std::string("sync ") + sync);
    const Config config = parse_config(kBnNet, "t.yaml", {std::string("model.layers.1.sync=") + sync, std::string("model.layers.5.sync=") + sync});
    DeviceContext ctx;
    const int n = 4;
    Model<double> model(config.model, ctx, n);
    model.params().initialize(3);
    const std::vector<double> x = random_vector(static_cast<size_t>(n) * 36, 12, -1, 2);
    const std::vector<int32_t> labels{0, 2, 1, 2};
    size_t elements = 0;  // every element of every tensor (the flat buffer may pad between them)
    for (const ParamEntry& e : model.params().entries()) elements += e.count;
    EXPECT_EQ(check_model_gradients(ctx, model, x, {1, 6, 6}, labels, {}, 0), static_cast<int>(elements));
  }
}

TEST(BatchNormModel, StateIsOutsideTheParametersAndNamedAsPyTorch) {
  const Config config = parse_config(kBnNet, "t.yaml");
  DeviceContext ctx;
  Model<float> model(config.model, ctx, 4);
  model.params().initialize(1);
  std::vector<std::string> params, state;
  for (const ParamEntry& e : model.params().entries()) params.push_back(e.name);
  for (const StateEntry& e : model.state().entries()) state.push_back(e.name);
  EXPECT_EQ(params, (std::vector<std::string>{"conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias", "fc1.weight",
                                              "fc1.bias", "bn2.weight", "bn2.bias", "fc2.weight", "fc2.bias"}));
  EXPECT_EQ(state, (std::vector<std::string>{"bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked",
                                             "bn2.running_mean", "bn2.running_var", "bn2.num_batches_tracked"}));
  const ParamStore<float>& p = model.params();
  const ParamEntry& w = p.entries()[2];
  const ParamEntry& b = p.entries()[3];
  for (size_t i = 0; i < w.count; ++i) EXPECT_EQ(p.values().data()[w.offset + i], 1.0f);
  for (size_t i = 0; i < b.count; ++i) EXPECT_EQ(p.values().data()[b.offset + i], 0.0f);
  const StateStore<float>& s = model.state();
  EXPECT_EQ(s.entries()[1].shape, (ParamShape{3}));
  EXPECT_EQ(s.entries()[2].shape, ParamShape{});
  EXPECT_TRUE(s.entries()[2].integer);
  EXPECT_EQ(s.values().data()[s.entries()[1].offset], 1.0f);  // running_var starts at 1
  EXPECT_EQ(s.values().data()[s.entries()[0].offset], 0.0f);
}

TEST(BatchNormModel, StateTensorsGoIntoFilesAndTheirAbsenceIsNamed) {
  const Config config = parse_config(kBnNet, "t.yaml");
  DeviceContext ctx;
  Model<float> model(config.model, ctx, 4);
  model.params().initialize(1);
  const std::vector<float> x(4 * 36, 0.5f);
  std::vector<float> xs(x);
  for (size_t i = 0; i < xs.size(); ++i) xs[i] = static_cast<float>(i % 7) * 0.3f;
  for (int step = 0; step < 3; ++step) {
    model.forward(ctx, TensorView<const float>{xs.data(), 4, {1, 6, 6}}, Phase::Train, {});
    model.end_train_step(ctx);
  }
  std::vector<float> flat(model.state().values().data(), model.state().values().data() + model.state().size());
  const std::vector<NamedTensor> tensors = state_tensors(model.state(), flat);
  const auto dir = std::filesystem::temp_directory_path() / "dptrain_bn_state";
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "w.safetensors").string();
  save_weights(path, tensors, to_yaml(config));
  const LoadedWeights loaded = load_weights(path);
  const SafeTensor* tracked = loaded.file.find("bn1.num_batches_tracked");
  ASSERT_NE(tracked, nullptr);
  EXPECT_EQ(tracked->dtype, "I64");
  EXPECT_TRUE(tracked->shape.empty());
  int64_t count = 0;
  std::memcpy(&count, tracked->data.data(), sizeof count);
  EXPECT_EQ(count, 3);
  Model<float> other(config.model, ctx, 4);
  restore_state_tensors(loaded, ctx, other.state());
  for (size_t i = 0; i < flat.size(); ++i) EXPECT_EQ(other.state().values().data()[i], flat[i]);
  EXPECT_NE(flat[model.state().entries()[3].offset], 0.0f);  // bn2's running mean moved

  // A file without them (written for a model without batchnorm) names the first missing tensor.
  save_weights(path, {tensors[0], tensors[1]}, to_yaml(config));
  try {
    restore_state_tensors(load_weights(path), ctx, other.state());
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 'bn1.num_batches_tracked' is missing"), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir);
}

// --check-numerics covers the running statistics: a NaN there after the step is named.
TEST(BatchNormModel, CheckNumericsNamesANonFiniteRunningStatistic) {
  const Config config = parse_config(kBnNet, "t.yaml");
  DeviceContext ctx;
  Model<float> model(config.model, ctx, 4);
  model.params().initialize(1);
  NumericsChecker checker(ctx, model);
  model.set_observer(&checker);
  std::vector<float> x(4 * 36);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 11) * 0.2f;
  const std::vector<int32_t> y{0, 1, 2, 0};
  double sums[2] = {0, 0};
  model.forward(ctx, TensorView<const float>{x.data(), 4, {1, 6, 6}}, Phase::Train, {});
  model.backward(ctx, y.data(), 0.25f, sums, nullptr);
  model.end_train_step(ctx);
  checker.parameters_updated(ctx, model.params());
  checker.state_updated(ctx, model.state());
  EXPECT_NO_THROW(checker.end_step(ctx, 0, 0));
  model.state().values().data()[model.state().entries()[1].offset + 1] = std::nanf("");
  checker.state_updated(ctx, model.state());
  try {
    checker.end_step(ctx, 4, 0);
    FAIL() << "no error";
  } catch (const NumericsError& e) {
    EXPECT_EQ(e.check(), NumericsCheck::StateAfterStep);
    EXPECT_EQ(e.layer(), "bn1");
    EXPECT_NE(std::string(e.what()).find("at step 5 (epoch 1): state after the step of bn1.running_var"), std::string::npos)
        << e.what();
  }
}

TEST(BatchNormPlan, ATailSplitsAtGroupBoundaries) {
  // 100 samples, global batch 64 over 2 ranks, groups of 8: the tail of 36 is 5 units (4 x 8, 1 x 4).
  const BatchPlan plan(100, 64, 2, 8);
  EXPECT_EQ(plan.shard(0, 1).first, 32);
  EXPECT_EQ(plan.shard(0, 1).count, 32);
  EXPECT_EQ(plan.shard(1, 0).first, 64);
  EXPECT_EQ(plan.shard(1, 0).count, 24);  // 3 units
  EXPECT_EQ(plan.shard(1, 1).first, 88);
  EXPECT_EQ(plan.shard(1, 1).count, 12);  // 8 + the short 4
  // Fewer units than ranks: a rank may get nothing.
  const BatchPlan small(68, 64, 4, 8);
  int total = 0;
  for (int r = 0; r < 4; ++r) total += small.shard(1, r).count;
  EXPECT_EQ(total, 4);
  EXPECT_EQ(small.shard(1, 0).count, 4);
  EXPECT_EQ(small.shard(1, 3).count, 0);
}

}  // namespace
}  // namespace dptrain
