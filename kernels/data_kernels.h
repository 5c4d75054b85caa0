// The data pipeline on the device: the epoch's order (a stable radix sort of Philox keys, the
// same order data/sampler.cpp computes on the host) and the batch gather with normalisation.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

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

}  // namespace dptrain::kernels
