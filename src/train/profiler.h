// Profiler: the --profile mode. It times each training step's stages — the batch gather, every
// layer's forward and backward, the loss, the exposed part of the gradient exchange and the
// optimizer — with CUDA events on the compute stream (steady_clock on the CPU backend), marks the
// same spans with NVTX ranges for Nsight Systems, and after the run prints a per-layer and
// per-stage table on rank 0 (mean, min and max over ranks) and writes it as profile.json.
//
// Invariants:
//  - It only records events and timestamps: results are bit-identical with and without it. The
//    trainer turns CUDA graph capture off while profiling, as a graph would hide per-layer events.
//  - It hears of layers as the model's LayerObserver and of the end of backward as the model's
//    GradientHook, wrapping the real exchange (null on one rank): "backward done" is marked on the
//    compute stream before the exchange's on_backward_done makes that stream wait for the
//    communication stream, "exchange done" right after, so their gap is the communication time
//    the optimizer actually waited for (exposed), not the part hidden behind backward.
//  - On the CPU the communicator is synchronous: the all-reduces that backward launches block the
//    host inside backward, with nothing to overlap. Their time (measured around the hook) is moved
//    from "compute" to "exchange", so that row is the whole communication cost there.
//  - Steps are read back one step late (two sets of events in turns), so the host still runs one
//    step ahead of the device; the first `warmup_steps` steps (cuDNN autotuning, first touches)
//    are not counted.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "comm/communicator.h"
#include "core/device_context.h"
#if DPTRAIN_HAVE_CUDA
#include "core/cuda_raii.h"
#endif
#include "model/gradient_hook.h"
#include "model/layer_observer.h"
#include "model/model.h"

namespace dptrain {

/// One step's time marks: CUDA events recorded on the compute stream, or host clock readings.
class StepMarks {
 public:
  StepMarks(DeviceContext& ctx, size_t points);
  void clear();
  /// Records point `p` at this position of the context's work.
  void mark(DeviceContext& ctx, size_t p);
  bool marked(size_t p) const { return marked_[p]; }
  /// Waits until the last marked point has happened (CUDA).
  void wait() const;
  /// Milliseconds from point `from` to point `to`; both must be marked and waited for.
  double ms(size_t from, size_t to) const;
  /// Host time spent blocked in synchronous gradient exchange calls during this step (CPU).
  void add_blocking_ms(double ms) { blocking_ms_ += ms; }
  double blocking_ms() const { return blocking_ms_; }

 private:
  bool on_cuda_;
#if DPTRAIN_HAVE_CUDA
  std::vector<CudaEvent> events_;
#endif
  std::vector<std::chrono::steady_clock::time_point> times_;
  std::vector<bool> marked_;
  size_t last_ = 0;
  double blocking_ms_ = 0;
};

class Profiler final : public LayerObserver<float>, public GradientHook {
 public:
  /// Times `model`'s layers (the model must outlive the profiler); skips the first warmup_steps.
  Profiler(DeviceContext& ctx, const Model<float>& model, int warmup_steps);
  ~Profiler() override;

  /// The gradient exchange the profiler forwards to (null: none, one rank).
  void set_exchange(GradientHook* exchange) { exchange_ = exchange; }

  /// The trainer's marks, in step order. `samples`: this rank's samples in the step.
  void begin_step(DeviceContext& ctx, int64_t global_step, int samples);
  void data_done(DeviceContext& ctx);
  void optimizer_done(DeviceContext& ctx);

  void forward_begin(DeviceContext& ctx, const Layer<float>& layer) override;
  void forward_done(DeviceContext& ctx, const Layer<float>& layer, TensorView<const float> out) override;
  void loss_done(DeviceContext& ctx, std::span<const double> sums) override;
  void backward_begin(DeviceContext& ctx, const Layer<float>& layer) override;
  void backward_done(DeviceContext& ctx, const Layer<float>& layer, TensorView<const float> din,
                     std::span<const float> grads) override;

  void on_gradients_ready(DeviceContext& ctx, size_t begin, size_t end) override;
  void on_backward_done(DeviceContext& ctx) override;

  /// Every rank: reads the last steps, reduces each row over ranks (collectives: call on all ranks
  /// together). Rank 0 prints the table and writes it to `json_path` (if not empty), with the keys
  /// of `extra` (the trainer's start-up and epoch-end times) added at the top level.
  void report(DeviceContext& ctx, Communicator& comm, const std::string& json_path,
              const nlohmann::json& extra = nlohmann::json());

 private:
  struct Row {
    std::string name;
    std::string note;    // what the row measures, for the table
    size_t from, to;     // marks
    double sum_ms = 0;   // over the counted steps
    int64_t steps = 0;
  };
  void add_row(std::string name, size_t from, size_t to, std::string note = "");
  /// Adds the finished step held by `marks` to the rows (unless it is a warm-up step).
  void collect(StepMarks& marks, int64_t step, int samples);
  void collect_pending();

  const Model<float>& model_;
  int warmup_steps_;
  GradientHook* exchange_ = nullptr;
  std::vector<StepMarks> marks_;     // two sets, used in turns by even and odd steps
  std::vector<int64_t> pending_step_;  // per set: the step it holds, -1 if collected
  std::vector<int> pending_samples_;
  StepMarks* current_ = nullptr;
  std::vector<std::string> range_names_;  // NVTX: per layer "<name> forward", "<name> backward"
  std::vector<Row> rows_;            // 2 per layer (forward, backward), then the stages
  size_t compute_row_ = 0;
  size_t exchange_row_ = 0;
  int64_t timed_samples_ = 0;
  int64_t timed_steps_ = 0;
};

}  // namespace dptrain
