// BatchSource: turns a dataset and an epoch's sample order into normalised input batches in the
// memory of the device that trains (host arrays for the CPU backend; resident device arrays and a
// gather kernel for CUDA, so no batch crosses PCIe during training).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>

#include "core/augment.h"
#include "core/device_context.h"
#include "core/step_gather.h"
#include "data/dataset.h"
#include "io/config.h"

namespace dptrain {

class BatchSource {
 public:
  virtual ~BatchSource() = default;
  virtual int64_t size() const = 0;
  /// Fixes the order of `epoch`: the (seed, epoch) shuffle, or dataset order if not shuffling.
  virtual void begin_epoch(uint64_t seed, uint32_t epoch) = 0;
  /// Samples at epoch positions [first, first + count) into x (count x C x H x W floats,
  /// normalised) and y (count labels), both in the context's memory. Queued; does not wait.
  virtual void gather(DeviceContext& ctx, int64_t first, int count, float* x, int32_t* y) = 0;
  /// The same, starting at the epoch position ctx.step()->info.first_sample, read when the work
  /// runs (on CUDA, inside a replayed graph).
  virtual void gather_step(DeviceContext& ctx, int count, float* x, int32_t* y) = 0;
  /// gather_step as a kernel that reads its own batch takes it (core/step_gather.h), writing x and
  /// y; none where the gather is more than a copy and a normalisation (augmentation) or runs on the
  /// host.
  virtual std::optional<StepGather> step_gather(DeviceContext& ctx, float* x, int32_t* y) const = 0;
};

/// The source for ctx's device. The dataset must outlive the source. With `augment`, the batches
/// get config.augment's random transforms (training only: evaluation sources pass false), keyed by
/// (seed, epoch, epoch position): begin_epoch's for gather, the StepState's for gather_step.
std::unique_ptr<BatchSource> make_batch_source(const Dataset& data, const DataConfig& config, bool shuffle,
                                               DeviceContext& ctx, bool augment = false);

/// data.augment in the form the gathers use (core/augment.h); all zero when `augment` is false.
augment::Settings augment_settings(const DataConfig& config, bool augment);

}  // namespace dptrain
