// Writing the per-step state (core/step_state.h) on the device, ordered on a stream.
#pragma once

#include <cuda_runtime_api.h>

#include "core/step_state.h"

namespace dptrain::kernels {

/// One thread copies the by-value `state` to `dst`: kernel arguments are captured at launch, so
/// this needs no pinned staging buffer and no host synchronisation.
void write_step_state(StepState* dst, const StepState& state, cudaStream_t stream);
/// For a write_step_state captured as `node` of a graph instantiated as `exec`: the launches of
/// exec from now on write `state` instead (cudaGraphExecKernelNodeSetParams; launches already
/// queued keep theirs).
void set_captured_step_state(cudaGraphExec_t exec, cudaGraphNode_t node, const StepState& state);

}  // namespace dptrain::kernels
