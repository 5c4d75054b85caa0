// Comparison of a candidate's output with a reference output on the device, for the convolution
// planner's check of every implementation it may choose (and for the shape-sweep tests): outputs
// of hundreds of millions of floats stay on the device, and only three numbers come back.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

namespace dptrain::kernels {

/// What compare_outputs() finds: sum over i of (a[i] - b[i])^2 and of b[i]^2, and how many a[i]
/// are NaN or +-Inf (an unwritten output, poisoned with NaN before the run, counts here).
struct Difference {
  double squared_error = 0;
  double squared_reference = 0;
  unsigned long long non_finite = 0;

  /// ||a - b|| / ||b|| (0 when both are zero), or +inf when any a[i] was not finite.
  double relative() const;
};

/// Accumulates the Difference of a against the reference b (n elements each) into *out, a device
/// Difference that the caller zeroes first. Queued on `stream`; deterministic only up to rounding
/// of the sums (atomics), which is all a tolerance check needs.
void compare_outputs(const float* a, const float* b, size_t n, Difference* out, cudaStream_t stream);

/// x[i] = a value in [-1, 1) drawn from (seed, i) by the counter-based generator (core/philox.h):
/// test and planning inputs that are neither zero nor constant, made on the device. Queued on `stream`.
void fill_uniform(float* x, size_t n, unsigned seed, cudaStream_t stream);

}  // namespace dptrain::kernels
