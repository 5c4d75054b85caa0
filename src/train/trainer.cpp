#include "train/trainer.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/device_ops.h"
#include "cuda/cuda_context.h"
#include "core/error.h"
#include "data/sampler.h"
#include "io/checkpoint.h"
#include "train/numerics_checker.h"
#include "train/profiler.h"
#include "train/progress.h"
#include "train/step_graph.h"

namespace dptrain {

struct Trainer::EpochStats {
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  int64_t samples = 0;  // this rank's samples this epoch
};

namespace {

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
                 Communicator& comm, GradientHook* hook)
    : config_(config), options_(options), data_(data), ctx_(ctx), comm_(comm), hook_(hook) {
  global_batch_ = resolve_global_batch(config_.train, comm_.size());
  plan_ = std::make_unique<BatchPlan>(data_.train.count, global_batch_, comm_.size());
  steps_per_epoch_ = plan_->steps_per_epoch();
  const int local_batch = (global_batch_ + comm_.size() - 1) / comm_.size();
  const int eval_batch = comm_.rank() == 0 ? config_.train.eval_batch_size : 0;
  model_ = std::make_unique<Model<float>>(config_.model, ctx_, std::max(local_batch, eval_batch));
  optimizer_ = make_optimizer(config_.train.optimizer, ctx_.device(), model_->params().size());
  const int64_t planned = steps_per_epoch_ * config_.train.epochs;
  total_steps_ = config_.train.max_steps > 0 ? std::min(planned, config_.train.max_steps) : planned;
  schedule_ =
      std::make_unique<LrSchedule>(config_.train.schedule, config_.train.optimizer.lr, steps_per_epoch_, total_steps_);
  source_ = make_batch_source(data_.train, config_.data, /*shuffle=*/true, ctx_);
  if (comm_.rank() == 0) evaluator_ = std::make_unique<Evaluator>(data_.test, config_.data, config_.train.eval_batch_size, ctx_);
  const Dims in = config_.model.input;
  if (in.c != 1 || in.h != data_.train.rows || in.w != data_.train.cols)
    throw InputError(config_.source, "model.input is " + to_string(in) + " but the data has 1x" +
                                         std::to_string(data_.train.rows) + "x" + std::to_string(data_.train.cols) + " images");
  local_batch_ = local_batch;
  x_ = Buffer<float>(ctx_.device(), static_cast<size_t>(local_batch) * in.count());
  y_ = Buffer<int32_t>(ctx_.device(), static_cast<size_t>(local_batch));
  sums_ = Buffer<double>(ctx_.device(), 2);

  // Identical start on every rank: rank 0's initial parameters (from the seed) are broadcast.
  model_->params().initialize(config_.train.seed);
  comm_.broadcast(model_->params().values().span(), 0, ctx_.on_cuda() ? ctx_.cuda().stream() : nullptr);
  attach_observer();
}

Trainer::~Trainer() = default;

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
    profiler_->set_exchange(hook_);
    model_->set_observer(profiler_.get());
  }
}

void Trainer::set_gradient_hook(GradientHook* hook) {
  hook_ = hook;
  if (profiler_) profiler_->set_exchange(hook);
}

GradientHook* Trainer::step_hook() { return profiler_ ? profiler_.get() : hook_; }

void Trainer::step(int epoch, int64_t step_in_epoch, int64_t global_step) {
  if (epoch != source_epoch_) {
    source_->begin_epoch(config_.train.seed, static_cast<uint32_t>(epoch));
    source_epoch_ = epoch;
  }
  const BatchPlan::Shard shard = plan_->shard(step_in_epoch, comm_.rank());
  const int64_t batch = plan_->global_batch_size(step_in_epoch);
  const StepState state{{config_.train.seed, static_cast<uint32_t>(epoch), static_cast<uint32_t>(shard.first)},
                        optimizer_->scalars(schedule_->lr(global_step), global_step + 1)};
  if (profiler_) profiler_->begin_step(ctx_, global_step, shard.count);
  ctx_.set_step(state);  // outside any graph: every replay reads this step's values
  // Each rank scales by the global batch, so the summed gradients are the global batch mean.
  const float grad_scale = 1.0f / static_cast<float>(batch);
  if (graph_ && graph_->matches(shard.count, grad_scale)) {
    graph_->launch();
    return;
  }
  // A host communicator (MPI) stages gradients through the host with a stream sync: not capturable.
  const bool capturable_exchange = hook_ == nullptr || comm_.name() != "mpi";
  // Checking and profiling work per layer, launch by launch, which a replayed graph would skip.
  const bool observed = numerics_ || profiler_;
  const bool capture = ctx_.on_cuda() && config_.train.cuda_graph && capturable_exchange && !observed &&
                       shard.count == local_batch_ && warmed_up_;
  if (capture) graph_ = std::make_unique<StepGraph>(ctx_.cuda().stream(), shard.count, grad_scale);
  run_step(state.info, shard.count, grad_scale);
  if (capture) {
    graph_->end_capture();
    graph_->launch();  // the captured work has not run yet
  }
  if (shard.count == local_batch_) warmed_up_ = true;  // algorithms chosen, workspaces sized: capturable
  if (numerics_) numerics_->end_step(ctx_, global_step, epoch);
}

