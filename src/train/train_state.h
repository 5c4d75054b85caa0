// A training run's tensors as checkpoint tensors: the flat parameter buffer under its state_dict
// names, then the flat state buffer (batchnorm's running statistics, model/state_store.h) under
// theirs, and each optimizer slot buffer as optimizer.<param>.<slot>, and back. The padding between
// tensors in the flat buffers is not saved (it is zero by construction).
#pragma once

#include <string>
#include <vector>

#include "core/device_context.h"
#include "io/checkpoint.h"
#include "model/param_store.h"
#include "model/state_store.h"
#include "optim/optimizer.h"

namespace dptrain {

/// Host copies of the parameters and optimizer state, with the named views save_checkpoint takes.
/// Not copyable: the views point into its own vectors.
class TrainStateSnapshot {
 public:
  /// Waits for the queued work, then downloads.
  TrainStateSnapshot(DeviceContext& ctx, const ParamStore<float>& params, const StateStore<float>& state,
                     Optimizer& optimizer);
  TrainStateSnapshot(const TrainStateSnapshot&) = delete;
  TrainStateSnapshot& operator=(const TrainStateSnapshot&) = delete;

  const std::vector<NamedTensor>& model() const { return model_; }
  const std::vector<NamedTensor>& optimizer() const { return optimizer_; }

 private:
  std::vector<float> params_;
  std::vector<float> state_;
  std::vector<std::vector<float>> slots_;
  std::vector<NamedTensor> model_;
  std::vector<NamedTensor> optimizer_;
};

/// Loads the parameters and optimizer state of a validated checkpoint. InputError(path, ...) if a
/// tensor is missing, extra or of another shape (a checkpoint of another model or optimizer).
void restore_train_state(const LoadedCheckpoint& checkpoint, DeviceContext& ctx, ParamStore<float>& params,
                         StateStore<float>& state, Optimizer& optimizer);

/// The state tensors' names and host views of `flat` (a download of `state`), for files.
std::vector<NamedTensor> state_tensors(const StateStore<float>& state, const std::vector<float>& flat);

/// Fills `state` from the file's tensors of its names (F32, or I64 counters); padding zero.
/// InputError(file, "tensor '<name>' is missing") for a file without them (e.g. written before
/// the config had batchnorm).
template <typename File>
void restore_state_tensors(const File& file, DeviceContext& ctx, StateStore<float>& state);

}  // namespace dptrain
