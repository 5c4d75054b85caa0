#include "core/device_ops.h"

#include <cstdint>
#include <cstring>
#include <stdexcept>

#include "core/cuda_support.h"
#if DPTRAIN_HAVE_CUDA
#include <cuda_runtime.h>

#include "core/cuda_check.h"
#include "core/cuda_context.h"
#endif

namespace dptrain {

namespace {

// The CUDA side, on the context's compute stream. A CPU-only build has no CUDA context, so there
// these are never reached.
#if DPTRAIN_HAVE_CUDA
void zero_on_stream(DeviceContext& ctx, void* p, size_t bytes) {
  CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, ctx.cuda().stream()));
}
void copy_and_wait(DeviceContext& ctx, void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, kind, ctx.cuda().stream()));
  CUDA_CHECK(cudaStreamSynchronize(ctx.cuda().stream()));
}
void upload_and_wait(DeviceContext& ctx, void* dst, const void* src, size_t bytes) {
  copy_and_wait(ctx, dst, src, bytes, cudaMemcpyHostToDevice);
}
void download_and_wait(DeviceContext& ctx, void* dst, const void* src, size_t bytes) {
  copy_and_wait(ctx, dst, src, bytes, cudaMemcpyDeviceToHost);
}
void wait_for_stream(DeviceContext& ctx) { CUDA_CHECK(cudaStreamSynchronize(ctx.cuda().stream())); }
#else
void zero_on_stream(DeviceContext&, void*, size_t) { throw_built_without_cuda(); }
void upload_and_wait(DeviceContext&, void*, const void*, size_t) { throw_built_without_cuda(); }
void download_and_wait(DeviceContext&, void*, const void*, size_t) { throw_built_without_cuda(); }
void wait_for_stream(DeviceContext&) { throw_built_without_cuda(); }
#endif

}  // namespace

template <typename T>
void zero_async(DeviceContext& ctx, std::span<T> data) {
  if (data.empty()) return;
  if (!ctx.on_cuda()) {
    std::memset(data.data(), 0, data.size_bytes());
    return;
  }
  zero_on_stream(ctx, data.data(), data.size_bytes());
}

template <typename T>
void upload(DeviceContext& ctx, std::span<T> dst, std::span<const T> src) {
  if (dst.size() != src.size()) throw std::logic_error("upload: size mismatch");
  if (src.empty()) return;
  if (!ctx.on_cuda()) {
    std::memcpy(dst.data(), src.data(), src.size_bytes());
    return;
  }
  upload_and_wait(ctx, dst.data(), src.data(), src.size_bytes());
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
  download_and_wait(ctx, dst.data(), src.data(), src.size_bytes());
}

void synchronize(DeviceContext& ctx) {
  if (!ctx.on_cuda()) return;
  ctx.join_side_work();
  wait_for_stream(ctx);
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
