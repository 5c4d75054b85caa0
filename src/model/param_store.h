// ParamStore<T>: the model's one flat parameter buffer and one flat gradient buffer, with a table
// of named views (state_dict names and shapes). Each tensor starts on a 64-element boundary so
// library kernels see aligned pointers; the padding is zero in both buffers and stays zero under
// every optimizer (zero gradient, zero weight).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/buffer.h"
#include "layers/layer.h"

namespace dptrain {

struct ParamEntry {
  std::string name;  ///< state_dict key, e.g. "conv1.weight"
  ParamShape shape;
  size_t offset = 0;  ///< into the flat buffers, in elements
  size_t count = 0;
  ParamInit init = ParamInit::KaimingUniform;
  int64_t fan_in = 1;
  int layer = -1;     ///< index of the owning layer
};

template <typename T>
class ParamStore {
 public:
  static constexpr size_t kAlign = 64;

  ParamStore() = default;
  /// Lays out `specs` (name, shape, init filled; offsets computed) and allocates both buffers zeroed.
  ParamStore(Device device, std::vector<ParamEntry> entries);

  const std::vector<ParamEntry>& entries() const { return entries_; }
  /// Index of the entry named `name`, or -1.
  int find(const std::string& name) const;
  size_t size() const { return values_.size(); }

  Buffer<T>& values() { return values_; }
  const Buffer<T>& values() const { return values_; }
  Buffer<T>& grads() { return grads_; }

  ParamView<T> view(size_t entry);

  /// PyTorch's default initialisation, drawn on the host from (seed, entry index, element) and
  /// copied to the device: the same weights on every backend and every rank.
  void initialize(uint64_t seed);

 private:
  std::vector<ParamEntry> entries_;
  Buffer<T> values_;
  Buffer<T> grads_;
};

/// PyTorch's default init of `count` elements of one tensor, in double: U(-b, b), b = 1/sqrt(fan_in).
std::vector<double> default_init_values(uint64_t seed, uint32_t param_index, size_t count, int64_t fan_in);

}  // namespace dptrain
