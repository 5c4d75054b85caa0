// CUDA launches of the optimizer update rules (src/core/update_rules.h) over the flat buffers.
// Scalars are read from device memory so a captured CUDA graph sees each step's values.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "core/update_rules.h"

namespace dptrain::kernels {

void sgd_step(float* p, const float* g, float* buf, size_t n, const rules::SgdHyper& h, const StepScalars* s,
              cudaStream_t stream);
void adam_step(float* p, const float* g, float* m, float* v, size_t n, const rules::AdamHyper& h, const StepScalars* s,
               cudaStream_t stream);
void adadelta_step(float* p, const float* g, float* sq, float* acc, size_t n, const rules::AdadeltaHyper& h,
                   const StepScalars* s, cudaStream_t stream);

}  // namespace dptrain::kernels
