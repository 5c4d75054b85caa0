// The onecycle and linear schedules against PyTorch's formulas, written out here independently of
// src/optim/lr_schedule.cpp (OneCycleLR.get_lr's loop over its phase table, LinearLR's closed
// form), over many steps and settings, including run lengths that pct_start does not divide and
// pct_start at its edges; the momentum (SGD) or beta1 (Adam) cycling reaching an optimizer step with
// known numbers; and the config errors naming their keys.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <numbers>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "core/error.h"
#include "data/dataset.h"
#include "io/config.h"
#include "model/model.h"
#include "optim/lr_schedule.h"
#include "optim/optimizer.h"
#include "train/trainer.h"

namespace dptrain {
namespace {

/// torch.optim.lr_scheduler.OneCycleLR (three_phase=False), as its get_lr reads: a table of two
/// phases, walked until step_num <= end_step or the last phase. Returns {lr, momentum}.
struct TorchOneCycle {
  double max_lr, pct_start = 0.3, div_factor = 25, final_div_factor = 1e4;
  bool cos = true;
  double base_momentum = 0.85, max_momentum = 0.95;
  int64_t total_steps;

  std::pair<double, double> at(int64_t step_num) const {
    const double initial_lr = max_lr / div_factor, min_lr = initial_lr / final_div_factor;
    struct Phase {
      double end_step, start_lr, end_lr, start_momentum, end_momentum;
    };
    const Phase phases[2] = {
        {pct_start * static_cast<double>(total_steps) - 1, initial_lr, max_lr, max_momentum, base_momentum},
        {static_cast<double>(total_steps) - 1, max_lr, min_lr, base_momentum, max_momentum}};
    const auto anneal = [&](double start, double end, double pct) {
      if (cos) return end + (start - end) / 2.0 * (std::cos(std::numbers::pi * pct) + 1);
      return (end - start) * pct + start;
    };
    double start_step = 0;
    for (int i = 0; i < 2; ++i) {
      const Phase& p = phases[i];
      if (static_cast<double>(step_num) <= p.end_step || i == 1) {
        const double pct = (static_cast<double>(step_num) - start_step) / (p.end_step - start_step);
        return {anneal(p.start_lr, p.end_lr, pct), anneal(p.start_momentum, p.end_momentum, pct)};
      }
      start_step = p.end_step;
    }
    return {0, 0};
  }
};

ScheduleConfig onecycle_config(const TorchOneCycle& t) {
  ScheduleConfig s;
  s.type = "onecycle";
  s.max_lr = t.max_lr, s.pct_start = t.pct_start, s.div_factor = t.div_factor, s.final_div_factor = t.final_div_factor;
  s.anneal = t.cos ? "cos" : "linear";
  s.base_momentum = t.base_momentum, s.max_momentum = t.max_momentum;
  return s;
}

TEST(OneCycle, HandComputedPoints) {
  // max_lr 1, 10 steps, pct_start 0.3: warm-up ends at step 2 (0.3 * 10 - 1), from 1/25 to 1.
  ScheduleConfig s;
  s.type = "onecycle";
  s.max_lr = 1.0;
  const LrSchedule sched(s, /*base_lr (unused)=*/123.0, 5, 10);
  EXPECT_NEAR(sched.lr(0), 0.04, 1e-15);
  EXPECT_NEAR(sched.lr(1), 0.52, 1e-15);  // cos half way: 0.04 + 0.96 / 2
  EXPECT_NEAR(sched.lr(2), 1.0, 1e-15);
  EXPECT_NEAR(sched.lr(9), 0.04 / 1e4, 1e-17);
  EXPECT_NEAR(*sched.momentum(0), 0.95, 1e-15);
  EXPECT_NEAR(*sched.momentum(1), 0.90, 1e-15);
  EXPECT_NEAR(*sched.momentum(2), 0.85, 1e-15);
  EXPECT_NEAR(*sched.momentum(9), 0.95, 1e-15);
  // Linear annealing, second phase half way (step 2 + 3.5 = 5.5 is not a step; 7 steps long).
  s.anneal = "linear";
  const LrSchedule lin(s, 1.0, 5, 10);
  EXPECT_NEAR(lin.lr(1), 0.52, 1e-15);
  EXPECT_NEAR(lin.lr(9), 4e-6, 1e-17);
  EXPECT_NEAR(lin.lr(3), 1.0 + (4e-6 - 1.0) / 7.0, 1e-15);
  // Reports past the end (next_lr of the final checkpoint) take the last step's value.
  EXPECT_EQ(sched.lr(10), sched.lr(9));
  EXPECT_EQ(sched.lr(1000), sched.lr(9));
}

TEST(OneCycle, MatchesTorchFormulaOverManySettings) {
  std::vector<TorchOneCycle> cases;
  for (const int64_t total : {1L, 2L, 7L, 10L, 11L, 97L, 938L * 3, 1001L})
    for (const double pct : {0.0, 0.05, 0.25, 0.3, 0.5, 0.999, 1.0})
      for (const bool cos : {true, false}) {
        TorchOneCycle t{};
        t.max_lr = 0.01, t.pct_start = pct, t.cos = cos, t.total_steps = total;
        if (pct * static_cast<double>(total) - 1 == 0.0) continue;  // PyTorch divides 0 by 0 (an error here: below)
        cases.push_back(t);
      }
  TorchOneCycle odd{};  // other factors and momentum ends
  odd.max_lr = 3.0, odd.pct_start = 0.37, odd.div_factor = 7, odd.final_div_factor = 3, odd.base_momentum = 0.5,
  odd.max_momentum = 0.99, odd.total_steps = 123;
  cases.push_back(odd);
  odd.cos = false;
  cases.push_back(odd);
  for (const TorchOneCycle& t : cases) {
    const LrSchedule sched(onecycle_config(t), 1.0, 17, t.total_steps);
    for (int64_t step = 0; step < t.total_steps; ++step) {
      const auto [lr, momentum] = t.at(step);
      const std::string at = "total " + std::to_string(t.total_steps) + " pct_start " + std::to_string(t.pct_start) +
                             (t.cos ? " cos" : " linear") + " step " + std::to_string(step);
      ASSERT_NEAR(sched.lr(step), lr, 1e-12 * t.max_lr) << at;
      ASSERT_TRUE(sched.momentum(step).has_value()) << at;
      ASSERT_NEAR(*sched.momentum(step), momentum, 1e-12) << at;
    }
  }
}

TEST(OneCycle, ZeroLengthWarmUpAndNoCyclingAreHandled) {
  ScheduleConfig s;
  s.type = "onecycle";
  s.max_lr = 0.1;
  s.pct_start = 0.1;  // 0.1 * 10 - 1 = 0: PyTorch's first step is 0 / 0
  try {
    LrSchedule(s, 1.0, 10, 10);
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("train.schedule.pct_start"), std::string::npos) << e.what();
  }
  s.pct_start = 0.3;
  s.cycle_momentum = false;
  EXPECT_FALSE(LrSchedule(s, 1.0, 10, 10).momentum(3).has_value());
  ScheduleConfig constant;
  EXPECT_FALSE(LrSchedule(constant, 1.0, 10, 10).momentum(3).has_value());
}

TEST(LinearSchedule, MatchesLinearLRClosedForm) {
  // torch.optim.lr_scheduler.LinearLR._get_closed_form_lr:
  // base_lr * (start + (end - start) * min(total_iters, last_epoch) / total_iters)
  struct Case {
    double start, end;
    int64_t iters;
  };
  for (const Case c : {Case{1.0, 0.0, 0}, Case{1.0 / 3, 1.0, 5}, Case{0.5, 0.1, 37}, Case{1.0, 1.0, 3}}) {
    ScheduleConfig s;
    s.type = "linear";
    s.start_factor = c.start, s.end_factor = c.end, s.total_iters = c.iters;
    const int64_t planned = 101;
    const LrSchedule sched(s, 0.3, 10, planned);
    const int64_t iters = c.iters > 0 ? c.iters : planned;
    for (int64_t step = 0; step < 150; ++step) {
      const double want =
          0.3 * (c.start + (c.end - c.start) * static_cast<double>(std::min(iters, step)) / static_cast<double>(iters));
      ASSERT_NEAR(sched.lr(step), want, 1e-15) << "step " << step;
    }
  }
  // The defaults: a decay from the base rate to 0 over the planned run.
  ScheduleConfig d;
  d.type = "linear";
  const LrSchedule decay(d, 2.0, 10, 100);
  EXPECT_DOUBLE_EQ(decay.lr(0), 2.0);
  EXPECT_DOUBLE_EQ(decay.lr(50), 1.0);
  EXPECT_DOUBLE_EQ(decay.lr(100), 0.0);
}

TEST(CycledMomentum, ReachesSgdStep) {
  // torch.optim.SGD with momentum set per step by OneCycleLR: buf_1 = g_1, buf_t = m_t buf + g_t.
  OptimizerConfig c;
  c.type = "sgd";
  ScheduleConfig s;
  s.type = "onecycle";
  s.max_lr = 0.5;
  const OptimizerConfig o = scheduled_optimizer(c, s);
  EXPECT_DOUBLE_EQ(o.momentum, 0.95);  // OneCycleLR sets max_momentum when constructed
  auto opt = make_optimizer(o, Device::Cpu, 1);
  ASSERT_EQ(opt->slot_names().size(), 1u);  // a momentum buffer, though the config said momentum 0
  DeviceContext ctx;
  std::vector<float> p{1.0f};
  const float g1 = 0.5f, g2 = -0.25f;
  const double m1 = 0.9, m2 = 0.8;
  StepScalars s1 = opt->scalars(0.1, 1, m1);
  EXPECT_EQ(s1.momentum, static_cast<float>(m1));
  std::vector<float> g{g1};
  opt->step(ctx, p, g, &s1);
  const StepScalars s2 = opt->scalars(0.2, 2, m2);
  g = {g2};
  opt->step(ctx, p, g, &s2);
  const double buf2 = m2 * g1 + g2;
  EXPECT_NEAR(p[0], 1.0 - 0.1 * g1 - 0.2 * buf2, 1e-6);
  // Without a cycled value the configured momentum holds.
  EXPECT_EQ(opt->scalars(0.1, 3).momentum, 0.95f);
}

TEST(CycledMomentum, ReachesAdamWithTheCurrentBeta1InItsBiasCorrection) {
  // torch.optim.Adam under OneCycleLR: exp_avg.lerp_(g, 1 - beta1_t) and bias_correction1 =
  // 1 - beta1_t ** t with this step's beta1.
  OptimizerConfig c;
  c.type = "adam";
  c.eps = 1e-8;
  auto opt = make_optimizer(c, Device::Cpu, 1);
  DeviceContext ctx;
  std::vector<float> p{1.0f};
  const double grads[3] = {0.5, -0.25, 0.125}, betas[3] = {0.95, 0.9, 0.85}, lrs[3] = {0.01, 0.02, 0.03};
  double want = 1.0, m = 0, v = 0;
  for (int t = 1; t <= 3; ++t) {
    const double g = grads[t - 1], b1 = betas[t - 1], lr = lrs[t - 1];
    const StepScalars s = opt->scalars(lr, t, b1);
    EXPECT_FLOAT_EQ(s.bias_correction1, static_cast<float>(1.0 - std::pow(b1, t)));
    std::vector<float> gv{static_cast<float>(g)};
    opt->step(ctx, p, gv, &s);
    m = b1 * m + (1 - b1) * g;
    v = 0.999 * v + 0.001 * g * g;
    want -= lr / (1.0 - std::pow(b1, t)) * m / (std::sqrt(v) / std::sqrt(1.0 - std::pow(0.999, t)) + 1e-8);
    EXPECT_NEAR(p[0], want, 2e-6) << "step " << t;
  }
  // The configured beta1 when nothing cycles it.
  EXPECT_EQ(opt->scalars(0.01, 2).momentum, 0.9f);
  EXPECT_FLOAT_EQ(opt->scalars(0.01, 2).bias_correction1, static_cast<float>(1.0 - 0.81));
}

std::string config_error(const std::string& train_yaml, const std::string& model_extra = "") {
  const std::string yaml = "model:\n" + model_extra +
                           "  layers:\n    - {name: fc, type: linear, out_features: 10}\ntrain:\n" + train_yaml;
  try {
    parse_config(yaml, "test.yaml");
  } catch (const InputError& e) {
    return e.what();
  }
  return "no error";
}

TEST(ScheduleConfig, ErrorsNameTheKey) {
  const auto names = [](const std::string& train, const std::string& key) {
    const std::string e = config_error(train);
    EXPECT_NE(e.find("'" + key + "'"), std::string::npos) << train << " -> " << e;
  };
  const std::string sgd = "  optimizer: {type: sgd, lr: 0.1}\n";
  names(sgd + "  schedule: {type: onecycle}\n", "train.schedule.max_lr");
  names(sgd + "  schedule: {type: onecycle, max_lr: -1}\n", "train.schedule.max_lr");
  names(sgd + "  schedule: {type: onecycle, max_lr: 1, pct_start: 1.5}\n", "train.schedule.pct_start");
  names(sgd + "  schedule: {type: onecycle, max_lr: 1, div_factor: 0}\n", "train.schedule.div_factor");
  names(sgd + "  schedule: {type: onecycle, max_lr: 1, final_div_factor: -2}\n", "train.schedule.final_div_factor");
  names(sgd + "  schedule: {type: onecycle, max_lr: 1, anneal: exp}\n", "train.schedule.anneal");
  names(sgd + "  schedule: {type: onecycle, max_lr: 1, max_momentum: 1}\n", "train.schedule.max_momentum");
  names(sgd + "  schedule: {type: onecycle, max_lr: 1, base_momentum: 0}\n", "train.schedule.base_momentum");
  names(sgd + "  schedule: {type: onecycle, max_lr: 1, warmup_steps: 10}\n", "train.schedule.warmup_steps");
  names(sgd + "  schedule: {type: onecycle, max_lr: 1, gamma: 0.5}\n", "train.schedule.gamma");  // not onecycle's
  names("  optimizer: {type: adadelta}\n  schedule: {type: onecycle, max_lr: 1}\n", "train.schedule.cycle_momentum");
  names(sgd + "  schedule: {type: linear, start_factor: 0}\n", "train.schedule.start_factor");
  names(sgd + "  schedule: {type: linear, end_factor: 1.5}\n", "train.schedule.end_factor");
  names(sgd + "  schedule: {type: linear, total_iters: -1}\n", "train.schedule.total_iters");
  names(sgd + "  schedule: {type: linear, max_lr: 1}\n", "train.schedule.max_lr");  // not linear's
  names("  label_smoothing: 1.0\n", "train.label_smoothing");
  names("  label_smoothing: -0.1\n", "train.label_smoothing");
  // Adadelta with onecycle works once nothing is to be cycled; Adam cycles beta1.
  EXPECT_EQ(config_error("  optimizer: {type: adadelta}\n  schedule: {type: onecycle, max_lr: 1, cycle_momentum: false}\n"),
            "no error");
  EXPECT_EQ(config_error("  optimizer: {type: adam}\n  schedule: {type: onecycle, max_lr: 0.01}\n"), "no error");
}

TEST(ScheduleConfig, RoundTripsThroughTheResolvedYaml) {
  const std::string yaml = R"(
model:
  layers:
    - {name: fc, type: linear, out_features: 10}
train:
  label_smoothing: 0.1
  optimizer: {type: adam}
  schedule: {type: onecycle, max_lr: 0.004, pct_start: 0.25, anneal: linear, cycle_momentum: true, base_momentum: 0.8}
)";
  const Config c = parse_config(yaml, "test.yaml");
  EXPECT_DOUBLE_EQ(c.train.label_smoothing, 0.1);
  EXPECT_EQ(c.train.schedule.type, "onecycle");
  EXPECT_DOUBLE_EQ(c.train.schedule.max_lr, 0.004);
  EXPECT_DOUBLE_EQ(c.train.schedule.pct_start, 0.25);
  EXPECT_DOUBLE_EQ(c.train.schedule.div_factor, 25.0);  // PyTorch's defaults
  EXPECT_DOUBLE_EQ(c.train.schedule.final_div_factor, 1e4);
  EXPECT_EQ(c.train.schedule.anneal, "linear");
  EXPECT_DOUBLE_EQ(c.train.schedule.base_momentum, 0.8);
  EXPECT_DOUBLE_EQ(c.train.schedule.max_momentum, 0.95);
  const Config back = parse_config(to_yaml(c), "resolved.yaml");
  EXPECT_EQ(to_yaml(back), to_yaml(c));
  EXPECT_DOUBLE_EQ(back.train.schedule.max_lr, 0.004);
  EXPECT_DOUBLE_EQ(back.train.label_smoothing, 0.1);
  const Config lin = parse_config(
      "model:\n  layers:\n    - {name: fc, type: linear, out_features: 10}\ntrain:\n"
      "  schedule: {type: linear, start_factor: 0.5, end_factor: 0.1, total_iters: 40}\n",
      "lin.yaml");
  const Config lin_back = parse_config(to_yaml(lin), "resolved.yaml");
  EXPECT_DOUBLE_EQ(lin_back.train.schedule.start_factor, 0.5);
  EXPECT_DOUBLE_EQ(lin_back.train.schedule.end_factor, 0.1);
  EXPECT_EQ(lin_back.train.schedule.total_iters, 40);
}

