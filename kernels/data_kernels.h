// The data pipeline on the device: the epoch's order (a stable radix sort of Philox keys, the
// same order data/sampler.cpp computes on the host) and the batch gather with normalisation, and
// with data.augment's random transforms for training batches (core/augment.h).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "core/augment.h"
#include "core/step_state.h"

namespace dptrain::kernels {

/// Scratch bytes sort_epoch_order needs for n samples.
size_t epoch_order_scratch_bytes(uint32_t n);
/// order[i] = the dataset index visited i-th in `epoch`: indices sorted stably by
/// philox::shuffle_key(seed, epoch, index). keys/keys_sorted/indices hold n entries; scratch as above.
void sort_epoch_order(uint64_t seed, uint32_t epoch, uint32_t n, uint64_t* keys, uint64_t* keys_sorted,
                      uint32_t* indices, uint32_t* order, void* scratch, size_t scratch_bytes, cudaStream_t stream);

/// x[i] = (pixel * (1/255) - mean) / std and y[i] = label for epoch positions [first, first + count)
/// of `order`, where first = first_sample of `step` if step is not null, else `first`.
void gather_normalize(const uint8_t* images, const int32_t* labels, const uint32_t* order, int pixels,
                      long first, const StepState* step, int count, float mean, float std, float* x, int32_t* y,
                      cudaStream_t stream);

/// The same with data.augment's transforms (core/augment.h) of raw rows x cols images before the
/// normalisation: one block per sample (its transform drawn once, by one thread), one thread per
/// output pixel. The sample at epoch position p is keyed by (seed, epoch, p), taken from `step`
/// (when the kernel runs: capturable) if it is not null, else from the arguments.
void gather_augment_normalize(const uint8_t* images, const int32_t* labels, const uint32_t* order, int rows, int cols,
                              long first, uint64_t seed, uint32_t epoch, const StepState* step, int count, float mean,
                              float std, const augment::Settings& settings, float* x, int32_t* y, cudaStream_t stream);

/// Blocks (of 256 threads) the augmenting gather launches at most; more samples loop.
constexpr int kAugmentGatherMaxBlocks = 4096;

}  // namespace dptrain::kernels
