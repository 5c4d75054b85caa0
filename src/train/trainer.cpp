#include "train/trainer.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "comm/gradient_reducer.h"
#include "core/cuda_support.h"
#include "core/device_ops.h"
#include "core/error.h"
#if DPTRAIN_HAVE_CUDA
#include "core/cuda_context.h"
#endif
#include "data/sampler.h"
#include "io/atomic_file.h"
#include "io/checkpoint.h"
#include "train/checkpoint_writer.h"
#include "train/divergence.h"
#include "train/epoch_end_times.h"
#include "train/numerics_checker.h"
#include "train/plan_sharing.h"
#include "train/preemption.h"
#include "train/profiler.h"
#include "train/progress.h"
#include "train/startup_timer.h"
#include "train/step_graph.h"
#include "train/timed_planning.h"
#include "train/train_state.h"
#include "train/update_in_backward.h"

namespace dptrain {

struct Trainer::EpochStats {
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  int64_t samples = 0;          // this rank's samples of this epoch, in this process
  int64_t carried_samples = 0;  // rank 0: the epoch's samples before the resume
};

/// Where the run stands: the next step to take.
struct Trainer::Position {
  int epoch = 0;
  int64_t step_in_epoch = 0;
  int64_t global_step = 0;
};

/// The time run() spent in its step loops, for the summary's images per second.
struct Trainer::TrainTime {
  double seconds = 0;   // this process's
  int64_t samples = 0;  // this rank's samples in them
};

namespace {

// What the step needs of a CUDA context. A CPU-only build has none (core/cuda_support.h).
#if DPTRAIN_HAVE_CUDA
/// The compute stream on CUDA; null on the CPU, where communicators ignore it.
cudaStream_t compute_stream(DeviceContext& ctx) { return ctx.on_cuda() ? ctx.cuda().stream() : nullptr; }
uint64_t workspace_generation(DeviceContext& ctx) { return ctx.cuda().workspace_generation(); }
#else
cudaStream_t compute_stream(DeviceContext&) { return nullptr; }
uint64_t workspace_generation(DeviceContext&) { throw_built_without_cuda(); }
#endif

/// Batchnorm's exchanges over the trainer's communicator (layers/cross_rank_sum.h), queued on the
/// compute stream: NCCL's in-stream all-reduce (capturable), MPI's reduce-then-broadcast.
class CommCrossRankSum final : public CrossRankSum {
 public:
  explicit CommCrossRankSum(Communicator& comm) : comm_(comm) {}
  int ranks() const override { return comm_.size(); }
  void sum(DeviceContext& ctx, std::span<float> data) override { comm_.all_reduce_sum(data, compute_stream(ctx)); }

