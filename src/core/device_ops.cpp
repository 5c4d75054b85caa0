#include "core/device_ops.h"

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>

#include "cuda/check.h"
#include "cuda/cuda_context.h"

namespace dptrain {

template <typename T>
void zero_async(DeviceContext& ctx, std::span<T> data) {
  if (data.empty()) return;
  if (!ctx.on_cuda()) {
    std::memset(data.data(), 0, data.size_bytes());
    return;
  }
  CUDA_CHECK(cudaMemsetAsync(data.data(), 0, data.size_bytes(), ctx.cuda().stream()));
}

template <typename T>
void upload(DeviceContext& ctx, std::span<T> dst, std::span<const T> src) {
  if (dst.size() != src.size()) throw std::logic_error("upload: size mismatch");
  if (src.empty()) return;
  if (!ctx.on_cuda()) {
    std::memcpy(dst.data(), src.data(), src.size_bytes());
    return;
  }
  CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), src.size_bytes(), cudaMemcpyHostToDevice, ctx.cuda().stream()));
  CUDA_CHECK(cudaStreamSynchronize(ctx.cuda().stream()));
}

template <typename T>
void download(DeviceContext& ctx, std::span<const T> src, std::span<T> dst) {
  if (dst.size() != src.size()) throw std::logic_error("download: size mismatch");
  if (src.empty()) return;
  if (!ctx.on_cuda()) {
    std::memcpy(dst.data(), src.data(), src.size_bytes());
    return;
  }
  ctx.join_side_work();
  CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), src.size_bytes(), cudaMemcpyDeviceToHost, ctx.cuda().stream()));
  CUDA_CHECK(cudaStreamSynchronize(ctx.cuda().stream()));
}

void synchronize(DeviceContext& ctx) {
  if (!ctx.on_cuda()) return;
  ctx.join_side_work();
  CUDA_CHECK(cudaStreamSynchronize(ctx.cuda().stream()));
}

#define DPTRAIN_INSTANTIATE(T)                                                      \
  template void zero_async<T>(DeviceContext&, std::span<T>);                        \
  template void upload<T>(DeviceContext&, std::span<T>, std::span<const T>);        \
  template void download<T>(DeviceContext&, std::span<const T>, std::span<T>);
DPTRAIN_INSTANTIATE(float)
DPTRAIN_INSTANTIATE(double)
DPTRAIN_INSTANTIATE(int32_t)
DPTRAIN_INSTANTIATE(uint32_t)
DPTRAIN_INSTANTIATE(uint8_t)
#undef DPTRAIN_INSTANTIATE

}  // namespace dptrain
