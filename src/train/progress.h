// Training progress for people: on a terminal a one-line bar (step, loss, images/s, ETA) redrawn
// in place at most a few times a second; otherwise (a log file, CI) a plain line every log_every
// steps. Only rank 0 shows progress. The ETA is this process's own pace (eta_seconds).
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace dptrain {

class Progress {
 public:
  /// first_step: the step this process starts from (a resumed run's checkpoint, else 0);
  /// total_steps: the step the run ends at (for the bar and ETA); log_every: plain-line period.
  Progress(bool enabled, int64_t first_step, int64_t total_steps, int log_every, std::FILE* out = stderr);

  /// Whether a redraw is due after `step` steps (cheap; lets the caller skip reading the loss).
  /// Steps are counted as done: after the first step, `step` is 1 (as in ckpt-<step>).
  bool due(int64_t step) const;
  /// Shows the state after `step` steps.
  void update(int64_t step, int epoch, double loss, double images_per_second);
  /// Clears the bar line, so the next message starts on a fresh line.
  void clear();

 private:
  bool enabled_;
  bool tty_;
  int64_t first_;
  int64_t total_;
  int log_every_;
  std::FILE* out_;
  std::chrono::steady_clock::time_point start_;
  mutable std::chrono::steady_clock::time_point last_draw_;
  bool drawn_ = false;
};

std::string format_duration(double seconds);

/// Seconds left when `elapsed` seconds of this process took it from step `first_step` to `step`
/// of `total`: the rate of this process alone, so a resumed run's ETA does not count the steps an
/// earlier process took as done in no time. NaN before the first step.
double eta_seconds(int64_t first_step, int64_t step, int64_t total, double elapsed);

}  // namespace dptrain