TEST(ScheduleConfig, ShippedOneCycleConfigLoadsAndBuilds) {
  const Config c = load_config(std::string(DPTRAIN_SOURCE_DIR) + "/configs/mnist_onecycle.yaml");
  EXPECT_EQ(c.train.schedule.type, "onecycle");
  EXPECT_DOUBLE_EQ(c.train.schedule.max_lr, 0.01);
  EXPECT_TRUE(c.train.schedule.cycle_momentum);
  EXPECT_DOUBLE_EQ(c.train.label_smoothing, 0.1);
  DeviceContext ctx;
  Model<float> model(c.model, ctx, 2, c.train.label_smoothing);  // shapes check layer by layer
  EXPECT_EQ(model.layers()[8]->type(), "global_avgpool");
  EXPECT_EQ(model.layers()[8]->output_dims(), (Dims{128, 1, 1}));
  EXPECT_EQ(model.layers()[5]->output_dims(), (Dims{64, 7, 7}));
}

const std::string kData = DPTRAIN_TEST_DATA_DIR;
bool have_mnist() {
  return std::filesystem::exists(kData + "/train-labels-idx1-ubyte.gz") ||
         std::filesystem::exists(kData + "/train-labels-idx1-ubyte");
}

std::vector<float> train_params(const MnistData& data, int steps, const std::vector<std::string>& sets) {
  const Config config = load_config(std::string(DPTRAIN_SOURCE_DIR) + "/configs/mnist_onecycle.yaml", sets);
  DeviceContext cpu;
  SingleRankCommunicator comm;
  TrainOptions options;
  options.show_progress = false;
  options.out_dir = (std::filesystem::temp_directory_path() / "dptrain_schedule_test").string();
  Trainer trainer(config, options, data, cpu, comm);
  for (int s = 0; s < steps; ++s) trainer.step(0, s, s);
  const auto& p = trainer.model().params();
  return {p.values().data(), p.values().data() + p.size()};
}

