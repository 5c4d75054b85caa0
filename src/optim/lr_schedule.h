// Learning-rate (and momentum) schedules as pure functions of the global step, so a resumed run and
// a run on any number of ranks use the same values at every step.
#pragma once

#include <cstdint>
#include <optional>

#include "io/config.h"

namespace dptrain {

class LrSchedule {
 public:
  /// total_steps is the planned length of the run (cosine, onecycle, linear's default);
  /// steps_per_epoch maps steps to epochs. Throws InputError (naming the key) for a onecycle whose
  /// phase would have zero length for this many steps (PyTorch divides by zero there).
  LrSchedule(const ScheduleConfig& config, double base_lr, int64_t steps_per_epoch, int64_t total_steps);

  /// Rate for the 0-based global step `step`:
  ///  constant: base;  step: base * gamma^(epoch / step_size) (PyTorch StepLR stepped each epoch);
  ///  cosine: min + (base - min) * (1 + cos(pi * step / total)) / 2;
  ///  linear: base * (start + (end - start) * min(step, iters) / iters) (LinearLR's closed form,
  ///    stepped every step; iters = total_iters, or the planned run when 0);
  ///  onecycle: OneCycleLR (three_phase=False) after `step` scheduler steps, with total_steps = the
  ///    planned run; a step past its end (only ever reported, never trained) takes the last value;
  ///  then, if warmup_steps > 0 (not onecycle), times min(1, (step + 1) / warmup_steps).
  double lr(int64_t step) const;

  /// The momentum (SGD) or beta1 (Adam/AdamW) for `step` when the schedule cycles it (onecycle with
  /// cycle_momentum), else nothing: the optimizer's own value holds.
  std::optional<double> momentum(int64_t step) const;

 private:
  /// OneCycleLR's phase arithmetic for lr (momentum=false) or momentum.
  double onecycle(int64_t step, bool momentum) const;

  ScheduleConfig config_;
  double base_lr_;
  int64_t steps_per_epoch_;
  int64_t total_steps_;
};

/// The optimizer settings a schedule starts from: with onecycle's cycle_momentum, SGD's momentum or
/// Adam's beta1 is max_momentum (as OneCycleLR sets it when constructed), so SGD keeps a momentum
/// buffer. Otherwise `optimizer` unchanged.
OptimizerConfig scheduled_optimizer(const OptimizerConfig& optimizer, const ScheduleConfig& schedule);

}  // namespace dptrain
