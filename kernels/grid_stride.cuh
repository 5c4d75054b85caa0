// Launch sizes for grid-stride loops: kernels whose threads step by gridDim.x *
// blockDim.x over n items, so any number of blocks covers the work and the cap
// only bounds the launch.
#pragma once

#include <cstddef>

namespace dptrain::kernels {

/// Blocks of `threads` threads for a grid-stride loop over `n` items: one per
/// `threads` items, at least one, at most `max_blocks` (each caller's cap:
/// enough blocks to fill any GPU, within grid.x's limit of 2^31 - 1).
constexpr unsigned grid_stride_blocks(size_t n, int threads,
                                      size_t max_blocks) {
  const size_t blocks =
      (n + static_cast<size_t>(threads) - 1) / static_cast<size_t>(threads);
  return static_cast<unsigned>(
      blocks < 1 ? 1 : (blocks > max_blocks ? max_blocks : blocks));
}

static_assert(grid_stride_blocks(0, 256, 8) == 1 &&
              grid_stride_blocks(257, 256, 8) == 2 &&
              grid_stride_blocks(size_t{1} << 40, 256, 65535 * 16) ==
                  65535 * 16);

} // namespace dptrain::kernels
