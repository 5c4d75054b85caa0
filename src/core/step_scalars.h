// StepScalars: what one optimizer step needs besides the buffers. Included by CUDA kernels: C++17.
#pragma once

namespace dptrain {

/// Per-step scalars, computed on the host in double (schedule, bias corrections) and rounded once,
/// so the CPU and GPU updates use identical values. The optimizer reads them through a pointer into
/// memory its device can read: host memory on the CPU, device memory on CUDA (so that a captured
/// CUDA graph sees new values on every replay).
struct StepScalars {
  float lr = 0.0f;
  float bias_correction1 = 1.0f;       ///< adam/adamw: 1 - beta1^t
  float bias_correction2_sqrt = 1.0f;  ///< adam/adamw: sqrt(1 - beta2^t)
  float first_step = 1.0f;             ///< sgd: 1 at t = 1 (momentum buffer starts as the gradient)
  /// sgd: momentum; adam/adamw: beta1. The configured value, or this step's when a schedule cycles
  /// it (onecycle), which is why it is a per-step scalar and not a hyper-parameter.
  float momentum = 0.0f;
};

}  // namespace dptrain
