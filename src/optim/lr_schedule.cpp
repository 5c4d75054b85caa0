#include "optim/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "core/error.h"

namespace dptrain {

LrSchedule::LrSchedule(const ScheduleConfig& config, double base_lr, int64_t steps_per_epoch, int64_t total_steps)
    : config_(config), base_lr_(base_lr), steps_per_epoch_(std::max<int64_t>(1, steps_per_epoch)),
      total_steps_(std::max<int64_t>(1, total_steps)) {
  const std::string& t = config.type;
  if (t != "constant" && t != "step" && t != "cosine" && t != "onecycle" && t != "linear")
    throw InputError("train.schedule.type", "unknown schedule '" + t + "' (constant, step, cosine, onecycle, linear)");
  if (t == "step" && config.step_size <= 0) throw InputError("train.schedule.step_size", "must be > 0");
  if (t == "step" && !(config.gamma > 0)) throw InputError("train.schedule.gamma", "must be > 0");
  if (config.warmup_steps < 0) throw InputError("train.schedule.warmup_steps", "must be >= 0");
  if (t == "linear" && config.total_iters < 0) throw InputError("train.schedule.total_iters", "must be >= 0");
  if (t == "onecycle") {
    if (!(config.max_lr > 0)) throw InputError("train.schedule.max_lr", "must be > 0");
    if (!(config.pct_start >= 0 && config.pct_start <= 1)) throw InputError("train.schedule.pct_start", "must be in [0, 1]");
    if (config.anneal != "cos" && config.anneal != "linear")
      throw InputError("train.schedule.anneal", "must be cos or linear");
    // OneCycleLR's warm-up phase ends at step pct_start * total - 1; at 0 its first step divides 0 by 0.
    if (config.pct_start * static_cast<double>(total_steps_) - 1.0 == 0.0)
      throw InputError("train.schedule.pct_start",
                       "pct_start x the run's " + std::to_string(total_steps_) +
                           " steps is exactly 1: a one-step warm-up that PyTorch's OneCycleLR divides by zero in "
                           "(choose another pct_start)");
  }
}

double LrSchedule::onecycle(int64_t step, bool momentum) const {
  const ScheduleConfig& c = config_;
  // Beyond the last step PyTorch raises (or extrapolates at exactly total_steps); only reports ask.
  const double t = static_cast<double>(std::min(step, total_steps_ - 1));
  const double initial = c.max_lr / c.div_factor, min_lr = initial / c.final_div_factor;
  // Phase ends as OneCycleLR computes them: float(pct_start * total_steps) - 1 and total_steps - 1.
  const double end1 = c.pct_start * static_cast<double>(total_steps_) - 1.0;
  const double end2 = static_cast<double>(total_steps_) - 1.0;
  double start_step = 0.0, end_step = end1, from = 0.0, to = 0.0;
  if (t <= end1) {
    from = momentum ? c.max_momentum : initial, to = momentum ? c.base_momentum : c.max_lr;
  } else {
    start_step = end1, end_step = end2;
    from = momentum ? c.base_momentum : c.max_lr, to = momentum ? c.max_momentum : min_lr;
  }
  const double pct = (t - start_step) / (end_step - start_step);
  if (c.anneal == "linear") return (to - from) * pct + from;
  const double cos_out = std::cos(std::numbers::pi * pct) + 1.0;  // _annealing_cos
  return to + (from - to) / 2.0 * cos_out;
}

double LrSchedule::lr(int64_t step) const {
  if (config_.type == "onecycle") return onecycle(step, false);
  double lr = base_lr_;
  if (config_.type == "step") {
    const int64_t epoch = step / steps_per_epoch_;
    lr = base_lr_ * std::pow(config_.gamma, static_cast<double>(epoch / config_.step_size));
  } else if (config_.type == "cosine") {
    const double t = std::min(1.0, static_cast<double>(step) / static_cast<double>(total_steps_));
    lr = config_.min_lr + (base_lr_ - config_.min_lr) * 0.5 * (1.0 + std::cos(std::numbers::pi * t));
  } else if (config_.type == "linear") {
    const int64_t iters = config_.total_iters > 0 ? config_.total_iters : total_steps_;
    const double done = static_cast<double>(std::min(step, iters));
    lr = base_lr_ * (config_.start_factor +
                     (config_.end_factor - config_.start_factor) * done / static_cast<double>(iters));
  }
  if (config_.warmup_steps > 0)
    lr *= std::min(1.0, static_cast<double>(step + 1) / static_cast<double>(config_.warmup_steps));
  return lr;
}

std::optional<double> LrSchedule::momentum(int64_t step) const {
  if (config_.type != "onecycle" || !config_.cycle_momentum) return std::nullopt;
  return onecycle(step, true);
}

OptimizerConfig scheduled_optimizer(const OptimizerConfig& optimizer, const ScheduleConfig& schedule) {
  OptimizerConfig o = optimizer;
  if (schedule.type != "onecycle" || !schedule.cycle_momentum) return o;
  if (o.type == "sgd") o.momentum = schedule.max_momentum;
  else if (o.type == "adam" || o.type == "adamw") o.beta1 = schedule.max_momentum;
  else throw InputError("train.schedule.cycle_momentum", o.type + " has no momentum or beta1 to cycle (set cycle_momentum: false)");
  return o;
}

}  // namespace dptrain
