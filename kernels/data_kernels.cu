// Compiled with --fmad=false (CMakeLists.txt): the normalisation must match the CPU bit for bit.
#include <cub/device/device_radix_sort.cuh>

#include <climits>
#include <string>

#include "core/philox.h"
#include "core/cuda_check.h"
#include "kernels/data_kernels.h"
#include "kernels/grid_stride.cuh"
#include "kernels/normalized_pixel.cuh"

namespace dptrain::kernels {

namespace {

__global__ void shuffle_keys_kernel(uint64_t seed, uint32_t epoch, uint32_t n, uint64_t* keys, uint32_t* indices) {
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    keys[i] = philox::shuffle_key(seed, epoch, i);
    indices[i] = i;
  }
}

__global__ void gather_kernel(const uint8_t* images, const int32_t* labels, const uint32_t* order, int pixels,
                              long first, const StepState* step, int count, float mean, float std, float* x,
                              int32_t* y) {
  const long start = step != nullptr ? static_cast<long>(step->info.first_sample) : first;
  const long total = static_cast<long>(count) * pixels;
  for (long i = blockIdx.x * long{blockDim.x} + threadIdx.x; i < total; i += long{gridDim.x} * blockDim.x) {
    const long sample = i / pixels, p = i % pixels;
    const uint32_t index = order[start + sample];
    x[i] = normalized_pixel(static_cast<float>(images[static_cast<long>(index) * pixels + p]), mean, std);
    if (p == 0) y[sample] = labels[index];
  }
}

constexpr int kAugmentGatherThreads = 256;

__global__ void __launch_bounds__(kAugmentGatherThreads)
    gather_augment_kernel(const uint8_t* images, const int32_t* labels, const uint32_t* order, int rows, int cols,
                          long first, uint64_t seed, uint32_t epoch, const StepState* step, int count, float mean,
                          float std, augment::Settings settings, float* x, int32_t* y) {
  // The sample's transform, drawn once by thread 0 (a few hundred double operations), is shared
  // by the block's threads. Raw storage: a __shared__ object may not have a constructor.
  __shared__ alignas(augment::Transform) unsigned char storage[sizeof(augment::Transform)];
  augment::Transform& t = *reinterpret_cast<augment::Transform*>(storage);
  const long start = step != nullptr ? static_cast<long>(step->info.first_sample) : first;
  const uint64_t key = step != nullptr ? step->info.seed : seed;
  const uint32_t ep = step != nullptr ? step->info.epoch : epoch;
  const int pixels = rows * cols;
  for (int sample = blockIdx.x; sample < count; sample += gridDim.x) {  // uniform per block: barriers are safe
    const long position = start + sample;
    const uint32_t index = order[position];
    if (threadIdx.x == 0) {
      t = augment::sample_transform(settings, key, ep, static_cast<uint32_t>(position), rows, cols);
      y[sample] = labels[index];
    }
    __syncthreads();
    const uint8_t* src = images + static_cast<long>(index) * pixels;
    float* dst = x + static_cast<long>(sample) * pixels;
    for (int p = threadIdx.x; p < pixels; p += blockDim.x) {
      const int r = p / cols, c = p - r * cols;
      // data/sampler.cpp's gather_augment_normalize, operation for operation (and --fmad=false).
      dst[p] = normalized_pixel(augment::augmented_pixel(t, src, rows, cols, r, c), mean, std);
    }
    __syncthreads();  // every thread is done with t before thread 0 draws the next sample's
  }
}

}  // namespace

namespace {

/// cub's radix sort counts items in an int; the key kernel's grid-stride index is a uint32_t.
void check_count(uint32_t n) {
  if (n > static_cast<uint32_t>(INT_MAX))
    throw CudaError("sort_epoch_order: " + std::to_string(n) + " samples exceed the sort's 32-bit item count");
}

}  // namespace

size_t epoch_order_scratch_bytes(uint32_t n) {
  check_count(n);
  size_t bytes = 0;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, static_cast<const uint64_t*>(nullptr),
                                             static_cast<uint64_t*>(nullptr), static_cast<const uint32_t*>(nullptr),
                                             static_cast<uint32_t*>(nullptr), static_cast<int>(n)));
  return bytes;
}

void sort_epoch_order(uint64_t seed, uint32_t epoch, uint32_t n, uint64_t* keys, uint64_t* keys_sorted,
                      uint32_t* indices, uint32_t* order, void* scratch, size_t scratch_bytes, cudaStream_t stream) {
  check_count(n);
  if (n == 0) return;
  shuffle_keys_kernel<<<(n + 255) / 256, 256, 0, stream>>>(seed, epoch, n, keys, indices);
  CUDA_CHECK_LAUNCH();
  // LSD radix sort is stable: equal keys keep index order, exactly the host's (key, index) order.
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(scratch, scratch_bytes, keys, keys_sorted, indices, order,
                                             static_cast<int>(n), 0, 64, stream));
}

void gather_normalize(const uint8_t* images, const int32_t* labels, const uint32_t* order, int pixels, long first,
                      const StepState* step, int count, float mean, float std, float* x, int32_t* y,
                      cudaStream_t stream) {
  const long total = static_cast<long>(count) * pixels;
  if (total <= 0) return;
  gather_kernel<<<grid_stride_blocks(static_cast<size_t>(total), 256, 65535 * 4), 256, 0, stream>>>(
      images, labels, order, pixels, first, step, count, mean, std, x, y);
  CUDA_CHECK_LAUNCH();
}

void gather_augment_normalize(const uint8_t* images, const int32_t* labels, const uint32_t* order, int rows, int cols,
                              long first, uint64_t seed, uint32_t epoch, const StepState* step, int count, float mean,
                              float std, const augment::Settings& settings, float* x, int32_t* y, cudaStream_t stream) {
  if (count <= 0 || rows <= 0 || cols <= 0) return;
  const int blocks = count < kAugmentGatherMaxBlocks ? count : kAugmentGatherMaxBlocks;
  gather_augment_kernel<<<blocks, kAugmentGatherThreads, 0, stream>>>(images, labels, order, rows, cols, first, seed,
                                                                      epoch, step, count, mean, std, settings, x, y);
  CUDA_CHECK_LAUNCH();
}

}  // namespace dptrain::kernels