// The trainer hands the schedule's momentum to the optimizer step by step: cycling between equal
// ends is exactly SGD with that fixed momentum, bit for bit, and cycling between different ends is
// not.
TEST(CycledMomentum, ReachesTheTrainersSteps) {
  if (!have_mnist()) GTEST_SKIP() << "MNIST not in " << kData;
  const MnistData data = load_mnist_dir(kData);
  const std::string sgd = "train.optimizer={type: sgd, lr: 0.01, momentum: 0.9}";
  const std::vector<float> fixed = train_params(data, 4, {sgd, "train.schedule.cycle_momentum=false"});
  const std::vector<float> flat =
      train_params(data, 4, {sgd, "train.schedule.base_momentum=0.9", "train.schedule.max_momentum=0.9"});
  const std::vector<float> cycled = train_params(data, 4, {sgd});
  EXPECT_EQ(flat, fixed);
  EXPECT_NE(cycled, fixed);
}

TEST(NumClasses, TwoToOneThousand) {
  const auto model = [](int classes) {
    return "model:\n  num_classes: " + std::to_string(classes) + "\n  layers:\n    - {name: fc, type: linear, out_features: " +
           std::to_string(classes) + "}\n";
  };
  for (const int ok : {2, 47, 1000}) {
    try {
      EXPECT_EQ(parse_config(model(ok), "t.yaml").model.num_classes, ok);
    } catch (const InputError& e) {
      ADD_FAILURE() << ok << ": " << e.what();
    }
  }
  for (const int bad : {1, 1001}) {
    try {
      parse_config(model(bad), "t.yaml");
      ADD_FAILURE() << bad << ": no error";
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find("'model.num_classes'"), std::string::npos) << e.what();
    }
  }
}

