// Whether this dptrain has its CUDA backend, and what CUDA-free code needs to compile either way.
//
// CMake's DPTRAIN_CUDA option sets DPTRAIN_HAVE_CUDA (1 or 0) on dptrain_lib and everything that
// links it. A CPU-only build (0: no CUDA toolkit found, or -DDPTRAIN_CUDA=OFF) compiles no CUDA
// source (core's CUDA runtime, layers/cuda, kernels/, the NCCL communicator, the step graph), includes no CUDA header and
// links no CUDA library. Invariants of such a build:
//  - resolve_device() refuses --device cuda with an InputError (exit status 2) and "auto" is the
//    CPU, so no CUDA DeviceContext, CudaContext or Device::Cuda Buffer is ever made: every
//    ctx.on_cuda() branch is dead. Files that drive the GPU themselves keep that code inside
//    `#if DPTRAIN_HAVE_CUDA`.
//  - The entry points into the CUDA floor that CUDA-free code calls (the CUDA layer and batch
//    source makers, cuda_device_count) are defined by each floor's cuda_absent.cpp (core, layers, model, train): the makers refuse as
//    --device cuda does, and there are no devices.
#pragma once

#ifndef DPTRAIN_HAVE_CUDA
#error "DPTRAIN_HAVE_CUDA is not defined: it comes with dptrain_lib (CMake option DPTRAIN_CUDA)"
#endif

#if DPTRAIN_HAVE_CUDA
#include <cuda_runtime_api.h>
#else
// A stream handle as the CUDA runtime declares it, so that interfaces which order work on a stream
// (Optimizer::step_part, Communicator) keep one signature; in a CPU-only build it is always null.
typedef struct CUstream_st* cudaStream_t;
#endif

namespace dptrain {

/// DPTRAIN_HAVE_CUDA as a constant, for code that branches without needing CUDA declarations.
inline constexpr bool kHaveCuda = DPTRAIN_HAVE_CUDA != 0;

/// Number of usable CUDA devices; 0 (never an exception) when there is no driver or no GPU, and
/// always 0 in a CPU-only build. (Also declared by core/cuda_context.h, which defines it.)
int cuda_device_count();

#if !DPTRAIN_HAVE_CUDA
/// The InputError of a CPU-only build asked for CUDA: "--device cuda: this dptrain was built
/// without CUDA (...)", which main() prints as one line and exits 2 with.
[[noreturn]] void throw_built_without_cuda();
#endif

}  // namespace dptrain
