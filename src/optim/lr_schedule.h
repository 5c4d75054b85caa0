// Learning-rate schedules as pure functions of the global step, so a resumed run and a run on any
// number of ranks use the same rate at every step.
#pragma once

#include <cstdint>

#include "io/config.h"

namespace dptrain {

class LrSchedule {
 public:
  /// total_steps is the planned length of the run (for cosine); steps_per_epoch maps steps to epochs.
  LrSchedule(const ScheduleConfig& config, double base_lr, int64_t steps_per_epoch, int64_t total_steps);

  /// Rate for the 0-based global step `step`:
  ///  constant: base;  step: base * gamma^(epoch / step_size) (PyTorch StepLR stepped each epoch);
  ///  cosine: min + (base - min) * (1 + cos(pi * step / total)) / 2;
  ///  then, if warmup_steps > 0, times min(1, (step + 1) / warmup_steps).
  double lr(int64_t step) const;

 private:
  ScheduleConfig config_;
  double base_lr_;
  int64_t steps_per_epoch_;
  int64_t total_steps_;
};

}  // namespace dptrain
