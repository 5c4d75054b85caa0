// The kernel-side description of a dropout a CUDA layer absorbed (Layer::absorb_following_dropout).
#pragma once

#include <cstdint>
#include <optional>

#include "core/device_context.h"
#include "kernels/fused_dropout.h"
#include "layers/layer.h"

namespace dptrain {

/// Active only for a training pass of a layer that absorbed a dropout; per_sample: the layer's
/// output elements per sample.
inline kernels::FusedDropout make_fused_dropout(const std::optional<DropoutSpec>& dropout, Phase phase,
                                                const DeviceContext& ctx, long per_sample) {
  if (!dropout || phase != Phase::Train) return {};
  return {ctx.step(), dropout->p, dropout->scale, static_cast<uint32_t>(dropout->layer), per_sample};
}

}  // namespace dptrain
