// Trainer: the training loop (Caffe's Solver): for each step (run_step), gather this rank's shard
// of the global batch, forward, loss and backward (the GradientHook exchanges gradients as they
// appear), one optimizer update; at each epoch end rank 0 evaluates on the test set and appends a
// line to metrics.jsonl while the other ranks wait outside NCCL. A run can stop at --max-steps
// mid-epoch and still evaluates, records its metrics and writes its weights.
//
// Checkpoints (rank 0 writes, the others wait at an MPI barrier): every checkpoint.every_steps
// steps, at each epoch end, and when the run ends, finished or preempted (a stop signal, agreed by
// all ranks at a step boundary). A run built from a checkpoint continues exactly where it was
// taken: the position in the data (epoch, samples consumed) is all the data order, the dropout
// masks and the schedule depend on.
// Rank 0 only takes the checkpoint's snapshot on the training thread; its files are written by a
// background writer in order (train/checkpoint_writer.h), and the run waits for the last write
// before it ends; a failed write stops the run at the next checkpoint or at the end.
//
// Divergence (train/divergence.h): every loss the loop already reads back (progress lines,
// mid-epoch checkpoints, epoch ends, the evaluation) is checked; a NaN/Inf or blown-up loss ends
// the run with a DivergenceError before any further checkpoint is written, and a checkpoint's
// host copy is checked for NaN/Inf before it is written. The step itself is not touched.
//
// Two debug/measuring modes plug in as the model's LayerObserver: train.check_numerics
// (train/numerics_checker.h) and TrainOptions::profile (train/profiler.h); both turn CUDA graph
// capture off.
//
// The gradient hook is composed once, when the trainer is built (compose_gradient_hook): the
// trainer's own GradientReducer on several ranks (config.comm), wrapped by the profiler under
// --profile; or, on CUDA with one rank and neither profiler nor numerics checker, UpdateInBackward.
// Backward reports to that one hook. The parameters are then updated in exactly one place per
// step: by the hook during backward (updates_during_backward_), or by the optimizer after it.
#pragma once

