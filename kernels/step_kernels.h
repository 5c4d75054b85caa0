// Writing the per-step state (core/step_state.h) on the device, ordered on a stream.
#pragma once

#include <cuda_runtime_api.h>

#include "core/step_state.h"

namespace dptrain::kernels {

/// One thread copies the by-value `state` to `dst`: kernel arguments are captured at launch, so
/// this needs no pinned staging buffer and no host synchronisation.
void write_step_state(StepState* dst, const StepState& state, cudaStream_t stream);

}  // namespace dptrain::kernels
