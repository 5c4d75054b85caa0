#include "train/profiler.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "core/cuda_support.h"
#if DPTRAIN_HAVE_CUDA
#include <nvtx3/nvToolsExt.h>

#include "core/cuda_check.h"
#include "core/cuda_context.h"
#endif

namespace dptrain {

namespace {

#if !DPTRAIN_HAVE_CUDA
// NVTX ranges are for Nsight Systems on a GPU; a CPU-only build has neither, and marks nothing.
void nvtxRangePushA(const char*) {}
void nvtxRangePop() {}
#endif

// The marks of a step: fixed points, then four per layer.
enum Mark : size_t { kStepBegin, kDataDone, kLossDone, kBackwardDone, kExchangeDone, kOptimizerDone, kLayerMarks };
size_t forward_begin_mark(size_t layer) { return kLayerMarks + 4 * layer; }
size_t forward_done_mark(size_t layer) { return kLayerMarks + 4 * layer + 1; }
size_t backward_begin_mark(size_t layer) { return kLayerMarks + 4 * layer + 2; }
size_t backward_done_mark(size_t layer) { return kLayerMarks + 4 * layer + 3; }

struct Spread {
  double mean = 0, min = 0, max = 0;
};

/// This rank's value and its mean, min and max over the ranks (three collectives).
Spread over_ranks(Communicator& comm, double value) {
  return {comm.all_reduce_scalar(value, ReduceOp::Sum) / comm.size(), comm.all_reduce_scalar(value, ReduceOp::Min),
          comm.all_reduce_scalar(value, ReduceOp::Max)};
}

nlohmann::json to_json(const Spread& s) { return {{"mean", s.mean}, {"min", s.min}, {"max", s.max}}; }

}  // namespace

StepMarks::StepMarks(DeviceContext& ctx, size_t points) : on_cuda_(ctx.on_cuda()), marked_(points, false) {
#if DPTRAIN_HAVE_CUDA
  if (on_cuda_) {
    for (size_t p = 0; p < points; ++p) events_.push_back(make_event(/*timing=*/true));
    return;
  }
#endif
  times_.resize(points);
}

void StepMarks::clear() {
  std::fill(marked_.begin(), marked_.end(), false);
  blocking_ms_ = 0;
}

void StepMarks::mark([[maybe_unused]] DeviceContext& ctx, size_t p) {
#if DPTRAIN_HAVE_CUDA
  if (on_cuda_) CUDA_CHECK(cudaEventRecord(events_[p], ctx.cuda().stream()));
#endif
  if (!on_cuda_) times_[p] = std::chrono::steady_clock::now();
  marked_[p] = true;
  last_ = p;
}

void StepMarks::wait() const {
#if DPTRAIN_HAVE_CUDA
  if (on_cuda_ && marked_[last_]) CUDA_CHECK(cudaEventSynchronize(events_[last_]));
#endif
}

double StepMarks::ms(size_t from, size_t to) const {
#if DPTRAIN_HAVE_CUDA
  if (on_cuda_) {
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, events_[from], events_[to]));
    return ms;
  }
#endif
  return std::chrono::duration<double, std::milli>(times_[to] - times_[from]).count();
}

Profiler::Profiler(DeviceContext& ctx, const Model<float>& model, int warmup_steps)
    : model_(model), warmup_steps_(warmup_steps), pending_step_(2, -1), pending_samples_(2, 0) {
  const size_t layers = model.layers().size();
  for (int k = 0; k < 2; ++k) marks_.emplace_back(ctx, kLayerMarks + 4 * layers);
  for (size_t i = 0; i < layers; ++i) {
    const std::string& name = model.layers()[i]->name();
    range_names_.push_back(name + " forward");
    range_names_.push_back(name + " backward");
    add_row(name, forward_begin_mark(i), forward_done_mark(i));
    add_row(name, backward_begin_mark(i), backward_done_mark(i));
  }
  add_row("data", kStepBegin, kDataDone, "batch gather");
  compute_row_ = rows_.size();
  add_row("compute", kDataDone, kBackwardDone, "forward + loss + backward");
  add_row("loss", forward_done_mark(layers - 1), kLossDone, "(part of compute)");
  exchange_row_ = rows_.size();
  add_row("exchange", kBackwardDone, kExchangeDone,
          ctx.on_cuda() ? "gradient exchange the optimizer waited for (exposed)"
                        : "gradient exchange (synchronous on the CPU: all of it)");
  add_row("optimizer", kExchangeDone, kOptimizerDone, "update");
  add_row("step", kStepBegin, kOptimizerDone, "total");
}

