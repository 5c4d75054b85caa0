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

/// The factors of flat elements i to i + 3 from one generator call (dropout_words serves four); i's
/// element within its sample must be a multiple of 4.
__device__ __forceinline__ float4 dropout_factors4(const FusedDropout& d, long i) {
  if (d.step == nullptr) return make_float4(1.0f, 1.0f, 1.0f, 1.0f);
  const long s = i / d.per_sample;
  const StepInfo info = d.step->info;
  const philox::U32x4 r = philox::dropout_words(info.seed, info.epoch, d.layer, info.first_sample + static_cast<uint32_t>(s),
                                                static_cast<uint32_t>(i - s * d.per_sample) >> 2);
  const auto factor = [&](uint32_t word) { return philox::to_unit_float(word) >= d.p ? d.scale : 0.0f; };
  return make_float4(factor(r.v[0]), factor(r.v[1]), factor(r.v[2]), factor(r.v[3]));
}
#endif

}  // namespace dptrain::kernels
