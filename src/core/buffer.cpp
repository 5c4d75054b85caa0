#include "core/buffer.h"

#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <utility>

#include "cuda/check.h"

namespace dptrain {

template <typename T>
Buffer<T>::Buffer(Device device, size_t count) : count_(count), device_(device) {
  if (count == 0) return;
  const size_t bytes = count * sizeof(T);
  if (device == Device::Cpu) {
    data_ = static_cast<T*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64));
    if (data_ == nullptr) throw std::bad_alloc();
  } else {
    void* p = nullptr;
    CUDA_CHECK(cudaMalloc(&p, bytes));
    data_ = static_cast<T*>(p);
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
    cudaFree(data_);  // no throw from a destructor; a failure here means the context is gone anyway
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
    CUDA_CHECK(cudaMemcpy(data_, src.data(), count_ * sizeof(T), cudaMemcpyHostToDevice));
    // From pageable memory cudaMemcpy may return before the DMA lands; non-blocking streams would
    // not wait for it. Set-up only, so wait here.
    CUDA_CHECK(cudaDeviceSynchronize());
  }
}

template <typename T>
void Buffer<T>::copy_to_host(std::span<T> dst) const {
  if (dst.size() != count_) throw std::logic_error("Buffer::copy_to_host: size mismatch");
  if (count_ == 0) return;
  if (device_ == Device::Cpu) {
    std::memcpy(dst.data(), data_, count_ * sizeof(T));
  } else {
    CUDA_CHECK(cudaMemcpy(dst.data(), data_, count_ * sizeof(T), cudaMemcpyDeviceToHost));
  }
}

template <typename T>
void Buffer<T>::zero() {
  if (count_ == 0) return;
  if (device_ == Device::Cpu) {
    std::memset(data_, 0, count_ * sizeof(T));
  } else {
    // Set-up only; waits, because work on non-blocking streams does not order after cudaMemset.
    CUDA_CHECK(cudaMemset(data_, 0, count_ * sizeof(T)));
    CUDA_CHECK(cudaDeviceSynchronize());
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
