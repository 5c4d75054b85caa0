// CrossRankSum: how a layer sums a few values over all ranks without knowing the communicator
// (STYLE.md, "Comm behind a hook"; Caffe's solver reaches comm through a callback the same way).
// Layers (floor 3) see only this interface; the trainer (floor 6) implements it over its
// Communicator (comm/, floor 5), so no layer includes comm, MPI or NCCL.
//
// Contract: every rank calls sum() the same number of times in the same order with the same
// sizes (a rank without samples calls it too: Layer::idle_pass); the result is identical on
// every rank. On CUDA the sum is queued on the context's compute stream without a host sync where
// the communicator allows it (NCCL), so it can be captured in the step's CUDA graph.
#pragma once

#include <span>

#include "core/device_context.h"

namespace dptrain {

class CrossRankSum {
 public:
  virtual ~CrossRankSum() = default;
  /// Number of ranks taking part (1: sum() is the identity).
  virtual int ranks() const = 0;
  /// Replaces `data` (memory of ctx's device) by its elementwise sum over all ranks.
  virtual void sum(DeviceContext& ctx, std::span<float> data) = 0;
};

}  // namespace dptrain
