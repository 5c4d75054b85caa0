// The CPU backend's BatchSource: the permutation and gather run on the host (data/sampler.h).
#include <numeric>
#include <vector>

#include "data/sampler.h"
#include "train/batch_source.h"

namespace dptrain {

std::unique_ptr<BatchSource> make_cuda_batch_source(const Dataset& data, const DataConfig& config, bool shuffle,
                                                    DeviceContext& ctx);

namespace {

class HostBatchSource final : public BatchSource {
 public:
  HostBatchSource(const Dataset& data, const DataConfig& config, bool shuffle)
      : data_(data), mean_(static_cast<float>(config.mean)), std_(static_cast<float>(config.std)), shuffle_(shuffle) {
    order_.resize(static_cast<size_t>(data.count));
    std::iota(order_.begin(), order_.end(), 0u);
  }
  int64_t size() const override { return data_.count; }
  void begin_epoch(uint64_t seed, uint32_t epoch) override {
    if (shuffle_) order_ = epoch_permutation(seed, epoch, static_cast<uint32_t>(data_.count));
  }
  void gather(DeviceContext&, int64_t first, int count, float* x, int32_t* y) override {
    gather_normalize(data_, order_, first, count, mean_, std_, x, y);
  }
  void gather_step(DeviceContext& ctx, int count, float* x, int32_t* y) override {
    gather(ctx, ctx.step()->info.first_sample, count, x, y);
  }

 private:
  const Dataset& data_;
  float mean_, std_;
  bool shuffle_;
  std::vector<uint32_t> order_;
};

}  // namespace

std::unique_ptr<BatchSource> make_batch_source(const Dataset& data, const DataConfig& config, bool shuffle,
                                               DeviceContext& ctx) {
  if (ctx.on_cuda()) return make_cuda_batch_source(data, config, shuffle, ctx);
  return std::make_unique<HostBatchSource>(data, config, shuffle);
}

}  // namespace dptrain
