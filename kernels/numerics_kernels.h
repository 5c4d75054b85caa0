// The --check-numerics probe on the device: flags a span that holds a NaN or an Inf, without a host
// round trip, so a whole step's checks cost one read of a small flag array at the step's end.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

namespace dptrain::kernels {

/// Sets *flag to 1 if any of x[0, n) is NaN or +-Inf; never clears it. Queued on `stream`.
void flag_non_finite(const float* x, size_t n, int* flag, cudaStream_t stream);
void flag_non_finite(const double* x, size_t n, int* flag, cudaStream_t stream);

}  // namespace dptrain::kernels