 private:
  Communicator& comm_;
};

/// The unit a short tail batch splits in (BatchPlan's align): the least common multiple of the
/// ghost batchnorm layers' group sizes (1 without). InputError naming the layer when the per-rank
/// batch is not a multiple of its group, since a rank's groups must be the groups one rank forms.
int ghost_batch_alignment(const ModelConfig& model, int per_rank_batch) {
  int align = 1;
  for (size_t i = 0; i < model.layers.size(); ++i) {
    const LayerConfig& l = model.layers[i];
    if ((l.type != "batchnorm2d" && l.type != "batchnorm1d") || l.sync != 0 || l.group_size <= 0) continue;
    if (per_rank_batch % l.group_size != 0)
      throw InputError("model.layers[" + std::to_string(i) + "] (" + l.name + ")",
                       "the per-rank batch " + std::to_string(per_rank_batch) + " is not a multiple of group_size " +
                           std::to_string(l.group_size) + ": set group_size to a divisor of " +
                           std::to_string(per_rank_batch) + ", train.batch_size to a multiple of group_size x ranks, "
                           "or sync: 1");
    align = std::lcm(align, l.group_size);
  }
  return align;
}

int resolve_global_batch(const TrainConfig& t, int ranks) {
  if (t.batch_per_rank > 0) return t.batch_per_rank * ranks;
  if (t.batch_size % ranks != 0)
    throw InputError("train.batch_size", "the global batch " + std::to_string(t.batch_size) +
                                            " does not divide over " + std::to_string(ranks) +
                                            " ranks (use a multiple, or train.batch_per_rank)");
  return t.batch_size;
}

}  // namespace

Trainer::Trainer(const Config& config, const TrainOptions& options, const MnistData& data, DeviceContext& ctx,
                 Communicator& comm)
    : config_(config), options_(options), data_(data), ctx_(ctx), comm_(comm) {
  global_batch_ = resolve_global_batch(config_.train, comm_.size());
  check_labels(data_.train, config_.model.num_classes);
  check_labels(data_.test, config_.model.num_classes);
  check_image_size(data_.train, config_.model.input);
  check_image_size(data_.test, config_.model.input);
  plan_ = std::make_unique<BatchPlan>(data_.train.count, global_batch_, comm_.size(),
                                      ghost_batch_alignment(config_.model, global_batch_ / comm_.size()));
  steps_per_epoch_ = plan_->steps_per_epoch();
  const int local_batch = (global_batch_ + comm_.size() - 1) / comm_.size();
  const int eval_batch = comm_.rank() == 0 ? Evaluator::batch_for(config_.train.eval_batch_size, data_.test) : 0;
  model_build_start_ = std::chrono::steady_clock::now();
  model_ = std::make_unique<Model<float>>(config_.model, ctx_, std::max(local_batch, eval_batch),
                                         config_.train.label_smoothing);
  optimizer_ = make_optimizer(scheduled_optimizer(config_.train.optimizer, config_.train.schedule), ctx_.device(),
                              model_->params().size());
  if (options_.startup) options_.startup->mark("model_build");
  const int64_t planned = steps_per_epoch_ * config_.train.epochs;
  total_steps_ = config_.train.max_steps > 0 ? std::min(planned, config_.train.max_steps) : planned;
  // The schedule spans the planned epochs, not --max-steps: a run stopped early and resumed follows
  // the same rates as one that never stopped.
  schedule_ = std::make_unique<LrSchedule>(config_.train.schedule, config_.train.optimizer.lr, steps_per_epoch_, planned);
  const auto upload_start = std::chrono::steady_clock::now();
  source_ = make_batch_source(data_.train, config_.data, /*shuffle=*/true, ctx_, /*augment=*/true);
  if (comm_.rank() == 0) evaluator_ = std::make_unique<Evaluator>(data_.test, config_.data, config_.train.eval_batch_size, ctx_);
  synchronize(ctx_);  // the uploads are queued: their time is the upload's, not the training's
  upload_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - upload_start).count();
  const Dims in = config_.model.input;
  local_batch_ = local_batch;
  x_ = Buffer<float>(ctx_.device(), static_cast<size_t>(local_batch) * in.count());
  y_ = Buffer<int32_t>(ctx_.device(), static_cast<size_t>(local_batch));
  sums_ = Buffer<double>(ctx_.device(), 2);
  if (options_.startup) options_.startup->mark("data_upload");
  plan_batch_sizes();
  if (options_.startup && ctx_.on_cuda()) options_.startup->mark("planning");  // the CPU plans nothing

  checkpoints_ = std::make_unique<CheckpointDir>(options_.out_dir, config_.checkpoint.keep);
  divergence_ = std::make_unique<DivergenceMonitor>(config_.model.num_classes);
  if (options_.resume != nullptr) {
    if (comm_.rank() == 0) set_aside_later_checkpoints(options_.resume->state.global_step);
    divergence_->set_last_checkpoint(options_.resume->state.global_step, options_.resume->path);
    // Every rank reads the same validated file: an identical start without a broadcast.
    restore_train_state(*options_.resume, ctx_, model_->params(), model_->state(), *optimizer_);
    best_accuracy_ = options_.resume->state.best_test_accuracy;
  } else {
    // Identical start on every rank: rank 0's initial parameters (from the seed) are broadcast.
    model_->params().initialize(config_.train.seed);
    comm_.broadcast(model_->params().values().span(), 0, compute_stream(ctx_));
  }
  attach_observer();
  compose_gradient_hook();
  if (comm_.size() > 1) {
    cross_rank_sum_ = std::make_unique<CommCrossRankSum>(comm_);
    model_->set_cross_rank_sum(cross_rank_sum_.get());
  }
  if (comm_.rank() == 0) {
    writer_ = std::make_unique<CheckpointWriter>(options_.async_checkpoints);
    divergence_->set_settle([writer = writer_.get()] { return writer->settle(); });
    epoch_end_ = std::make_unique<EpochEndTimes>();
  }
  if (options_.startup) options_.startup->mark(options_.resume != nullptr ? "restore_state" : "initialise_params");
}

Trainer::~Trainer() = default;

