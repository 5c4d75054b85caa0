#include "optim/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "core/error.h"

namespace dptrain {

LrSchedule::LrSchedule(const ScheduleConfig& config, double base_lr, int64_t steps_per_epoch, int64_t total_steps)
    : config_(config), base_lr_(base_lr), steps_per_epoch_(std::max<int64_t>(1, steps_per_epoch)),
      total_steps_(std::max<int64_t>(1, total_steps)) {
  if (config.type != "constant" && config.type != "step" && config.type != "cosine")
    throw InputError("train.schedule.type", "unknown schedule '" + config.type + "' (constant, step, cosine)");
  if (config.type == "step" && config.step_size <= 0) throw InputError("train.schedule.step_size", "must be > 0");
  if (config.type == "step" && !(config.gamma > 0)) throw InputError("train.schedule.gamma", "must be > 0");
  if (config.warmup_steps < 0) throw InputError("train.schedule.warmup_steps", "must be >= 0");
}

double LrSchedule::lr(int64_t step) const {
  double lr = base_lr_;
  if (config_.type == "step") {
    const int64_t epoch = step / steps_per_epoch_;
    lr = base_lr_ * std::pow(config_.gamma, static_cast<double>(epoch / config_.step_size));
  } else if (config_.type == "cosine") {
    const double t = std::min(1.0, static_cast<double>(step) / static_cast<double>(total_steps_));
    lr = config_.min_lr + (base_lr_ - config_.min_lr) * 0.5 * (1.0 + std::cos(std::numbers::pi * t));
  }
  if (config_.warmup_steps > 0)
    lr *= std::min(1.0, static_cast<double>(step + 1) / static_cast<double>(config_.warmup_steps));
  return lr;
}

}  // namespace dptrain
