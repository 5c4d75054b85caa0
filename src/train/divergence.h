// Divergence: a run whose loss blew up ends with one line and exit status 1 instead of training on
// and exiting 0 with a useless model. The trainer feeds this monitor every loss it already reads
// back to the host (progress lines, mid-epoch checkpoints, epoch ends, the evaluation); nothing
// here reads the device, so the step gains no synchronisation.
//
// The rule, for the softmax cross-entropy loss (chance level ln C for C classes, 2.30 for 10):
// - diverged (DivergenceError): a mean loss that is NaN or +-Inf, or above 1000 x ln C (2303 for
//   10 classes). A model that still learns never averages a loss a thousand times worse than
//   guessing; a blown-up one does at once (mnist_cnn at lr 1e4: 1e12 at step 2).
// - warning (once per run): a mean training loss above 100 x the lowest one read so far and above
//   chance (ln C): it grew by two orders of magnitude and the model is now worse than guessing.
//   The chance floor keeps the noise of a converged run (0.003 -> 0.3) quiet.
// The losses read are running means over the epoch so far, so a blow-up shows at the first read
// after it (it dominates the mean) and a NaN stays in the mean until the epoch ends.
//
// Before a checkpoint or the final weights are written, require_finite() scans their host copies
// (made for writing anyway): no file with a NaN or Inf is ever written, and `latest` keeps naming
// the last good checkpoint.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "io/checkpoint.h"

namespace dptrain {

/// Training diverged: a failure of the run (exit status 1), not bad input. The message is one
/// line naming the step.
class DivergenceError : public std::runtime_error {
 public:
  DivergenceError(int64_t step, const std::string& what) : std::runtime_error(what), step_(step) {}
  int64_t step() const { return step_; }  ///< global steps completed when it was found

 private:
  int64_t step_;
};

class DivergenceMonitor {
 public:
  /// Multiples of the chance loss ln C: the divergence limit, and the floor of the warning.
  static constexpr double kLimitTimesChance = 1000.0;
  static constexpr double kWarnGrowth = 100.0;  ///< the warning: growth over the lowest loss read

  explicit DivergenceMonitor(int num_classes);

  /// Mean losses above this are divergence: 1000 x ln(num_classes).
  double limit() const { return limit_; }

  /// What a divergence message ends with: where the last good checkpoint is. `path` may be empty
  /// (ranks other than 0 do not know it); step < 0: none written yet. Rank 0 calls it from the
  /// checkpoint writer's thread once a checkpoint is on disk, so it is safe from any thread.
  void set_last_checkpoint(int64_t step, const std::string& path);

  /// Called before a divergence is reported, on the thread that found it: finishes the checkpoint
  /// writes still queued (so the last-checkpoint record is true) and returns the message of one
  /// that failed, if any, which the report then names too.
  void set_settle(std::function<std::optional<std::string>()> settle) { settle_ = std::move(settle); }

  /// Checks the mean training loss read after `step` global steps (in `epoch`, counted from 1).
  /// Throws DivergenceError if it diverged; returns the warning line the first time the loss grew
  /// by orders of magnitude (see the rule above), otherwise nullopt.
  std::optional<std::string> check_training_loss(double loss, int64_t step, int epoch);

  /// Checks the mean test-set loss of the evaluation after `step`: throws DivergenceError if it
  /// diverged (the same limit; it never warns).
  void check_test_loss(double loss, int64_t step, int epoch) const;

  /// Throws DivergenceError naming the first of `tensors` that holds a NaN or Inf. `what` names
  /// the file about to be written ("checkpoint", "final weights").
  void require_finite(const std::vector<NamedTensor>& tensors, int64_t step, const std::string& what) const;

 private:
  [[noreturn]] void diverged(int64_t step, int epoch, const std::string& problem) const;
  std::string limit_text() const;  ///< "2303 (1000 x ln 10, the loss of guessing among 10 classes)"

  int classes_;
  double chance_;
  double limit_;
  double lowest_ = 0;
  int64_t lowest_step_ = -1;  ///< -1: no training loss read yet
  bool warned_ = false;
  mutable std::mutex mutex_;  // guards last_checkpoint_ (written by the checkpoint writer's thread)
  std::string last_checkpoint_ = "no checkpoint written";
  std::function<std::optional<std::string>()> settle_;
};

}  // namespace dptrain