Profiler::~Profiler() = default;

void Profiler::add_row(std::string name, size_t from, size_t to, std::string note) {
  rows_.push_back({std::move(name), std::move(note), from, to});
}

void Profiler::begin_step(DeviceContext& ctx, int64_t global_step, int samples) {
  const size_t set = static_cast<size_t>(global_step % 2);
  // The step two back used this set; reading it waits for it, while the previous step still runs.
  if (pending_step_[set] >= 0) collect(marks_[set], pending_step_[set], pending_samples_[set]);
  current_ = &marks_[set];
  current_->clear();
  pending_step_[set] = global_step;
  pending_samples_[set] = samples;
  nvtxRangePushA(("step " + std::to_string(global_step + 1)).c_str());
  current_->mark(ctx, kStepBegin);
}

void Profiler::data_done(DeviceContext& ctx) { current_->mark(ctx, kDataDone); }

void Profiler::optimizer_done(DeviceContext& ctx) {
  current_->mark(ctx, kOptimizerDone);
  nvtxRangePop();  // optimizer
  nvtxRangePop();  // step
}

void Profiler::forward_begin(DeviceContext& ctx, const Layer<float>& layer) {
  const auto i = static_cast<size_t>(layer.index());
  nvtxRangePushA(range_names_[2 * i].c_str());
  current_->mark(ctx, forward_begin_mark(i));
}

void Profiler::forward_done(DeviceContext& ctx, const Layer<float>& layer, TensorView<const float>) {
  current_->mark(ctx, forward_done_mark(static_cast<size_t>(layer.index())));
  nvtxRangePop();
}

void Profiler::loss_done(DeviceContext& ctx, std::span<const double>) { current_->mark(ctx, kLossDone); }

void Profiler::backward_begin(DeviceContext& ctx, const Layer<float>& layer) {
  const auto i = static_cast<size_t>(layer.index());
  nvtxRangePushA(range_names_[2 * i + 1].c_str());
  current_->mark(ctx, backward_begin_mark(i));
}

void Profiler::backward_done(DeviceContext& ctx, const Layer<float>& layer, TensorView<const float>,
                             std::span<const float>) {
  current_->mark(ctx, backward_done_mark(static_cast<size_t>(layer.index())));
  nvtxRangePop();
}

