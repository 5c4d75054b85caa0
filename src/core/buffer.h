// Buffer<T>: the one owner of tensor memory, on the host (64-byte aligned) or on the current CUDA
// device. Move-only; layers, optimizers and the model hold Buffers, never raw allocations.
#pragma once

#include <cstddef>
#include <span>

#include "core/device.h"

namespace dptrain {

template <typename T>
class Buffer {
 public:
  Buffer() = default;
  Buffer(Device device, size_t count);
  ~Buffer();
  Buffer(Buffer&& other) noexcept;
  Buffer& operator=(Buffer&& other) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  T* data() { return data_; }
  const T* data() const { return data_; }
  size_t size() const { return count_; }
  Device device() const { return device_; }
  std::span<T> span() { return {data_, count_}; }
  std::span<const T> span() const { return {data_, count_}; }

  /// Copies from/to host memory; synchronous (not for the training hot path).
  void copy_from_host(std::span<const T> src);
  void copy_to_host(std::span<T> dst) const;
  /// Sets every byte to zero and waits for it (set-up only; on streams use zero_async).
  void zero();

 private:
  void release() noexcept;
  T* data_ = nullptr;
  size_t count_ = 0;
  Device device_ = Device::Cpu;
};

}  // namespace dptrain