void Trainer::run_step(const StepInfo& info, int count, float grad_scale) {
  const Dims in = config_.model.input;
  ParamStore<float>& params = model_->params();
  if (count > 0) {
    source_->gather_step(ctx_, count, x_.data(), y_.data());
    if (profiler_) profiler_->data_done(ctx_);
    model_->forward(ctx_, TensorView<const float>{x_.data(), count, in}, Phase::Train, info);
    model_->backward(ctx_, y_.data(), grad_scale, sums_.data(), step_hook());
  } else {
    // A tail batch smaller than the rank count leaves this rank idle; it still joins the exchange.
    zero_async(ctx_, params.grads().span());
    if (GradientHook* hook = step_hook(); hook != nullptr) {
      hook->on_gradients_ready(ctx_, 0, params.size());
      hook->on_backward_done(ctx_);
    }
  }
  optimizer_->step(ctx_, params.values().span(), params.grads().span(), &ctx_.step()->scalars);
  if (profiler_) profiler_->optimizer_done(ctx_);
  if (numerics_) numerics_->parameters_updated(ctx_, params);
}

void Trainer::finish_epoch(int epoch, int64_t global_step, EpochStats& stats) {
  std::array<double, 2> sums{};
  download(ctx_, std::span<const double>(sums_.span()), std::span<double>(sums));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - stats.start).count();
  const double loss_sum = comm_.all_reduce_scalar(sums[0], ReduceOp::Sum);
  const double correct = comm_.all_reduce_scalar(sums[1], ReduceOp::Sum);
  const double samples = comm_.all_reduce_scalar(static_cast<double>(stats.samples), ReduceOp::Sum);
  const double slowest = comm_.all_reduce_scalar(seconds, ReduceOp::Max);
  if (comm_.rank() == 0) {
    const EvalResult ev = evaluator_->run(*model_, ctx_);
    last_eval_ = ev;
    nlohmann::json line = {{"epoch", epoch + 1},
                           {"step", global_step},
                           {"train_loss", samples > 0 ? loss_sum / samples : 0.0},
                           {"train_accuracy", samples > 0 ? correct / samples : 0.0},
                           {"test_loss", ev.loss},
                           {"test_accuracy", ev.accuracy},
                           {"images_per_second", slowest > 0 ? samples / slowest : 0.0},
                           {"seconds", slowest},
                           {"lr", schedule_->lr(std::max<int64_t>(global_step - 1, 0))},
                           {"ranks", comm_.size()},
                           {"partial_epoch", samples < static_cast<double>(data_.train.count)}};
    std::ofstream out(std::filesystem::path(options_.out_dir) / "metrics.jsonl", std::ios::app);
    out << line.dump() << "\n";
    if (!out) throw std::runtime_error(options_.out_dir + "/metrics.jsonl: cannot write");
    std::printf("epoch %d  step %lld  train_loss %.4f  test_loss %.4f  test_accuracy %.2f%%  %.0f img/s  %.1f s\n",
                epoch + 1, static_cast<long long>(global_step), line["train_loss"].get<double>(), ev.loss,
                100.0 * ev.accuracy, line["images_per_second"].get<double>(), slowest);
    std::fflush(stdout);
  }
  comm_.barrier();  // the others wait here, outside NCCL, while rank 0 evaluates and writes
  zero_async(ctx_, sums_.span());
  stats = EpochStats{};
}

void Trainer::write_weights() {
  if (comm_.rank() != 0) return;
  const ParamStore<float>& params = model_->params();
  std::vector<float> host(params.size());
  download(ctx_, std::span<const float>(params.values().span()), std::span<float>(host));
  std::vector<NamedTensor> tensors;
  for (const ParamEntry& e : params.entries())
    tensors.push_back({e.name, e.shape, std::span<const float>(host).subspan(e.offset, e.count)});
  save_weights((std::filesystem::path(options_.out_dir) / "final.safetensors").string(), tensors, to_yaml(config_));
}

TrainSummary Trainer::run() {
  TrainSummary summary;
  const int64_t total = total_steps_;
  Progress progress(comm_.rank() == 0 && options_.show_progress, total, config_.train.log_every);
  zero_async(ctx_, sums_.span());
  int64_t global_step = 0;
  double train_seconds = 0;
  int64_t train_samples = 0;
  EpochStats stats;
  for (int epoch = 0; epoch < config_.train.epochs && global_step < total; ++epoch) {
    stats = EpochStats{};
    for (int64_t s = 0; s < steps_per_epoch_ && global_step < total; ++s, ++global_step) {
      step(epoch, s, global_step);
      stats.samples += plan_->shard(s, comm_.rank()).count;
      if (progress.due(global_step)) {
        std::array<double, 2> sums{};
        download(ctx_, std::span<const double>(sums_.span()), std::span<double>(sums));
        const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - stats.start).count();
        const double ips = elapsed > 0 ? static_cast<double>(stats.samples * comm_.size()) / elapsed : 0.0;
        progress.update(global_step, epoch + 1, stats.samples > 0 ? sums[0] / static_cast<double>(stats.samples) : 0.0, ips);
      }
    }
    synchronize(ctx_);
    train_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - stats.start).count();
    train_samples += stats.samples;
    progress.clear();
    finish_epoch(epoch, global_step, stats);
    summary.epochs_completed = epoch + 1;
  }
  summary.steps = global_step;
  summary.images_per_second = train_seconds > 0 ? static_cast<double>(train_samples * comm_.size()) / train_seconds : 0;
  summary.final_eval = last_eval_;
  if (profiler_) profiler_->report(ctx_, comm_, (std::filesystem::path(options_.out_dir) / "profile.json").string());
  write_weights();
  comm_.barrier();
  return summary;
}

}  // namespace dptrain
