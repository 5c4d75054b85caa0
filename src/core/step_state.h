// StepState: everything that changes from one training step to the next, kept in the memory of
// the device that trains (host memory on the CPU, device memory on CUDA). Kernels read it through a
// pointer instead of taking the values as launch arguments, so one captured CUDA graph serves every
// step: before each replay the trainer writes the new state with one tiny kernel. C++17: CUDA
// kernels include it.
#pragma once

#include <cstdint>

#include "core/step_scalars.h"

namespace dptrain {

/// What stochastic layers key their random draws by (core/philox.h). The sample with index i in a
/// local batch is global sample first_sample + i of the epoch, whatever the rank count; the data
/// gather starts at the same epoch position.
struct StepInfo {
  uint64_t seed = 0;
  uint32_t epoch = 0;
  uint32_t first_sample = 0;
};

struct StepState {
  StepInfo info;
  StepScalars scalars;
};

}  // namespace dptrain
