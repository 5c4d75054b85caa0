// The CUDA backend's BatchSource: the dataset's bytes are uploaded once; each epoch's order is
// sorted on the device and each batch gathered and normalised there, so training moves no data
// between host and device.
#include <numeric>
#include <vector>

#include "core/buffer.h"
#include "core/device_ops.h"
#include "core/cuda_context.h"
#include "kernels/data_kernels.h"
#include "train/batch_source.h"

namespace dptrain {

namespace {

class CudaBatchSource final : public BatchSource {
 public:
  CudaBatchSource(const Dataset& data, const DataConfig& config, bool shuffle, DeviceContext& ctx, bool augment)
      : n_(static_cast<uint32_t>(data.count)), rows_(data.rows), cols_(data.cols), pixels_(data.rows * data.cols),
        mean_(static_cast<float>(config.mean)), std_(static_cast<float>(config.std)), shuffle_(shuffle),
        augment_(augment_settings(config, augment)),
        stream_(ctx.cuda().stream()), images_(Device::Cuda, data.images.size()), labels_(Device::Cuda, data.labels.size()),
        order_(Device::Cuda, n_) {
    upload(ctx, images_.span(), std::span<const uint8_t>(data.images));
    upload(ctx, labels_.span(), std::span<const int32_t>(data.labels));
    std::vector<uint32_t> identity(n_);
    std::iota(identity.begin(), identity.end(), 0u);
    upload(ctx, order_.span(), std::span<const uint32_t>(identity));
    if (shuffle_) {
      keys_ = Buffer<uint64_t>(Device::Cuda, n_);
      keys_sorted_ = Buffer<uint64_t>(Device::Cuda, n_);
      indices_ = Buffer<uint32_t>(Device::Cuda, n_);
      scratch_ = Buffer<uint8_t>(Device::Cuda, kernels::epoch_order_scratch_bytes(n_));
    }
  }
  int64_t size() const override { return n_; }
  void begin_epoch(uint64_t seed, uint32_t epoch) override {
    seed_ = seed, epoch_ = epoch;  // augmentation's key for gather()
    if (!shuffle_) return;
    kernels::sort_epoch_order(seed, epoch, n_, keys_.data(), keys_sorted_.data(), indices_.data(), order_.data(),
                              scratch_.data(), scratch_.size(), stream_);
  }
  void gather(DeviceContext& ctx, int64_t first, int count, float* x, int32_t* y) override {
    (void)ctx;
    if (augment::enabled(augment_))
      kernels::gather_augment_normalize(images_.data(), labels_.data(), order_.data(), rows_, cols_, first, seed_,
                                        epoch_, nullptr, count, mean_, std_, augment_, x, y, stream_);
    else
      kernels::gather_normalize(images_.data(), labels_.data(), order_.data(), pixels_, first, nullptr, count, mean_,
                                std_, x, y, stream_);
  }
  void gather_step(DeviceContext& ctx, int count, float* x, int32_t* y) override {
    // Position, seed and epoch come from the StepState when the kernel runs: capturable, and one
    // captured graph serves every step.
    if (augment::enabled(augment_))
      kernels::gather_augment_normalize(images_.data(), labels_.data(), order_.data(), rows_, cols_, 0, 0, 0,
                                        ctx.step(), count, mean_, std_, augment_, x, y, stream_);
    else
      kernels::gather_normalize(images_.data(), labels_.data(), order_.data(), pixels_, 0, ctx.step(), count, mean_,
                                std_, x, y, stream_);
  }
  std::optional<StepGather> step_gather(DeviceContext& ctx, float* x, int32_t* y) const override {
    if (augment::enabled(augment_)) return std::nullopt;
    return StepGather{images_.data(), labels_.data(), order_.data(), ctx.step(), pixels_, mean_, std_, x, y};
  }

 private:
  uint32_t n_;
  int rows_, cols_, pixels_;
  float mean_, std_;
  bool shuffle_;
  augment::Settings augment_;
  uint64_t seed_ = 0;
  uint32_t epoch_ = 0;
  cudaStream_t stream_;
  Buffer<uint8_t> images_;
  Buffer<int32_t> labels_;
  Buffer<uint32_t> order_;
  Buffer<uint64_t> keys_, keys_sorted_;
  Buffer<uint32_t> indices_;
  Buffer<uint8_t> scratch_;
};

}  // namespace

std::unique_ptr<BatchSource> make_cuda_batch_source(const Dataset& data, const DataConfig& config, bool shuffle,
                                                    DeviceContext& ctx, bool augment) {
  return std::make_unique<CudaBatchSource>(data, config, shuffle, ctx, augment);
}

}  // namespace dptrain