void Trainer::plan_batch_sizes() {
  // Every batch size this rank will run is planned before the first step: a size first met later
  // (the epoch's short last batch, the evaluation) would be timed in the middle of training, and
  // could grow a workspace that the captured step still points to (StepGraph::matches). Rank 0
  // plans the sizes of every rank and its choices are what all run (train/plan_sharing.h).
  std::vector<int> own, every;
  for (int r = 0; r < comm_.size(); ++r)
    for (const int64_t step : {int64_t{0}, steps_per_epoch_ - 1}) {
      const int n = plan_->shard(step, r).count;
      if (n <= 0) continue;
      every.push_back(n);
      if (r == comm_.rank()) own.push_back(n);
    }
  for (std::vector<int>* sizes : {&own, &every}) {
    std::sort(sizes->begin(), sizes->end());
    sizes->erase(std::unique(sizes->begin(), sizes->end()), sizes->end());
  }
  const PlanningOptions planning{config_.train.plan_cache, options_.out_dir, options_.resume != nullptr};
  plan_on_every_rank(comm_, ctx_, planning, [&](bool root) {
    for (int n : root ? every : own) plan_model(*model_, ctx_, n, /*backward=*/true, options_.startup);
    // Forward only; a size equal to a training size is already planned (ConvPlanner::plan).
    if (evaluator_)
      for (int n : evaluator_->batch_sizes()) plan_model(*model_, ctx_, n, /*backward=*/false, options_.startup);
  });
}

void Trainer::attach_observer() {
  // The model has one observer: the checker's kernels would be timed as the layers' work.
  if (config_.train.check_numerics && options_.profile)
    throw InputError("--profile", "cannot be combined with --check-numerics (the checks would be timed too)");
  if (config_.train.check_numerics) {
    numerics_ = std::make_unique<NumericsChecker>(ctx_, *model_);
    model_->set_observer(numerics_.get());
  }
  if (options_.profile) {
    profiler_ = std::make_unique<Profiler>(ctx_, *model_, options_.profile_warmup_steps);
    model_->set_observer(profiler_.get());
  }
}

void Trainer::compose_gradient_hook() {
  ParamStore<float>& params = model_->params();
  // Several ranks sum their gradients (the reducer needs the model's gradient buffer: built here,
  // after the model).
  // Sync batchnorm sums over the ranks in backward, on the compute stream: with buckets all-reduced
  // during backward on the exchange's stream, two collectives of one NCCL communicator could be in
  // flight on two streams at once, which NCCL does not promise to order. Then the exchange waits
  // for the end of backward (one all-reduce), and every collective is serialised on the GPU.
  bool sync_batchnorm = false;
  for (const LayerConfig& l : config_.model.layers)
    sync_batchnorm |= (l.type == "batchnorm2d" || l.type == "batchnorm1d") && l.sync == 1;
  const bool overlap = config_.comm.overlap && !(sync_batchnorm && ctx_.on_cuda());
  if (comm_.size() > 1)
    reducer_ = std::make_unique<GradientReducer>(comm_, ctx_, params.grads().span(),
                                                 GradientReducerOptions{config_.comm.bucket_mb, overlap});
  gradient_hook_ = reducer_.get();
  // The profiler wraps the exchange (or nothing): its marks around the exchange's end time the
  // communication the optimizer waits for.
  if (profiler_) {
    profiler_->set_exchange(gradient_hook_);
    gradient_hook_ = profiler_.get();
  }
  // Nothing to wait for and nobody timing or checking the update as a stage: each layer is updated
  // as soon as backward has queued its gradients (CUDA only: the update stream).
  updates_during_backward_ =
      ctx_.on_cuda() && gradient_hook_ == nullptr && !numerics_ && !options_.update_after_backward;
  if (updates_during_backward_) {
    updater_ = std::make_unique<UpdateInBackward>(*optimizer_, params.values().span(), params.grads().span(),
                                                  &ctx_.step()->scalars);
    gradient_hook_ = updater_.get();
  }
}

