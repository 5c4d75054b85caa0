#include "data/sampler.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "core/error.h"
#include "core/philox.h"

namespace dptrain {

std::vector<uint32_t> epoch_permutation(uint64_t seed, uint32_t epoch, uint32_t n) {
  std::vector<std::pair<uint64_t, uint32_t>> keyed(n);
  for (uint32_t i = 0; i < n; ++i) keyed[i] = {philox::shuffle_key(seed, epoch, i), i};
  std::sort(keyed.begin(), keyed.end());  // by (key, index): the stable order of a radix sort by key
  std::vector<uint32_t> order(n);
  for (uint32_t i = 0; i < n; ++i) order[i] = keyed[i].second;
  return order;
}

BatchPlan::BatchPlan(int64_t n, int global_batch, int ranks, int align)
    : n_(n), batch_(global_batch), ranks_(ranks), align_(align) {
  if (align <= 0) throw std::logic_error("BatchPlan: align must be > 0");
  if (global_batch <= 0) throw InputError("train.batch_size", "must be > 0");
  if (ranks <= 0) throw std::logic_error("BatchPlan: ranks must be > 0");
  if (global_batch % ranks != 0)
    throw InputError("train.batch_size", "the global batch " + std::to_string(global_batch) + " does not divide over " +
                                             std::to_string(ranks) + " ranks");
  if (n <= 0) throw std::logic_error("BatchPlan: empty dataset");
}

int64_t BatchPlan::global_batch_size(int64_t step) const {
  return std::min<int64_t>(batch_, n_ - step * batch_);
}

BatchPlan::Shard BatchPlan::shard(int64_t step, int rank) const {
  const int64_t size = global_batch_size(step);
  if (align_ > 1 && size < batch_) {
    // The tail in units of align_ samples (the last one short), split as evenly as possible.
    const int64_t units = (size + align_ - 1) / align_;
    const int64_t base = units / ranks_, extra = units % ranks_;
    const int64_t first = rank * base + std::min<int64_t>(rank, extra);
    const int64_t last = first + base + (rank < extra ? 1 : 0);
    const int64_t begin = std::min(first * align_, size), end = std::min(last * align_, size);
    return {step * batch_ + begin, static_cast<int>(end - begin)};
  }
  const int64_t base = size / ranks_, extra = size % ranks_;
  const int64_t offset = rank * base + std::min<int64_t>(rank, extra);
  return {step * batch_ + offset, static_cast<int>(base + (rank < extra ? 1 : 0))};
}

template <typename T>
void gather_normalize(const Dataset& data, std::span<const uint32_t> order, int64_t first, int count, float mean,
                      float std, T* out, int32_t* labels_out) {
  const size_t pixels = static_cast<size_t>(data.rows) * data.cols;
  for (int i = 0; i < count; ++i) {
    const uint32_t index = order[static_cast<size_t>(first + i)];
    const uint8_t* src = data.images.data() + index * pixels;
    T* dst = out + static_cast<size_t>(i) * pixels;
    // Separate float operations (the build forbids FMA contraction), so the CUDA gather kernel
    // (__fmul_rn, __fsub_rn, __fdiv_rn) produces the same bits.
    for (size_t p = 0; p < pixels; ++p) {
      const float scaled = static_cast<float>(src[p]) * (1.0f / 255.0f);
      dst[p] = static_cast<T>((scaled - mean) / std);
    }
    labels_out[i] = data.labels[index];
  }
}

template void gather_normalize<float>(const Dataset&, std::span<const uint32_t>, int64_t, int, float, float, float*,
                                      int32_t*);
template void gather_normalize<double>(const Dataset&, std::span<const uint32_t>, int64_t, int, float, float, double*,
                                       int32_t*);

void gather_augment_normalize(const Dataset& data, std::span<const uint32_t> order, int64_t first, int count,
                              float mean, float std, const augment::Settings& settings, uint64_t seed, uint32_t epoch,
                              float* out, int32_t* labels_out) {
  const int rows = data.rows, cols = data.cols;
  const size_t pixels = static_cast<size_t>(rows) * cols;
  for (int i = 0; i < count; ++i) {
    const int64_t position = first + i;
    const uint32_t index = order[static_cast<size_t>(position)];
    const uint8_t* src = data.images.data() + index * pixels;
    float* dst = out + static_cast<size_t>(i) * pixels;
    const augment::Transform t =
        augment::sample_transform(settings, seed, epoch, static_cast<uint32_t>(position), rows, cols);
    // The operations of kernels/data_kernels.cu's augmenting gather, in the same order.
    for (int r = 0; r < rows; ++r)
      for (int c = 0; c < cols; ++c) {
        const float scaled = augment::augmented_pixel(t, src, rows, cols, r, c) * (1.0f / 255.0f);
        dst[static_cast<size_t>(r) * cols + c] = (scaled - mean) / std;
      }
    labels_out[i] = data.labels[index];
  }
}

}  // namespace dptrain
