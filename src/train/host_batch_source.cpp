// The CPU backend's BatchSource: the permutation and gather run on the host (data/sampler.h).
#include <numeric>
#include <vector>

#include "data/sampler.h"
#include "train/batch_source.h"

namespace dptrain {

std::unique_ptr<BatchSource> make_cuda_batch_source(const Dataset& data, const DataConfig& config, bool shuffle,
                                                    DeviceContext& ctx, bool augment);

namespace {

class HostBatchSource final : public BatchSource {
 public:
  HostBatchSource(const Dataset& data, const DataConfig& config, bool shuffle, bool augment)
      : data_(data), mean_(static_cast<float>(config.mean)), std_(static_cast<float>(config.std)), shuffle_(shuffle),
        augment_(augment_settings(config, augment)) {
    order_.resize(static_cast<size_t>(data.count));
    std::iota(order_.begin(), order_.end(), 0u);
  }
  int64_t size() const override { return data_.count; }
  void begin_epoch(uint64_t seed, uint32_t epoch) override {
    seed_ = seed, epoch_ = epoch;  // augmentation's key for gather()
    if (shuffle_) order_ = epoch_permutation(seed, epoch, static_cast<uint32_t>(data_.count));
  }
  void gather(DeviceContext&, int64_t first, int count, float* x, int32_t* y) override {
    gather_at(first, count, seed_, epoch_, x, y);
  }
  void gather_step(DeviceContext& ctx, int count, float* x, int32_t* y) override {
    const StepInfo& info = ctx.step()->info;
    gather_at(info.first_sample, count, info.seed, info.epoch, x, y);
  }
  std::optional<StepGather> step_gather(DeviceContext&, float*, int32_t*) const override { return std::nullopt; }

 private:
  void gather_at(int64_t first, int count, uint64_t seed, uint32_t epoch, float* x, int32_t* y) const {
    if (augment::enabled(augment_))
      gather_augment_normalize(data_, order_, first, count, mean_, std_, augment_, seed, epoch, x, y);
    else
      gather_normalize(data_, order_, first, count, mean_, std_, x, y);
  }

  const Dataset& data_;
  float mean_, std_;
  bool shuffle_;
  augment::Settings augment_;
  uint64_t seed_ = 0;
  uint32_t epoch_ = 0;
  std::vector<uint32_t> order_;
};

}  // namespace

augment::Settings augment_settings(const DataConfig& config, bool augment) {
  if (!augment) return {};
  const AugmentConfig& a = config.augment;
  return {static_cast<float>(a.rotation), static_cast<float>(a.scale),   static_cast<float>(a.translation),
          static_cast<float>(a.shear),    static_cast<float>(a.erasing), static_cast<float>(a.fill)};
}

std::unique_ptr<BatchSource> make_batch_source(const Dataset& data, const DataConfig& config, bool shuffle,
                                               DeviceContext& ctx, bool augment) {
  if (ctx.on_cuda()) return make_cuda_batch_source(data, config, shuffle, ctx, augment);
  return std::make_unique<HostBatchSource>(data, config, shuffle, augment);
}

}  // namespace dptrain
