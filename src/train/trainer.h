// Trainer: the training loop (Caffe's Solver): for each step, gather this rank's shard of the
// global batch, forward, loss and backward (the GradientHook exchanges gradients as they appear),
// one optimizer update; at each epoch end rank 0 evaluates on the test set and appends a line to
// metrics.jsonl while the other ranks wait outside NCCL. A run can stop at --max-steps mid-epoch
// and still evaluates, records its metrics and writes its weights.
//
// Checkpoints (rank 0 writes, the others wait at an MPI barrier): every checkpoint.every_steps
// steps, at each epoch end, and when the run ends, finished or preempted (a stop signal, agreed by
// all ranks at a step boundary). A run built from a checkpoint continues exactly where it was
// taken: the position in the data (epoch, samples consumed) is all the data order, the dropout
// masks and the schedule depend on.
//
// Divergence (train/divergence.h): every loss the loop already reads back (progress lines,
// mid-epoch checkpoints, epoch ends, the evaluation) is checked; a NaN/Inf or blown-up loss ends
// the run with a DivergenceError before any further checkpoint is written, and a checkpoint's
// host copy is checked for NaN/Inf before it is written. The step itself is not touched.
//
// Two debug/measuring modes plug in as the model's LayerObserver: train.check_numerics
// (train/numerics_checker.h) and TrainOptions::profile (train/profiler.h); both turn CUDA graph
// capture off.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "comm/communicator.h"
#include "core/device_context.h"
#include "data/dataset.h"
#include "io/checkpoint.h"
#include "io/config.h"
#include "model/gradient_hook.h"
#include "model/model.h"
#include "optim/lr_schedule.h"
#include "optim/optimizer.h"
#include "train/batch_source.h"
#include "train/evaluator.h"
#include "train/progress.h"

namespace dptrain {

struct TrainOptions {
  std::string out_dir;     ///< run folder (rank 0 writes it)
  bool show_progress = true;
  const LoadedCheckpoint* resume = nullptr;  ///< continue from this checkpoint (validated)
  /// For tests of failure handling: this rank throws after this global step (-1: never).
  int64_t fail_after_step = -1;
  bool profile = false;          ///< time the steps and print a table at the end (train/profiler.h)
  int profile_warmup_steps = 5;  ///< steps not counted by the profile
  /// Rank 0, after each epoch's metrics line, with the epoch's training seconds (the CLI redraws
  /// curves.png here). Null: nothing.
  std::function<void(double epoch_seconds)> after_epoch;
};

struct TrainSummary {
  int64_t steps = 0;          ///< global steps completed (counting those before a resume)
  int64_t first_step = 0;     ///< the step this run started from (0, or the checkpoint's)
  int epochs_completed = 0;
  EvalResult final_eval;      ///< valid on rank 0
  double images_per_second = 0;
  bool preempted = false;     ///< stopped by a signal before the end
  std::string checkpoint;     ///< the last checkpoint written (rank 0), "" if none
};

class Trainer {
 public:
  /// `hook` exchanges gradients between ranks (null on one rank). Data must outlive the trainer.
  Trainer(const Config& config, const TrainOptions& options, const MnistData& data, DeviceContext& ctx,
          Communicator& comm, GradientHook* hook);
  ~Trainer();

  TrainSummary run();

  /// One training step: global batch `step_in_epoch` of `epoch`, the schedule at `global_step`.
  /// Queued on the device; returns without waiting. (run() uses it; so does `dptrain bench`.)
  void step(int epoch, int64_t step_in_epoch, int64_t global_step);

  /// The gradient exchange (built after the model, as it needs the gradient buffer). Before run().
  void set_gradient_hook(GradientHook* hook);

  Model<float>& model() { return *model_; }
  Optimizer& optimizer() { return *optimizer_; }
  int64_t steps_per_epoch() const { return steps_per_epoch_; }

 private:
  struct EpochStats;
  struct Position;
  /// Builds the numerics checker or the profiler the config and options ask for, as the model's observer.
  void attach_observer();
  /// Plans the model for every batch size this rank will run (training shards, evaluation batches).
  void plan_batch_sizes();
  /// The step's work (gather, forward, loss, backward and exchange, update), queued on the device.
  void run_step(const StepInfo& info, int count, float grad_scale);
  /// Rank 0 evaluates and appends the epoch's metrics line; the others wait outside NCCL.
  void finish_epoch(int epoch, int64_t global_step, const EpochStats& stats);
  /// Rank 0 writes final.safetensors (after `global_step` steps), if its values are finite.
  void write_weights(int64_t global_step);
  Position start_position();
  /// Whether every rank should stop now (a signal reached any of them); one host reduction.
  bool stop_requested();
  /// Rank 0 writes a checkpoint of `at`; all ranks return together. Returns the path on rank 0.
  std::string save_checkpoint(const Position& at, const EpochStats& stats);
  /// Rank 0, when a progress line is due: reads this rank's running loss, shows it and checks it.
  void log_progress(int64_t global_step, int epoch, const EpochStats& stats);
  /// Feeds a mean training loss read after `global_step` steps to the divergence monitor: throws
  /// DivergenceError, or prints its one warning to stderr.
  void check_training_loss(double loss, int64_t global_step, int epoch);
  void wait_for_device();
  /// The hook the model reports gradients to: the exchange, or the profiler wrapping it.
  GradientHook* step_hook();
  /// Whether parameters are updated during backward (UpdateInBackward): CUDA, one rank, no
  /// gradient exchange, no profiler or numerics checks (which observe the update as a stage).
  bool updates_in_backward();

  Config config_;
  TrainOptions options_;
  const MnistData& data_;
  DeviceContext& ctx_;
  Communicator& comm_;
  GradientHook* hook_;

  int global_batch_;
  int64_t steps_per_epoch_;
  int64_t total_steps_;          ///< steps this run takes: the epochs, or --max-steps if fewer
  std::unique_ptr<class BatchPlan> plan_;
  std::unique_ptr<BatchSource> source_;
  int source_epoch_ = -1;        ///< the epoch whose order source_ holds
  std::unique_ptr<Model<float>> model_;
  std::unique_ptr<Optimizer> optimizer_;
  std::unique_ptr<LrSchedule> schedule_;
  std::unique_ptr<Evaluator> evaluator_;
  Buffer<float> x_;
  Buffer<int32_t> y_;
  Buffer<double> sums_;          ///< this epoch's [loss sum, correct] on the device
  EvalResult last_eval_;         ///< rank 0's latest test-set result
  double best_accuracy_ = 0;     ///< rank 0's best test accuracy so far (kept in checkpoints)
  bool new_best_ = false;        ///< the latest evaluation set a new best
  std::unique_ptr<CheckpointDir> checkpoints_;
  int local_batch_ = 0;          ///< samples per rank in a full global batch
  bool warmed_up_ = false;       ///< a full step ran eagerly: the next one may be captured
  std::unique_ptr<class StepGraph> graph_;  ///< the captured full-batch step (CUDA, train.cuda_graph)
  std::unique_ptr<class NumericsChecker> numerics_;  ///< train.check_numerics, else null
  std::unique_ptr<class Profiler> profiler_;         ///< TrainOptions::profile, else null
  std::unique_ptr<class UpdateInBackward> updater_;  ///< on CUDA (used per updates_in_backward())
  std::unique_ptr<class DivergenceMonitor> divergence_;  ///< checks every loss read back
  std::unique_ptr<Progress> progress_;                   ///< rank 0's progress display (run())
};

}  // namespace dptrain
