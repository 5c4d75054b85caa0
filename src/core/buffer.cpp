#include "core/buffer.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <utility>

#include "core/cuda_support.h"
#if DPTRAIN_HAVE_CUDA
#include <cuda_runtime.h>

#include "core/cuda_check.h"
#endif

namespace dptrain {

namespace {

// Memory on the current CUDA device. A CPU-only build refuses to allocate it, so no Device::Cuda
// buffer there ever holds memory and the other operations are never reached.
#if DPTRAIN_HAVE_CUDA
void* device_alloc(size_t bytes) {
  void* p = nullptr;
  CUDA_CHECK(cudaMalloc(&p, bytes));
  return p;
}
void device_free(void* p) noexcept {
  cudaFree(p);  // no throw from a destructor; a failure here means the context is gone anyway
}
void device_upload(void* dst, const void* src, size_t bytes) {
  CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
  // From pageable memory cudaMemcpy may return before the DMA lands; non-blocking streams would
  // not wait for it. Set-up only, so wait here.
  CUDA_CHECK(cudaDeviceSynchronize());
}
void device_download(void* dst, const void* src, size_t bytes) {
  CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}
void device_zero(void* p, size_t bytes) {
  // Set-up only; waits, because work on non-blocking streams does not order after cudaMemset.
  CUDA_CHECK(cudaMemset(p, 0, bytes));
  CUDA_CHECK(cudaDeviceSynchronize());
}
#else
[[noreturn]] void* device_alloc(size_t) { throw_built_without_cuda(); }
void device_free(void*) noexcept {}
void device_upload(void*, const void*, size_t) { throw_built_without_cuda(); }
void device_download(void*, const void*, size_t) { throw_built_without_cuda(); }
void device_zero(void*, size_t) { throw_built_without_cuda(); }
#endif

}  // namespace

template <typename T>
Buffer<T>::Buffer(Device device, size_t count) : count_(count), device_(device) {
  if (count == 0) return;
  const size_t bytes = count * sizeof(T);
  if (device == Device::Cpu) {
    data_ = static_cast<T*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64));
    if (data_ == nullptr) throw std::bad_alloc();
  } else {
    data_ = static_cast<T*>(device_alloc(bytes));
  }
}

template <typename T>
Buffer<T>::~Buffer() {
  release();
}

template <typename T>
void Buffer<T>::release() noexcept {
  if (data_ == nullptr) return;
  if (device_ == Device::Cpu) {
    std::free(data_);
  } else {
    device_free(data_);
  }
  data_ = nullptr;
  count_ = 0;
}

template <typename T>
Buffer<T>::Buffer(Buffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      count_(std::exchange(other.count_, 0)),
      device_(other.device_) {}

template <typename T>
Buffer<T>& Buffer<T>::operator=(Buffer&& other) noexcept {
  if (this != &other) {
    release();
    data_ = std::exchange(other.data_, nullptr);
    count_ = std::exchange(other.count_, 0);
    device_ = other.device_;
  }
  return *this;
}

template <typename T>
void Buffer<T>::copy_from_host(std::span<const T> src) {
  if (src.size() != count_) throw std::logic_error("Buffer::copy_from_host: size mismatch");
  if (count_ == 0) return;
  if (device_ == Device::Cpu) {
    std::memcpy(data_, src.data(), count_ * sizeof(T));
  } else {
    device_upload(data_, src.data(), count_ * sizeof(T));
  }
}

template <typename T>
void Buffer<T>::copy_to_host(std::span<T> dst) const {
  if (dst.size() != count_) throw std::logic_error("Buffer::copy_to_host: size mismatch");
  if (count_ == 0) return;
  if (device_ == Device::Cpu) {
    std::memcpy(dst.data(), data_, count_ * sizeof(T));
  } else {
    device_download(dst.data(), data_, count_ * sizeof(T));
  }
}

template <typename T>
void Buffer<T>::zero() {
  if (count_ == 0) return;
  if (device_ == Device::Cpu) {
    std::memset(data_, 0, count_ * sizeof(T));
  } else {
    device_zero(data_, count_ * sizeof(T));
  }
}

template class Buffer<float>;
template class Buffer<double>;
template class Buffer<uint8_t>;
template class Buffer<int32_t>;
template class Buffer<uint32_t>;
template class Buffer<int64_t>;
template class Buffer<uint64_t>;

}  // namespace dptrain