void Trainer::step(int epoch, int64_t step_in_epoch, int64_t global_step) {
  if (epoch != source_epoch_) {
    source_->begin_epoch(config_.train.seed, static_cast<uint32_t>(epoch));
    source_epoch_ = epoch;
  }
  const BatchPlan::Shard shard = plan_->shard(step_in_epoch, comm_.rank());
  const int64_t batch = plan_->global_batch_size(step_in_epoch);
  const StepState state{{config_.train.seed, static_cast<uint32_t>(epoch), static_cast<uint32_t>(shard.first)},
                        optimizer_->scalars(schedule_->lr(global_step), global_step + 1, schedule_->momentum(global_step))};
  if (profiler_) profiler_->begin_step(ctx_, global_step, shard.count);
  // Each rank scales by the global batch, so the summed gradients are the global batch mean.
  const float grad_scale = 1.0f / static_cast<float>(batch);
  if (graph_ && graph_->matches(shard.count, grad_scale, workspace_generation(ctx_))) {
    graph_->launch(state);  // its first node writes this step's state
    if (options_.startup && !options_.startup->finished()) time_startup_step(false);
    return;
  }
  // A host communicator (MPI) stages gradients through the host with a stream sync: not capturable.
  const bool capturable_exchange = reducer_ == nullptr || comm_.name() != "mpi";
  // Checking and profiling work per layer, launch by launch, which a replayed graph would skip.
  const bool observed = numerics_ || profiler_;
  const bool capture = ctx_.on_cuda() && config_.train.cuda_graph && capturable_exchange && !observed &&
                       shard.count == local_batch_ && warmed_up_;
  if (capture)
    graph_ = std::make_unique<StepGraph>(compute_stream(ctx_), shard.count, grad_scale, workspace_generation(ctx_));
  ctx_.set_step(state);
  if (capture) graph_->mark_step_state();
  run_step(state.info, shard.count, grad_scale);
  if (capture) {
    graph_->end_capture();
    graph_->launch();  // the captured work has not run yet
  }
  if (shard.count == local_batch_) warmed_up_ = true;  // algorithms chosen, workspaces sized: capturable
  if (numerics_) numerics_->end_step(ctx_, global_step, epoch);
  if (options_.startup && !options_.startup->finished()) time_startup_step(capture);
}

void Trainer::time_startup_step(bool captured) {
  // Start-up only: waiting for these one or two steps costs the pipeline a few microseconds once,
  // and makes the phases the device's time, not the host's queuing.
  wait_for_device();
  ++startup_steps_;
  if (startup_steps_ == 1) {
    options_.startup->mark("first_step");
    // The step after the first eager one is captured (Trainer::step's conditions), unless nothing will be.
    const bool capture_ahead = ctx_.on_cuda() && config_.train.cuda_graph && !numerics_ && !profiler_ &&
                               (reducer_ == nullptr || comm_.name() != "mpi");
    if (!capture_ahead) options_.startup->finish();
    return;
  }
  if (captured) options_.startup->mark("graph_capture");
  options_.startup->finish();
}

void Trainer::run_step(const StepInfo& info, int count, float grad_scale) {
  ParamStore<float>& params = model_->params();
  if (count > 0) {
    // Where the planner chose the fused pass, it takes the batch from the dataset itself (a plain
    // gather, no augmentation): one launch fewer. The profiler times the gather on its own.
    std::optional<StepGather> gather;
    if (!profiler_ && model_->runs_fused(count)) gather = source_->step_gather(ctx_, x_.data(), y_.data());
    if (!gather) source_->gather_step(ctx_, count, x_.data(), y_.data());
    if (profiler_) profiler_->data_done(ctx_);
    // Forward, the loss and backward (or the fused pass the planner chose for this batch size);
    // each layer's gradients go to the hook as soon as they are queued.
    model_->train_pass(ctx_, TensorView<const float>{x_.data(), count, config_.model.input}, y_.data(), grad_scale,
                       sums_.data(), gradient_hook_, info, gather ? &*gather : nullptr);
  } else {
    report_idle_gradients();
  }
  // The hook's end of backward queued the wait for the exchange: the optimizer reads summed gradients.
  if (!updates_during_backward_)
    optimizer_->step(ctx_, params.values().span(), params.grads().span(), &ctx_.step()->scalars);
  // Batchnorm's running statistics (all ranks' groups together): state, not a parameter update.
  model_->end_train_step(ctx_);
  if (profiler_) profiler_->optimizer_done(ctx_);
  if (numerics_) numerics_->parameters_updated(ctx_, params);
  if (numerics_) numerics_->state_updated(ctx_, model_->state());
}

void Trainer::report_idle_gradients() {
  // Only on several ranks (one rank's shard is the whole batch), so the hook is never the update.
  // Zero gradients, reported layer by layer as backward would, with batchnorm's exchanges between.
  model_->idle_step(ctx_, gradient_hook_);
}

void Trainer::wait_for_device() {
  // Through the communicator: NCCL's version watches for failed peers instead of hanging.
  if (ctx_.on_cuda()) comm_.synchronize(compute_stream(ctx_));
}

