// The model's CUDA parts in a CPU-only build (DPTRAIN_HAVE_CUDA 0): compiled there instead of
// model/cuda/, never beside it. No CUDA context exists there, so make_fused_train_step never asks.
#include <memory>

#include "core/cuda_support.h"
#include "model/fused_train_step.h"

#if DPTRAIN_HAVE_CUDA
#error "model/cuda_absent.cpp belongs to the CPU-only build only (CMakeLists.txt)"
#endif

namespace dptrain {

std::unique_ptr<FusedTrainStep> make_lenet5_train_step(const std::vector<ParamEntry>&, int, double) {
  throw_built_without_cuda();
}

bool plan_fused_pass(DeviceContext&, FusedTrainStep&, int, Dims, const float*, float*, std::span<const ParamEntry>,
                     const LayeredPass&) {
  throw_built_without_cuda();
}

}  // namespace dptrain