#include <chrono>
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
  /// For tests: update after backward even where UpdateInBackward would update during it (CUDA, one
  /// rank), to compare the two.
  bool update_after_backward = false;
  /// Rank 0, after each epoch's metrics line, with the epoch's training seconds (the CLI redraws
  /// curves.png here). Null: nothing.
  std::function<void(double epoch_seconds)> after_epoch;
  /// The start-up breakdown the command began (train/startup_timer.h): the trainer adds its phases
  /// (model build, data upload, planning, parameters, the first step, graph capture), puts it
  /// into the first metrics line it writes and, under --profile, prints it. Null: not timed.
  class StartupTimer* startup = nullptr;
  /// Checkpoint files are written on a background thread (train/checkpoint_writer.h); false: on
  /// the training thread, as before (--sync-checkpoints, for comparison).
  bool async_checkpoints = true;
  /// For tests of failure handling: writing the checkpoint of this step fails (-1: never).
  int64_t fail_checkpoint_write_at_step = -1;
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
  /// Builds the model, the optimizer and the step's gradient hook; on several ranks
  /// (comm.size() > 1) that includes the gradient exchange (a GradientReducer configured by
  /// config.comm). Data, ctx and comm must outlive the trainer.
  Trainer(const Config& config, const TrainOptions& options, const MnistData& data, DeviceContext& ctx,
          Communicator& comm);
  ~Trainer();

  TrainSummary run();

  /// One training step: global batch `step_in_epoch` of `epoch`, the schedule at `global_step`.
  /// Queued on the device; returns without waiting. (run() uses it; so does `dptrain bench`.)
  void step(int epoch, int64_t step_in_epoch, int64_t global_step);

  Model<float>& model() { return *model_; }
  Optimizer& optimizer() { return *optimizer_; }
  int64_t steps_per_epoch() const { return steps_per_epoch_; }

 private:
  struct EpochStats;
  struct Position;
  struct TrainTime;
  /// Builds the numerics checker or the profiler the config and options ask for, as the model's observer.
  void attach_observer();
  /// Plans the model for every batch size this rank will run (training shards, evaluation batches).
  void plan_batch_sizes();
  /// Builds the gradient hook backward reports to, once: the exchange (several ranks), wrapped by
  /// the profiler (--profile); or, on CUDA with one rank and no profiler or numerics checker (which
  /// observe the update as a stage of its own), UpdateInBackward. Sets updates_during_backward_.
  void compose_gradient_hook();
  /// The step's work (gather, forward, loss, backward and exchange, update), queued on the device.
  void run_step(const StepInfo& info, int count, float grad_scale);
  /// A rank left idle by a tail batch smaller than the rank count: zero gradients, reported to the
  /// hook as backward would, so the rank still joins the exchange.
  void report_idle_gradients();
  /// Rank 0 evaluates and appends the epoch's metrics line; the others wait outside NCCL.
  /// Epoch end: the global sums, the test pass (every train.eval_every epochs, and always when
  /// `last`, the run's final epoch), the metrics line.
  void finish_epoch(int epoch, int64_t global_step, const EpochStats& stats, bool last);
  /// summary.json in the run folder (rank 0): the final result and what the run's time went to.
  void write_summary(const TrainSummary& summary, const TrainTime& trained) const;
  /// Rank 0 writes final.safetensors (after `global_step` steps), if its values are finite.
  void write_weights(int64_t global_step);
  /// Resume decoding: where this run starts, from the checkpoint it resumes (the beginning for a
  /// fresh run). InputError if the checkpoint stopped between global batches of this run's size.
  Position resume_position();
  /// Resume decoding: the running sums of the epoch under way, zero on the device, or on rank 0 of
  /// a resumed run the checkpoint's (so the epoch's metrics line covers the whole epoch).
  EpochStats resume_epoch_stats();
  /// Checkpoint cadence, after the step that brought the run to `pos`: every checkpoint.every_steps
  /// steps mid-epoch (an epoch's last step is saved after its evaluation).
  bool checkpoint_due_after_step(const Position& pos) const;
  /// Checkpoint cadence, after the evaluation at `evaluated` (the position before the next epoch
  /// begins): at a complete epoch's end under checkpoint.every_epoch, and when the run is done.
  bool checkpoint_due_after_epoch(const Position& evaluated) const;
  /// Checkpoint cadence, when the run ends at `end`: always, unless the newest checkpoint
  /// (`saved_step`, -1: none) is of that step already.
  bool checkpoint_due_at_end(const Position& end, int64_t saved_step) const;
  /// The final report, on every rank together: `summary` completed for a run that ended at `end`
  /// (stopped by a signal if `preempted`) after `trained` in its step loops; the profile table (its
  /// rows are reduced over ranks); unless preempted, rank 0's final weights.
  TrainSummary finish_run(TrainSummary summary, const Position& end, bool preempted, const TrainTime& trained);
  /// Whether every rank should stop now (a signal reached any of them); one host reduction.
  bool stop_requested();
  /// Rank 0 writes a checkpoint of `at`; all ranks return together. Returns the path on rank 0.
  std::string save_checkpoint(const Position& at, const EpochStats& stats);
  /// Rank 0, when a progress line is due: reads this rank's running loss, shows it and checks it.
  void log_progress(int64_t global_step, int epoch, const EpochStats& stats);
  /// Rank 0, resuming: ckpt-* files of steps after `resumed_step` in the run folder move aside
  /// (io/checkpoint_dir.h, set_aside_after), with one warning line.
  void set_aside_later_checkpoints(int64_t resumed_step);
  /// Feeds a mean training loss read after `global_step` steps to the divergence monitor: throws
  /// DivergenceError, or prints its one warning to stderr.
  void check_training_loss(double loss, int64_t global_step, int epoch);
  void wait_for_device();
  /// After each step while the start-up breakdown is open: the first step, and the step that
  /// captures the CUDA graph (if one will), are waited for and timed; then the breakdown closes.
  void time_startup_step(bool captured);

  Config config_;
  TrainOptions options_;
  const MnistData& data_;
  DeviceContext& ctx_;
  Communicator& comm_;

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
  /// For summary.json's train_eval_seconds (the time-to-accuracy convention: model build, training
  /// and test passes, not the data's upload): when the model build began, how long the upload took,
  /// and when the last test pass ended.
  std::chrono::steady_clock::time_point model_build_start_{}, last_eval_end_{};
  double upload_seconds_ = 0;
  bool new_best_ = false;        ///< the latest evaluation set a new best
  /// Checks every loss read back. Before writer_: the writer's jobs record the checkpoints they
  /// finish in it, up to the writer's destructor.
  std::unique_ptr<class DivergenceMonitor> divergence_;
  std::unique_ptr<CheckpointDir> checkpoints_;
  std::unique_ptr<class CheckpointWriter> writer_;      ///< rank 0: writes into checkpoints_ (after it: destroyed first)
  std::unique_ptr<struct EpochEndTimes> epoch_end_;     ///< rank 0: what epoch ends cost the training thread
  bool startup_reported_ = false;                       ///< the startup breakdown is in a metrics line
  int64_t startup_steps_ = 0;                           ///< steps taken while the breakdown is open
  int local_batch_ = 0;          ///< samples per rank in a full global batch
  bool warmed_up_ = false;       ///< a full step ran eagerly: the next one may be captured
  std::unique_ptr<class StepGraph> graph_;  ///< the captured full-batch step (CUDA, train.cuda_graph)
  std::unique_ptr<class NumericsChecker> numerics_;  ///< train.check_numerics, else null
  std::unique_ptr<class Profiler> profiler_;         ///< TrainOptions::profile, else null
  std::unique_ptr<class GradientReducer> reducer_;   ///< the gradient exchange on several ranks, else null
  std::unique_ptr<class UpdateInBackward> updater_;  ///< when updates_during_backward_, else null
  GradientHook* gradient_hook_ = nullptr;  ///< the one hook backward reports to (compose_gradient_hook)
  bool updates_during_backward_ = false;   ///< the hook updates the parameters: no optimizer step after
  std::unique_ptr<CrossRankSum> cross_rank_sum_;  ///< batchnorm's exchanges on several ranks, else null
  std::unique_ptr<Progress> progress_;                   ///< rank 0's progress display (run())
};

}  // namespace dptrain
