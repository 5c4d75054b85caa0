// StateStore<T>: the model's one flat buffer of state tensors (PyTorch's buffers: batchnorm's
// running_mean, running_var, num_batches_tracked), beside ParamStore's flat parameter buffer and
// laid out the same way (64-element aligned views, zero padding) but with no gradient buffer: the
// optimizer and the gradient exchange never see it. Checkpoints, final.safetensors, resume, eval
// and inspect carry its tensors under their state_dict names, after the parameters.
//
// Invariant: an entry with `integer` set holds a whole number (num_batches_tracked), written to
// files as I64 and read back from I64 (or F32); T holds it exactly up to 2^24 (float) steps.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include "core/buffer.h"
#include "layers/layer.h"

namespace dptrain {

struct StateEntry {
  std::string name;  ///< state_dict key, e.g. "bn1.running_mean"
  ParamShape shape;
  size_t offset = 0;
  size_t count = 0;
  ParamInit init = ParamInit::Zeros;
  bool integer = false;
  int layer = -1;
};

template <typename T>
class StateStore {
 public:
  static constexpr size_t kAlign = 64;

  StateStore() = default;
  /// Lays out `entries` (offsets computed) and allocates the buffer, holding their initial values.
  StateStore(Device device, std::vector<StateEntry> entries);

  const std::vector<StateEntry>& entries() const { return entries_; }
  size_t size() const { return values_.size(); }
  Buffer<T>& values() { return values_; }
  const Buffer<T>& values() const { return values_; }
  std::span<T> view(size_t entry);

  /// The initial values (ones and zeros per StateEntry::init), padding zero, as a host image.
  std::vector<T> initial_values() const;
  /// Resets the buffer to initial_values().
  void initialize();

 private:
  std::vector<StateEntry> entries_;
  Buffer<T> values_;
};

}  // namespace dptrain
