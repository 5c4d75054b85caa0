// FusedDropout: a dropout applied inside another layer's kernels (Layer::absorb_following_dropout):
// the layer's forward multiplies its outputs by the mask, its backward the incoming gradient, and
// the mask is drawn again from the counter-based generator instead of being stored. The factor of
// element e of batch sample s is exactly kernels::dropout_forward's (and the CPU's): scale where
// philox::dropout_uniform(seed, epoch, layer, first_sample + s, e) >= p, else 0.
#pragma once

#include <cstdint>

#include "core/host_device.h"
#include "core/philox.h"
#include "core/step_state.h"

namespace dptrain::kernels {

struct FusedDropout {
  const StepState* step = nullptr;  ///< device-resident step (seed, epoch, first sample); null: no dropout
  float p = 0.0f;
  float scale = 1.0f;
  uint32_t layer = 0;  ///< the dropout layer's index, part of the generator's key
  long per_sample = 1;  ///< elements per sample of the tensor it applies to

  DPTRAIN_HD bool active() const { return step != nullptr; }
};

#ifdef __CUDACC__
/// The factor of flat element i (sample i / per_sample) of the batch: scale, 0, or 1 when inactive.
__device__ __forceinline__ float dropout_factor(const FusedDropout& d, long i) {
  if (d.step == nullptr) return 1.0f;
  const long s = i / d.per_sample;
  const StepInfo info = d.step->info;
  const float u = philox::dropout_uniform(info.seed, info.epoch, d.layer, info.first_sample + static_cast<uint32_t>(s),
                                          static_cast<uint32_t>(i - s * d.per_sample));
  return u >= d.p ? d.scale : 0.0f;
}

/// dropout_factor for a warp at once, with one generator call per four lanes: lanes 4t .. 4t + 3
/// must hold four consecutive elements of one sample, the first at a multiple of 4 (per_sample
/// a multiple of 4, and i % 4 == lane % 4), and every lane of the warp must call it.
__device__ __forceinline__ float dropout_factor_x4(const FusedDropout& d, long i) {
  if (d.step == nullptr) return 1.0f;
  const long s = i / d.per_sample;
  const StepInfo info = d.step->info;
  const unsigned lane = threadIdx.x % 32, leader = lane & ~3u;
  philox::U32x4 r{};
  if (lane == leader)
    r = philox::dropout_bits4(info.seed, info.epoch, d.layer, info.first_sample + static_cast<uint32_t>(s),
                              static_cast<uint32_t>(i - s * d.per_sample) >> 2);
  uint32_t mine = 0;
#pragma unroll
  for (unsigned k = 0; k < 4; ++k) {
    const uint32_t v = __shfl_sync(0xffffffffu, r.v[k], static_cast<int>(leader));
    if ((lane & 3u) == k) mine = v;
  }
  return philox::to_unit_float(mine) >= d.p ? d.scale : 0.0f;
}
#endif

}  // namespace dptrain::kernels