void Trainer::finish_epoch(int epoch, int64_t global_step, const EpochStats& stats, bool last) {
  wait_for_device();
  std::array<double, 2> sums{};
  download(ctx_, std::span<const double>(sums_.span()), std::span<double>(sums));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - stats.start).count();
  const double loss_sum = comm_.all_reduce_scalar(sums[0], ReduceOp::Sum);
  const double correct = comm_.all_reduce_scalar(sums[1], ReduceOp::Sum);
  const double timed = comm_.all_reduce_scalar(static_cast<double>(stats.samples), ReduceOp::Sum);
  const double samples = timed + static_cast<double>(stats.carried_samples);
  const double slowest = comm_.all_reduce_scalar(seconds, ReduceOp::Max);
  if (comm_.rank() == 0) {
    // The sums are global: rank 0 checks for all (one line; the others wait at the barrier).
    if (samples > 0) check_training_loss(loss_sum / samples, global_step, epoch + 1);
    // train.eval_every: 0 runs only the final test pass (what time-to-accuracy recipes want).
    const int every = config_.train.eval_every;
    const bool evaluate = last || (every > 0 && (epoch + 1) % every == 0);
    EvalResult ev;
    double eval_seconds = 0;
    if (evaluate) {
      const auto eval_start = std::chrono::steady_clock::now();
      ev = evaluator_->run(*model_, ctx_);
      last_eval_end_ = std::chrono::steady_clock::now();
      eval_seconds = std::chrono::duration<double>(last_eval_end_ - eval_start).count();
      epoch_end_->eval_s += eval_seconds, ++epoch_end_->evals;
    }
    const auto line_start = std::chrono::steady_clock::now();
    if (evaluate) {
      divergence_->check_test_loss(ev.loss, global_step, epoch + 1);
      last_eval_ = ev;
      if (ev.accuracy > best_accuracy_) best_accuracy_ = ev.accuracy, new_best_ = true;
    }
    nlohmann::json line = {{"epoch", epoch + 1},
                           {"step", global_step},
                           {"train_loss", samples > 0 ? loss_sum / samples : 0.0},
                           {"train_accuracy", samples > 0 ? correct / samples : 0.0},
                           {"images_per_second", slowest > 0 ? timed / slowest : 0.0},
                           {"seconds", slowest},
                           {"lr", schedule_->lr(std::max<int64_t>(global_step - 1, 0))},
                           {"ranks", comm_.size()},
                           {"partial_epoch", samples < static_cast<double>(data_.train.count)},
                           // What the figures cover: train_* the epoch's samples so far (across a
                           // resume), seconds and images_per_second only this process's.
                           {"samples", static_cast<int64_t>(samples)},
                           {"epoch_size", data_.train.count},
                           {"timed_samples", static_cast<int64_t>(timed)},
                           {"partial_timing", timed < samples}};
    if (evaluate) {  // an epoch without a test pass (train.eval_every) has no test_* fields
      line["test_loss"] = ev.loss;
      line["test_accuracy"] = ev.accuracy;
      line["eval_seconds"] = eval_seconds;
    }
    if (options_.startup && !startup_reported_) {  // the first line this process writes
      options_.startup->finish();
      line["startup"] = options_.startup->to_json();
      startup_reported_ = true;
    }
    std::ofstream out(std::filesystem::path(options_.out_dir) / "metrics.jsonl", std::ios::app);
    out << line.dump() << "\n";
    out.flush();  // a full disk shows at the flush, which the stream's destructor would hide
    if (!out) throw std::runtime_error(options_.out_dir + "/metrics.jsonl: cannot write");
    std::string note;
    if (samples < static_cast<double>(data_.train.count))
      note += "; partial epoch: " + std::to_string(static_cast<int64_t>(samples)) + " of " +
              std::to_string(data_.train.count) + " images";
    if (timed < samples)
      note += "; time and img/s cover the " + std::to_string(static_cast<int64_t>(timed)) + " images since the resume";
    if (!note.empty()) note = "  (" + note.substr(2) + ")";
    char test[96] = "no test pass";
    if (evaluate) std::snprintf(test, sizeof test, "test_loss %.4f  test_accuracy %.2f%%", ev.loss, 100.0 * ev.accuracy);
    std::printf("epoch %d  step %lld  train_loss %.4f  %s  %.0f img/s  %.1f s%s\n", epoch + 1,
                static_cast<long long>(global_step), line["train_loss"].get<double>(), test,
                line["images_per_second"].get<double>(), slowest, note.c_str());
    std::fflush(stdout);
    epoch_end_->metrics_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - line_start).count();
    ++epoch_end_->metrics_lines;
    if (options_.after_epoch) options_.after_epoch(slowest);
  }
  comm_.barrier();  // the others wait here, outside NCCL, while rank 0 evaluates and writes
}