// A whole short run (training steps, then the test-set evaluation) with 47 and 1000 classes on
// MNIST's ten labels: the loss and evaluation paths take any class count in range.
TEST(NumClasses, ShortRunsTrainAndEvaluateAt47And1000Classes) {
  if (!have_mnist()) GTEST_SKIP() << "MNIST not in " << kData;
  const MnistData data = load_mnist_dir(kData);
  for (const int classes : {47, 1000}) {
    const std::string c = std::to_string(classes);
    const Config config = load_config(
        std::string(DPTRAIN_SOURCE_DIR) + "/configs/mnist_onecycle.yaml",
        {"model.num_classes=" + c, "model.layers=[{type: avgpool2d, kernel: 4}, {type: flatten}, {type: linear, out_features: " + c + "}]",
         "train.max_steps=30", "train.optimizer={type: sgd, lr: 0.1}", "train.schedule.max_lr=0.5"});
    DeviceContext cpu;
    SingleRankCommunicator comm;
    TrainOptions options;
    options.show_progress = false;
    options.out_dir = (std::filesystem::temp_directory_path() / ("dptrain_classes_" + c)).string();
    std::filesystem::remove_all(options.out_dir);
    std::filesystem::create_directories(options.out_dir);
    Trainer trainer(config, options, data, cpu, comm);
    const TrainSummary summary = trainer.run();
    EXPECT_EQ(summary.steps, 30);
    EXPECT_EQ(summary.final_eval.count, data.test.count);
    EXPECT_TRUE(std::isfinite(summary.final_eval.loss));
    // 30 steps of a linear classifier on pooled pixels learn the ten labels well past chance and
    // put little mass on the classes no label uses.
    EXPECT_GT(summary.final_eval.accuracy, 0.5) << classes << " classes";
    EXPECT_LT(summary.final_eval.loss, std::log(static_cast<double>(classes))) << classes << " classes";
  }
}

}  // namespace
}  // namespace dptrain