void Profiler::on_gradients_ready(DeviceContext& ctx, size_t begin, size_t end) {
  if (exchange_ == nullptr) return;
  const auto start = std::chrono::steady_clock::now();
  exchange_->on_gradients_ready(ctx, begin, end);
  if (!ctx.on_cuda())
    current_->add_blocking_ms(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
}

void Profiler::on_backward_done(DeviceContext& ctx) {
  current_->mark(ctx, kBackwardDone);
  nvtxRangePushA("exchange wait");
  // On CUDA this queues the compute stream's wait for the communication stream: the next mark
  // completes when the exchange has.
  if (exchange_ != nullptr) exchange_->on_backward_done(ctx);
  current_->mark(ctx, kExchangeDone);
  nvtxRangePop();
  nvtxRangePushA("optimizer");
}

void Profiler::collect(StepMarks& marks, int64_t step, int samples) {
  marks.wait();
  if (step < warmup_steps_) return;
  for (Row& row : rows_) {
    if (!marks.marked(row.from) || !marks.marked(row.to)) continue;  // e.g. an idle rank's tail step
    row.sum_ms += marks.ms(row.from, row.to);
    ++row.steps;
  }
  rows_[compute_row_].sum_ms -= marks.blocking_ms();
  rows_[exchange_row_].sum_ms += marks.blocking_ms();
  ++timed_steps_;
  timed_samples_ += samples;
}

void Profiler::collect_pending() {
  // Oldest first, so the step count stays in order.
  const size_t first = pending_step_[0] >= 0 && (pending_step_[1] < 0 || pending_step_[0] < pending_step_[1]) ? 0 : 1;
  for (size_t set : {first, 1 - first}) {
    if (pending_step_[set] < 0) continue;
    collect(marks_[set], pending_step_[set], pending_samples_[set]);
    pending_step_[set] = -1;
  }
}

void Profiler::report(DeviceContext& ctx, Communicator& comm, const std::string& json_path,
                      const nlohmann::json& extra) {
  collect_pending();
  std::vector<Spread> spreads;
  for (const Row& row : rows_) spreads.push_back(over_ranks(comm, row.steps > 0 ? row.sum_ms / row.steps : 0.0));
  // Global throughput: every rank's samples over the slowest rank's summed step time.
  const double samples = comm.all_reduce_scalar(static_cast<double>(timed_samples_), ReduceOp::Sum);
  const double slowest_s = comm.all_reduce_scalar(rows_.back().sum_ms / 1000.0, ReduceOp::Max);
  const double images_per_s = slowest_s > 0 ? samples / slowest_s : 0.0;
  if (comm.rank() != 0) return;

  const size_t layers = model_.layers().size();
  std::printf("profile: %lld steps timed after %d warm-up step(s), %d rank(s), %s; ms per step, mean [min max] "
              "over ranks\n",
              static_cast<long long>(timed_steps_), warmup_steps_, comm.size(),
              std::string(device_name(ctx.device())).c_str());
  if (timed_steps_ == 0) std::printf("profile: no step after the warm-up: run more steps for timings\n");
  std::printf("%-14s %9s %9s %9s   %9s %9s %9s\n", "layer", "forward", "min", "max", "backward", "min", "max");
  for (size_t i = 0; i < layers; ++i) {
    const Spread& f = spreads[2 * i];
    const Spread& b = spreads[2 * i + 1];
    std::printf("%-14s %9.3f %9.3f %9.3f   %9.3f %9.3f %9.3f\n", rows_[2 * i].name.c_str(), f.mean, f.min, f.max,
                b.mean, b.min, b.max);
  }
  std::printf("%-14s %9s %9s %9s\n", "stage", "mean", "min", "max");
  for (size_t r = 2 * layers; r < rows_.size(); ++r)
    std::printf("%-14s %9.3f %9.3f %9.3f   %s\n", rows_[r].name.c_str(), spreads[r].mean, spreads[r].min,
                spreads[r].max, rows_[r].note.c_str());
  std::printf("images/s       %9.0f   (all ranks' samples over the slowest rank's step time)\n", images_per_s);
  std::fflush(stdout);

  if (json_path.empty()) return;
  nlohmann::json j = {{"steps_timed", timed_steps_}, {"warmup_steps", warmup_steps_}, {"ranks", comm.size()},
                      {"device", std::string(device_name(ctx.device()))}, {"unit", "ms per step"},
                      {"images_per_second", images_per_s}};
  for (size_t i = 0; i < layers; ++i)
    j["layers"].push_back({{"name", rows_[2 * i].name}, {"forward", to_json(spreads[2 * i])},
                           {"backward", to_json(spreads[2 * i + 1])}});
  for (size_t r = 2 * layers; r < rows_.size(); ++r) j["stages"][rows_[r].name] = to_json(spreads[r]);
  if (extra.is_object())
    for (const auto& [key, value] : extra.items()) j[key] = value;
  std::ofstream out(json_path);
  out << j.dump(2) << "\n";
  if (!out) throw std::runtime_error(json_path + ": cannot write");
}

}  // namespace dptrain