std::string Trainer::save_checkpoint(const Position& at, const EpochStats& stats) {
  const auto started = std::chrono::steady_clock::now();
  wait_for_device();
  std::array<double, 2> sums{};
  download(ctx_, std::span<const double>(sums_.span()), std::span<double>(sums));
  const double loss_sum = comm_.all_reduce_scalar(sums[0], ReduceOp::Sum);
  const double correct = comm_.all_reduce_scalar(sums[1], ReduceOp::Sum);
  const double samples = comm_.all_reduce_scalar(static_cast<double>(stats.samples), ReduceOp::Sum) +
                         static_cast<double>(stats.carried_samples);
  std::string path;
  if (comm_.rank() == 0) {
    // Never a checkpoint of a diverged run: its loss (read here anyway), then its values.
    if (samples > 0) check_training_loss(loss_sum / samples, at.global_step, at.epoch + 1);
    // The snapshot is the training thread's part (the device is idle for it: a host copy); the
    // file work goes to the writer thread, which owns the snapshot from here.
    auto snapshot = std::make_shared<const TrainStateSnapshot>(ctx_, model_->params(), model_->state(), *optimizer_);
    divergence_->require_finite(snapshot->model(), at.global_step, "checkpoint");
    divergence_->require_finite(snapshot->optimizer(), at.global_step, "checkpoint");
    CheckpointState state;
    state.config_yaml = to_yaml(config_);
    state.epoch = at.epoch;
    state.global_step = at.global_step;
    state.samples_in_epoch = std::min<int64_t>(at.step_in_epoch * global_batch_, data_.train.count);
    state.seed = config_.train.seed;
    state.world_size = comm_.size();
    nlohmann::json scheduler{{"type", config_.train.schedule.type},
                             {"base_lr", config_.train.optimizer.lr},
                             {"next_lr", schedule_->lr(at.global_step)},
                             {"horizon_steps", steps_per_epoch_ * config_.train.epochs}};
    // onecycle's cycled momentum / beta1, for inspection (resume recomputes it from the step).
    if (const std::optional<double> m = schedule_->momentum(at.global_step)) scheduler["next_momentum"] = *m;
    state.scheduler_json = scheduler.dump();
    state.best_test_accuracy = best_accuracy_;
    state.epoch_metrics_json = nlohmann::json{{"loss_sum", loss_sum}, {"correct", correct}, {"samples", samples}}.dump();
    path = checkpoints_->step_path(at.global_step);
    const bool best = new_best_;
    const bool fail = at.global_step == options_.fail_checkpoint_write_at_step;
    writer_->submit([dir = checkpoints_.get(), divergence = divergence_.get(), snapshot, state = std::move(state), best,
                     fail, step = at.global_step] {
      if (fail) throw std::runtime_error(dir->step_path(step) + ": cannot write: injected failure (--inject-write-failure)");
      const std::string saved = dir->save(step, snapshot->model(), snapshot->optimizer(), state);
      if (best) dir->save_best(saved, snapshot->model(), snapshot->optimizer(), state);
      divergence->set_last_checkpoint(step, saved);  // on disk now: a divergence report may name it
    });
    new_best_ = false;
    epoch_end_->snapshot_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    ++epoch_end_->checkpoints;
  }
  // Rank 0's writer records the checkpoint once it is on disk (above); the other ranks only know
  // that one was taken.
  if (comm_.rank() != 0) divergence_->set_last_checkpoint(at.global_step, path);
  comm_.barrier();  // nobody runs ahead into NCCL while rank 0 writes
  return path;
}

Trainer::Position Trainer::resume_position() {
  if (options_.resume == nullptr) return {};
  const CheckpointState& state = options_.resume->state;
  Position p;
  p.epoch = static_cast<int>(state.epoch);
  p.global_step = state.global_step;
  if (state.samples_in_epoch > data_.train.count)  // a checkpoint counts at most the whole set
    throw InputError(options_.resume->path,
                     "stopped after " + std::to_string(state.samples_in_epoch) + " samples of epoch " +
                         std::to_string(state.epoch + 1) + ", but the training set has " +
                         std::to_string(data_.train.count) + " (another dataset?)");
  if (state.samples_in_epoch >= data_.train.count) {
    p.step_in_epoch = steps_per_epoch_;  // stopped after the last batch, before the evaluation
  } else if (state.samples_in_epoch % global_batch_ == 0) {
    p.step_in_epoch = state.samples_in_epoch / global_batch_;
  } else {
    throw InputError(options_.resume->path,
                     "stopped after " + std::to_string(state.samples_in_epoch) + " samples of epoch " +
                         std::to_string(state.epoch + 1) + ", not a whole number of global batches of " +
                         std::to_string(global_batch_) + " (resume with the batch size it was written with)");
  }
  return p;
}

