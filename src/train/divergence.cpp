#include "train/divergence.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace dptrain {

namespace {

std::string number(double x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4g", x);
  return buf;
}

}  // namespace

DivergenceMonitor::DivergenceMonitor(int num_classes)
    : classes_(std::max(num_classes, 2)),
      chance_(std::log(static_cast<double>(classes_))),
      limit_(kLimitTimesChance * chance_) {}

std::string DivergenceMonitor::limit_text() const {
  const std::string c = std::to_string(classes_);
  return number(limit_) + " (" + number(kLimitTimesChance) + " x ln " + c + ", the loss of guessing among " + c +
         " classes)";
}

void DivergenceMonitor::set_last_checkpoint(int64_t step, const std::string& path) {
  std::string text = "no checkpoint written";
  if (step >= 0) {
    text = "last checkpoint: step " + std::to_string(step);
    if (!path.empty()) text += " (" + path + ")";
  }
  std::lock_guard<std::mutex> lock(mutex_);
  last_checkpoint_ = std::move(text);
}

void DivergenceMonitor::diverged(int64_t step, int epoch, const std::string& problem) const {
  std::string where = "at step " + std::to_string(step);
  if (epoch > 0) where += " (epoch " + std::to_string(epoch) + ")";
  const std::optional<std::string> write_failure = settle_ ? settle_() : std::nullopt;
  std::string message = "training diverged " + where + ": " + problem + "; ";
  {
    std::lock_guard<std::mutex> lock(mutex_);
    message += last_checkpoint_;
  }
  if (write_failure) message += "; a later checkpoint write failed: " + *write_failure;
  throw DivergenceError(step, message);
}

std::optional<std::string> DivergenceMonitor::check_training_loss(double loss, int64_t step, int epoch) {
  if (!std::isfinite(loss)) diverged(step, epoch, "the mean training loss is " + number(loss));
  if (loss > limit_)
    diverged(step, epoch, "the mean training loss " + number(loss) + " is above " + limit_text());
  std::optional<std::string> warning;
  if (!warned_ && lowest_step_ >= 0 && loss > kWarnGrowth * lowest_ && loss > chance_) {
    warned_ = true;
    char growth[32];
    std::snprintf(growth, sizeof growth, "%.0fx", loss / lowest_);
    warning = "the mean training loss " + number(loss) + " at step " + std::to_string(step) + " is " + growth +
              " the lowest so far (" + number(lowest_) + " at step " +
              std::to_string(lowest_step_) + "): the run may be diverging";
  }
  if (lowest_step_ < 0 || loss < lowest_) lowest_ = loss, lowest_step_ = step;
  return warning;
}

void DivergenceMonitor::check_test_loss(double loss, int64_t step, int epoch) const {
  if (!std::isfinite(loss)) diverged(step, epoch, "the test loss is " + number(loss));
  if (loss > limit_)
    diverged(step, epoch, "the test loss " + number(loss) + " is above " + limit_text());
}

void DivergenceMonitor::require_finite(const std::vector<NamedTensor>& tensors, int64_t step,
                                       const std::string& what) const {
  for (const NamedTensor& t : tensors) {
    if (std::all_of(t.values.begin(), t.values.end(), [](float x) { return std::isfinite(x); })) continue;
    diverged(step, 0, t.name + " holds a NaN or Inf, so the " + what + " was not written");
  }
}

}  // namespace dptrain
