// The layout shared by the model's flat buffers (ParamStore, StateStore): each tensor starts on an
// `align`-element boundary, so library kernels see aligned pointers, and the padding between
// tensors belongs to no tensor.
#pragma once

#include <cstddef>
#include <vector>

#include "core/tensor.h"

namespace dptrain {

/// Fills each entry's count (from its shape) and offset; returns the buffer's total size in
/// elements. Entry is any struct with `shape`, `count` and `offset` members.
template <typename Entry>
size_t lay_out_aligned(std::vector<Entry>& entries, size_t align) {
  size_t offset = 0;
  for (Entry& e : entries) {
    e.count = static_cast<size_t>(element_count(e.shape));
    e.offset = offset;
    offset += (e.count + align - 1) / align * align;
  }
  return offset;
}

}  // namespace dptrain