Trainer::EpochStats Trainer::resume_epoch_stats() {
  EpochStats stats;
  zero_async(ctx_, sums_.span());
  if (options_.resume != nullptr && comm_.rank() == 0) {
    // The epoch's running loss and accuracy sums continue on rank 0, so its metrics line is whole.
    const auto m = nlohmann::json::parse(options_.resume->state.epoch_metrics_json);
    const std::array<double, 2> sums{m.value("loss_sum", 0.0), m.value("correct", 0.0)};
    upload(ctx_, sums_.span(), std::span<const double>(sums));
    stats.carried_samples = static_cast<int64_t>(m.value("samples", 0.0));
  }
  return stats;
}

bool Trainer::checkpoint_due_after_step(const Position& pos) const {
  const int64_t every = config_.checkpoint.every_steps;
  return every > 0 && pos.global_step % every == 0 && pos.step_in_epoch < steps_per_epoch_;
}

bool Trainer::checkpoint_due_after_epoch(const Position& evaluated) const {
  const bool epoch_done = evaluated.step_in_epoch == steps_per_epoch_;
  const bool run_done =
      evaluated.global_step >= total_steps_ || (epoch_done && evaluated.epoch + 1 >= config_.train.epochs);
  return (epoch_done && config_.checkpoint.every_epoch) || run_done;
}

bool Trainer::checkpoint_due_at_end(const Position& end, int64_t saved_step) const {
  return saved_step != end.global_step;
}

bool Trainer::stop_requested() {
  const bool here = preemption_requested();
  if (comm_.size() == 1) return here;
  return comm_.all_reduce_scalar(here ? 1.0 : 0.0, ReduceOp::Max) > 0;  // all ranks stop at the same step
}

void Trainer::log_progress(int64_t global_step, int epoch, const EpochStats& stats) {
  if (!progress_->due(global_step)) return;
  wait_for_device();
  std::array<double, 2> sums{};
  download(ctx_, std::span<const double>(sums_.span()), std::span<double>(sums));
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - stats.start).count();
  const double ips = elapsed > 0 ? static_cast<double>(stats.samples * comm_.size()) / elapsed : 0.0;
  const int64_t seen = stats.samples + stats.carried_samples;
  const double loss = seen > 0 ? sums[0] / static_cast<double>(seen) : 0.0;
  if (seen > 0) check_training_loss(loss, global_step, epoch + 1);
  progress_->update(global_step, epoch + 1, loss, ips);
}

void Trainer::set_aside_later_checkpoints(int64_t resumed_step) {
  const std::vector<std::string> moved = checkpoints_->set_aside_after(resumed_step);
  if (moved.empty()) return;
  std::string names = moved.front();
  if (moved.size() > 1) names += " to " + moved.back();
  std::fprintf(stderr,
               "dptrain: warning: resumed at step %lld: moved %zu checkpoint(s) of later steps (%s) into %s/set-aside-%lld/, "
               "so that rotation and --resume auto follow this run\n",
               static_cast<long long>(resumed_step), moved.size(), names.c_str(), options_.out_dir.c_str(),
               static_cast<long long>(resumed_step));
  std::fflush(stderr);
}

void Trainer::check_training_loss(double loss, int64_t global_step, int epoch) {
  std::optional<std::string> warning;
  try {
    warning = divergence_->check_training_loss(loss, global_step, epoch);
  } catch (const DivergenceError&) {
    if (progress_) progress_->clear();  // the error line starts a line of its own
    throw;
  }
  if (!warning) return;
  if (progress_) progress_->clear();
  std::fprintf(stderr, "dptrain: warning: %s\n", warning->c_str());
  std::fflush(stderr);
}

void Trainer::write_weights(int64_t global_step) {
  if (comm_.rank() != 0) return;
  const ParamStore<float>& params = model_->params();
  std::vector<float> host(params.size());
  download(ctx_, std::span<const float>(params.values().span()), std::span<float>(host));
  std::vector<NamedTensor> tensors;
  for (const ParamEntry& e : params.entries())
    tensors.push_back({e.name, e.shape, std::span<const float>(host).subspan(e.offset, e.count)});
  const StateStore<float>& state = model_->state();
  std::vector<float> state_host(state.size());
  download(ctx_, std::span<const float>(state.values().span()), std::span<float>(state_host));
  for (NamedTensor& t : state_tensors(state, state_host)) tensors.push_back(std::move(t));
  divergence_->require_finite(tensors, global_step, "final weights file");
  save_weights(checkpoints_->final_path(), tensors, to_yaml(config_));
}

