#include "train/runtime.h"

#include <memory>

#include "core/cuda_support.h"
#include "core/error.h"
#include "cpu/threads.h"
#include "train/startup_timer.h"
#if DPTRAIN_HAVE_CUDA
#include "core/cublas_loader.h"
#include "core/cuda_context.h"
#include "core/cudnn_preload.h"
#endif

namespace dptrain {

Device resolve_device(const std::string& flag) {
  if (flag == "cpu") return Device::Cpu;
#if !DPTRAIN_HAVE_CUDA
  if (flag == "cuda") throw_built_without_cuda();  // and "auto" is the CPU: cuda_device_count() is 0
#endif
  if (flag != "cuda" && flag != "auto") throw InputError("--device " + flag, "expected cpu, cuda or auto");
  const bool have_gpu = cuda_device_count() > 0;
  if (flag == "cuda" && !have_gpu)
    throw InputError("--device cuda", "no CUDA device is visible (use --device cpu or auto)");
  if (!have_gpu) return Device::Cpu;
#if DPTRAIN_HAVE_CUDA
  // Beside the CUDA context's creation, which comes next (core/cublas_loader.h,
  // core/cudnn_preload.h). Not earlier: the device count loads CUDA's driver library, and two
  // library loads at once take turns.
  start_loading_cublas();
  start_preloading_cudnn();
#endif
  return Device::Cuda;
}

DeviceContext make_device_context(Device device, const TrainConfig& train, int cuda_device) {
  if (device == Device::Cpu) return DeviceContext();
#if DPTRAIN_HAVE_CUDA
  CudaOptions options;
  options.device = cuda_device;
  options.tf32 = train.precision == "tf32";
  options.cudnn_benchmark = train.cudnn_benchmark;
  options.deterministic = train.deterministic;
  options.exact_convolutions = train.exact_convolutions;
  options.fuse_elementwise = !train.check_numerics;
  return DeviceContext(std::make_unique<CudaContext>(options));
#else
  (void)train, (void)cuda_device;
  throw_built_without_cuda();
#endif
}

void mark_device_startup(const DeviceContext& ctx, StartupTimer& timer) {
  if (!ctx.on_cuda()) return;
#if DPTRAIN_HAVE_CUDA
  timer.mark_parts({{"cuda_context", ctx.cuda().context_seconds()}}, "cuda_handles");
  timer.add_overlapped("cublas_load", cublas_load_seconds());
  timer.add_overlapped("cudnn_preload", cudnn_preload_result().seconds);
#else
  (void)timer;
#endif
}

void configure_cpu_threads(int threads) {
  if (threads > 0) set_cpu_threads(threads);
}

}  // namespace dptrain
