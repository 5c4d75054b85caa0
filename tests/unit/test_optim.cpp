// Optimizers against steps computed by hand from torch.optim's formulas (in double, compared at
// float tolerance), their configuration errors, the zero padding staying zero, and the schedules.
#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "optim/lr_schedule.h"
#include "optim/optimizer.h"

namespace dptrain {
namespace {

struct OptimizerRun {
  std::vector<float> p;
  std::unique_ptr<Optimizer> opt;
};

/// Runs `steps` updates with gradient g_t = grads[t] on a 2-element parameter (plus a zero pad).
OptimizerRun run(const OptimizerConfig& c, std::vector<float> p, const std::vector<std::vector<float>>& grads, double lr) {
  DeviceContext ctx;
  OptimizerRun r{std::move(p), make_optimizer(c, Device::Cpu, 3)};
  r.p.push_back(0.0f);
  for (size_t t = 0; t < grads.size(); ++t) {
    std::vector<float> g = grads[t];
    g.push_back(0.0f);
    const StepScalars s = r.opt->scalars(lr, static_cast<int64_t>(t + 1));
    r.opt->step(ctx, r.p, g, &s);
  }
  return r;
}

const std::vector<std::vector<float>> kGrads = {{0.5f, -1.0f}, {0.25f, 2.0f}, {-0.75f, 0.5f}};

TEST(Sgd, MomentumNesterovWeightDecay) {
  OptimizerConfig c;
  c.type = "sgd";
  c.momentum = 0.9;
  c.weight_decay = 0.01;
  c.nesterov = true;
  const OptimizerRun r = run(c, {1.0f, -2.0f}, kGrads, 0.1);
  for (int j = 0; j < 2; ++j) {
    double p = j == 0 ? 1.0 : -2.0, buf = 0;
    for (size_t t = 0; t < kGrads.size(); ++t) {
      double g = kGrads[t][static_cast<size_t>(j)] + 0.01 * p;
      buf = t == 0 ? g : 0.9 * buf + g;
      g = g + 0.9 * buf;
      p -= 0.1 * g;
    }
    EXPECT_NEAR(r.p[static_cast<size_t>(j)], p, 1e-6);
    EXPECT_NEAR(r.opt->slot(0).data()[j], buf, 1e-6);
  }
  EXPECT_EQ(r.opt->slot_names(), std::vector<std::string>{"momentum_buffer"});
  EXPECT_EQ(r.p[2], 0.0f);
}

TEST(Sgd, PlainAndDampenedMomentum) {
  OptimizerConfig c;
  c.type = "sgd";
  EXPECT_NEAR(run(c, {1.0f, 1.0f}, kGrads, 0.5).p[0], 1.0 - 0.5 * (0.5 + 0.25 - 0.75), 1e-6);
  EXPECT_TRUE(run(c, {1.0f, 1.0f}, kGrads, 0.5).opt->slot_names().empty());
  c.momentum = 0.5;
  c.dampening = 0.5;
  // buf1 = g1 (no dampening at the first step); buf2 = 0.5 buf1 + 0.5 g2
  const double b1 = 0.5, b2 = 0.5 * b1 + 0.5 * 0.25, b3 = 0.5 * b2 + 0.5 * -0.75;
  EXPECT_NEAR(run(c, {1.0f, 1.0f}, kGrads, 0.1).p[0], 1.0 - 0.1 * (b1 + b2 + b3), 1e-6);
}

TEST(Adam, MatchesTorchFormulaAndAdamWDecouples) {
  for (bool decoupled : {false, true}) {
    OptimizerConfig c;
    c.type = decoupled ? "adamw" : "adam";
    c.eps = 1e-8;
    c.weight_decay = 0.1;
    const OptimizerRun r = run(c, {1.0f, -2.0f}, kGrads, 0.01);
    for (int j = 0; j < 2; ++j) {
      double p = j == 0 ? 1.0 : -2.0, m = 0, v = 0;
      for (size_t t = 0; t < kGrads.size(); ++t) {
        double g = kGrads[t][static_cast<size_t>(j)];
        if (decoupled) p *= 1 - 0.01 * 0.1;
        else g += 0.1 * p;
        m = 0.9 * m + 0.1 * g;
        v = 0.999 * v + 0.001 * g * g;
        const double n = static_cast<double>(t + 1);
        const double bc1 = 1 - std::pow(0.9, n), bc2 = 1 - std::pow(0.999, n);
        p -= 0.01 / bc1 * m / (std::sqrt(v) / std::sqrt(bc2) + 1e-8);
      }
      EXPECT_NEAR(r.p[static_cast<size_t>(j)], p, 2e-6) << c.type << " " << j;
    }
    EXPECT_EQ(r.p[2], 0.0f);
    EXPECT_EQ(r.opt->slot_names(), (std::vector<std::string>{"exp_avg", "exp_avg_sq"}));
  }
}

TEST(Adadelta, MatchesTorchFormula) {
  OptimizerConfig c;  // defaults: adadelta, rho 0.9, eps 1e-6
  c.weight_decay = 0.05;
  const OptimizerRun r = run(c, {1.0f, -2.0f}, kGrads, 1.0);
  for (int j = 0; j < 2; ++j) {
    double p = j == 0 ? 1.0 : -2.0, sq = 0, acc = 0;
    for (const auto& gt : kGrads) {
      const double g = gt[static_cast<size_t>(j)] + 0.05 * p;
      sq = 0.9 * sq + 0.1 * g * g;
      const double delta = std::sqrt(acc + 1e-6) / std::sqrt(sq + 1e-6) * g;
      acc = 0.9 * acc + 0.1 * delta * delta;
      p -= delta;
    }
    EXPECT_NEAR(r.p[static_cast<size_t>(j)], p, 2e-6);
    EXPECT_NEAR(r.opt->slot(1).data()[j], acc, 1e-7);
  }
  EXPECT_EQ(r.p[2], 0.0f);
  EXPECT_EQ(r.opt->slot(0).data()[2], 0.0f);
}

TEST(Optimizer, BadSettingsNameTheKey) {
  auto error = [](OptimizerConfig c) {
    try {
      make_optimizer(c, Device::Cpu, 4);
    } catch (const InputError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  OptimizerConfig c;
  c.type = "lion";
  EXPECT_NE(error(c).find("train.optimizer.type"), std::string::npos);
  c = OptimizerConfig{};
  c.lr = -1;
  EXPECT_NE(error(c).find("train.optimizer.lr"), std::string::npos);
  c = OptimizerConfig{};
  c.type = "sgd";
  c.nesterov = true;
  EXPECT_NE(error(c).find("train.optimizer.nesterov"), std::string::npos);
  c = OptimizerConfig{};
  c.type = "adam";
  c.beta1 = 1.0;
  EXPECT_NE(error(c).find("train.optimizer.beta1"), std::string::npos);
  c = OptimizerConfig{};
  c.rho = 1.5;
  EXPECT_NE(error(c).find("train.optimizer.rho"), std::string::npos);
}

TEST(LrSchedule, StepCosineConstantAndWarmup) {
  ScheduleConfig s;
  s.type = "step";
  s.gamma = 0.7;
  const LrSchedule step(s, 1.0, 938, 938 * 14);
  EXPECT_DOUBLE_EQ(step.lr(0), 1.0);
  EXPECT_DOUBLE_EQ(step.lr(937), 1.0);
  EXPECT_NEAR(step.lr(938), 0.7, 1e-15);
  EXPECT_NEAR(step.lr(938 * 13 + 5), std::pow(0.7, 13), 1e-15);
  s.step_size = 2;
  EXPECT_NEAR(LrSchedule(s, 1.0, 10, 100).lr(25), 0.7, 1e-15);  // epoch 2: one decay
  EXPECT_NEAR(LrSchedule(s, 1.0, 10, 100).lr(45), 0.49, 1e-15);  // epoch 4: two
  ScheduleConfig cs;
  cs.type = "cosine";
  cs.min_lr = 0.1;
  const LrSchedule cosine(cs, 1.0, 10, 100);
  EXPECT_DOUBLE_EQ(cosine.lr(0), 1.0);
  EXPECT_NEAR(cosine.lr(50), 0.55, 1e-12);
  EXPECT_NEAR(cosine.lr(100), 0.1, 1e-12);
  ScheduleConfig w;
  w.warmup_steps = 4;
  const LrSchedule warm(w, 2.0, 10, 100);
  EXPECT_DOUBLE_EQ(warm.lr(0), 0.5);
  EXPECT_DOUBLE_EQ(warm.lr(3), 2.0);
  EXPECT_DOUBLE_EQ(warm.lr(50), 2.0);
  ScheduleConfig bad;
  bad.type = "exponential";
  EXPECT_THROW(LrSchedule(bad, 1.0, 10, 10), InputError);
}

}  // namespace
}  // namespace dptrain