TrainSummary Trainer::run() {
  TrainSummary summary;
  Position pos = resume_position();
  summary.first_step = pos.global_step;
  progress_ = std::make_unique<Progress>(comm_.rank() == 0 && options_.show_progress, pos.global_step, total_steps_,
                                         config_.train.log_every);
  EpochStats stats = resume_epoch_stats();
  int64_t saved_step = options_.resume != nullptr ? pos.global_step : -1;  // the newest checkpoint's step
  const auto checkpoint = [&] {
    summary.checkpoint = save_checkpoint(pos, stats);
    saved_step = pos.global_step;
  };
  TrainTime trained;
  bool stop = false;
  while (pos.epoch < config_.train.epochs && pos.global_step < total_steps_ && !stop) {
    stats.start = std::chrono::steady_clock::now();
    while (pos.step_in_epoch < steps_per_epoch_ && pos.global_step < total_steps_) {
      step(pos.epoch, pos.step_in_epoch, pos.global_step);
      stats.samples += plan_->shard(pos.step_in_epoch, comm_.rank()).count;
      ++pos.step_in_epoch, ++pos.global_step;
      if (pos.global_step == options_.fail_after_step)
        throw std::runtime_error("injected failure after step " + std::to_string(pos.global_step));
      log_progress(pos.global_step, pos.epoch, stats);
      if ((stop = stop_requested())) break;
      if (checkpoint_due_after_step(pos)) checkpoint();
    }
    wait_for_device();
    trained.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - stats.start).count();
    trained.samples += stats.samples;
    progress_->clear();
    if (stop) break;
    finish_epoch(pos.epoch, pos.global_step, stats, /*last=*/pos.global_step >= total_steps_);
    summary.epochs_completed = pos.epoch + 1;
    const bool save = checkpoint_due_after_epoch(pos);
    if (pos.step_in_epoch == steps_per_epoch_) {  // the epoch is complete: the next one begins
      pos.epoch += 1, pos.step_in_epoch = 0;
      zero_async(ctx_, sums_.span());
      stats = EpochStats{};
    }
    if (save) checkpoint();
  }
  if (checkpoint_due_at_end(pos, saved_step)) checkpoint();
  return finish_run(summary, pos, stop, trained);
}

TrainSummary Trainer::finish_run(TrainSummary summary, const Position& end, bool preempted, const TrainTime& trained) {
  summary.preempted = preempted;
  summary.steps = end.global_step;
  summary.images_per_second =
      trained.seconds > 0 ? static_cast<double>(trained.samples * comm_.size()) / trained.seconds : 0;
  summary.final_eval = last_eval_;
  if (writer_) writer_->wait();  // the last checkpoint is on disk (or its failure ends the run) before the end
  if (profiler_) {
    nlohmann::json extra;
    if (comm_.rank() == 0) {
      extra["epoch_ends"] = epoch_end_->to_json(*writer_);
      if (options_.startup) extra["startup"] = options_.startup->to_json();
    }
    profiler_->report(ctx_, comm_, (std::filesystem::path(options_.out_dir) / "profile.json").string(), extra);
    if (comm_.rank() == 0) {
      std::string tables = epoch_end_->table(*writer_);
      if (options_.startup) tables += options_.startup->table("start-up (rank 0)");
      std::fputs(tables.c_str(), stdout);
      std::fflush(stdout);
    }
  }
  if (!preempted) write_weights(end.global_step);
  if (comm_.rank() == 0 && !preempted && end.global_step > summary.first_step) write_summary(summary, trained);
  comm_.barrier();
  return summary;
}

void Trainer::write_summary(const TrainSummary& summary, const TrainTime& trained) const {
  // train_eval_seconds counts what the fastest published MNIST runs count: the model build, the
  // planning, every training step and every test pass, with the data already on the device (the
  // upload is left out). The whole process is what /usr/bin/time says; startup has the rest.
  const double train_eval =
      std::chrono::duration<double>(last_eval_end_ - model_build_start_).count() - upload_seconds_;
  nlohmann::json j = {{"test_accuracy", summary.final_eval.accuracy},
                      {"test_loss", summary.final_eval.loss},
                      {"best_test_accuracy", best_accuracy_},
                      {"steps", summary.steps},
                      {"first_step", summary.first_step},
                      {"epochs_completed", summary.epochs_completed},
                      {"ranks", comm_.size()},
                      {"images_per_second", summary.images_per_second},
                      {"training_seconds", trained.seconds},
                      {"eval_seconds", epoch_end_->eval_s},  // rank 0's test passes in this process
                      {"upload_seconds", upload_seconds_},
                      {"train_eval_seconds", train_eval}};
  if (options_.startup) j["startup"] = options_.startup->to_json();
  write_file_atomically((std::filesystem::path(options_.out_dir) / "summary.json").string(), j.dump(2) + "\n");
}

}  // namespace dptrain
