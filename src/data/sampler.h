// The order in which an epoch visits the samples, and which part of each global batch a rank
// takes. The order is a pure function of (seed, epoch): dataset index i gets the 64-bit key
// philox::shuffle_key(seed, epoch, i) and the epoch visits indices by ascending (key, index). The
// GPU backend computes the same order with a stable radix sort of (key, index) pairs. Every rank
// computes the whole order and takes a contiguous slice of each global batch, so N ranks together
// process exactly the global batches one rank would.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/augment.h"
#include "data/dataset.h"

namespace dptrain {

std::vector<uint32_t> epoch_permutation(uint64_t seed, uint32_t epoch, uint32_t n);

class BatchPlan {
 public:
  /// An epoch of n samples in global batches of global_batch, split over `ranks`. InputError if
  /// the batch is not positive or does not divide over the ranks. `align` > 1 (batchnorm's ghost
  /// groups): a short tail batch splits at multiples of `align` (so each rank's part starts on a
  /// group boundary; the caller makes sure full batches' shards are multiples of it).
  BatchPlan(int64_t n, int global_batch, int ranks, int align = 1);

  /// ceil(n / global_batch): the last batch may be short, as PyTorch's DataLoader (drop_last=False).
  int64_t steps_per_epoch() const { return (n_ + batch_ - 1) / batch_; }
  int64_t global_batch_size(int64_t step) const;

  /// Epoch positions [first, first + count) of global batch `step` that `rank` processes. Full
  /// batches split evenly; a short tail splits as evenly as possible, lower ranks taking the extra
  /// (in units of `align` samples, the last unit possibly short; a rank may then get none).
  struct Shard {
    int64_t first = 0;
    int count = 0;
  };
  Shard shard(int64_t step, int rank) const;

 private:
  int64_t n_;
  int batch_;
  int ranks_;
  int align_ = 1;
};

/// Samples at epoch positions [first, first + count) of `order`, normalised as
/// (pixel * (1/255) - mean) / std in float, into out (count x rows x cols) and labels_out.
template <typename T>
void gather_normalize(const Dataset& data, std::span<const uint32_t> order, int64_t first, int count, float mean,
                      float std, T* out, int32_t* labels_out);

/// The same with data.augment's random transform applied to each sample before normalisation
/// (core/augment.h): the sample at epoch position p is transformed as global sample p of (seed,
/// epoch), whatever rank or batch gathers it.
void gather_augment_normalize(const Dataset& data, std::span<const uint32_t> order, int64_t first, int count,
                              float mean, float std, const augment::Settings& settings, uint64_t seed, uint32_t epoch,
                              float* out, int32_t* labels_out);

}  // namespace dptrain
