// Non-owning views of activations and parameters. Activations are NCHW; a flattened activation
// is N x C x 1 x 1. Storage is owned by Buffer (core/buffer.h); views never free anything.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

namespace dptrain {

/// Per-sample shape of an activation: channels x height x width.
struct Dims {
  int c = 0, h = 0, w = 0;
  constexpr int64_t count() const { return int64_t{c} * h * w; }
  friend constexpr bool operator==(const Dims&, const Dims&) = default;
};

std::string to_string(const Dims& d);

/// A batch of `n` samples of shape `dims`, contiguous NCHW.
template <typename T>
struct TensorView {
  T* data = nullptr;
  int n = 0;
  Dims dims{};
  int64_t size() const { return int64_t{n} * dims.count(); }
  int64_t sample_size() const { return dims.count(); }
  /// A const view of the same memory.
  template <typename U = T>
    requires(!std::is_const_v<U>)
  operator TensorView<const U>() const {
    return {data, n, dims};
  }
};

/// Shape of a parameter tensor as PyTorch's state_dict has it (e.g. [32,1,3,3]).
using ParamShape = std::vector<int64_t>;

inline int64_t element_count(const ParamShape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

}  // namespace dptrain
