// A training run's tensors as checkpoint tensors: the flat parameter buffer under its state_dict
// names and each optimizer slot buffer as optimizer.<param>.<slot>, and back. The padding between
// tensors in the flat buffers is not saved (it is zero by construction).
#pragma once

#include <string>
#include <vector>

#include "core/device_context.h"
#include "io/checkpoint.h"
#include "model/param_store.h"
#include "optim/optimizer.h"

namespace dptrain {

/// Host copies of the parameters and optimizer state, with the named views save_checkpoint takes.
/// Not copyable: the views point into its own vectors.
class TrainStateSnapshot {
 public:
  /// Waits for the queued work, then downloads.
  TrainStateSnapshot(DeviceContext& ctx, const ParamStore<float>& params, Optimizer& optimizer);
  TrainStateSnapshot(const TrainStateSnapshot&) = delete;
  TrainStateSnapshot& operator=(const TrainStateSnapshot&) = delete;

  const std::vector<NamedTensor>& model() const { return model_; }
  const std::vector<NamedTensor>& optimizer() const { return optimizer_; }

 private:
  std::vector<float> params_;
  std::vector<std::vector<float>> slots_;
  std::vector<NamedTensor> model_;
  std::vector<NamedTensor> optimizer_;
};

/// Loads the parameters and optimizer state of a validated checkpoint. InputError(path, ...) if a
/// tensor is missing, extra or of another shape (a checkpoint of another model or optimizer).
void restore_train_state(const LoadedCheckpoint& checkpoint, DeviceContext& ctx, ParamStore<float>& params,
                         Optimizer& optimizer);

}  // namespace dptrain
