// Choosing the device a process trains on and creating its context.
#pragma once

#include <string>

#include "core/device_context.h"
#include "io/config.h"

namespace dptrain {

class StartupTimer;  // train/startup_timer.h

/// "cpu", "cuda" or "auto" (CUDA when a GPU is visible). "cuda" without a GPU, or in a CPU-only
/// build (core/cuda_support.h), is an InputError; "auto" there is the CPU.
Device resolve_device(const std::string& flag);

/// The context for `device`; on CUDA drives GPU `cuda_device` with the config's precision.
DeviceContext make_device_context(Device device, const TrainConfig& train, int cuda_device = 0);

/// Ends the start-up phases of creating `ctx` (make_device_context, just called) in `timer`: on
/// CUDA "cuda_context" and "cuda_handles" (the cuDNN and cuBLAS handles, streams, workspaces); on
/// the CPU nothing (there is nothing to create: the time goes to the next phase).
void mark_device_startup(const DeviceContext& ctx, StartupTimer& timer);

/// Sets the CPU backend's thread count (OpenBLAS and loops); 0 keeps the library default.
void configure_cpu_threads(int threads);

}  // namespace dptrain
