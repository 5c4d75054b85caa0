// data.augment on the GPU (kernels/data_kernels.cu's augmenting gather) against the CPU gather
// (data/sampler.cpp): the same images within 1e-6 (the shared core/augment.h makes them the same
// bits; the mismatch count is reported) for several settings, image sizes either side of the
// kernel's 256 threads per sample and batch sizes either side of its 4096-block grid, through
// gather and through gather_step (the StepState's position, seed and epoch); and training with
// augmentation in a captured CUDA graph equals eager execution bit for bit and the CPU within
// rounding. Skipped without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "gpu_test_support.h"
#include "comm/communicator.h"
#include "core/buffer.h"
#include "core/device_ops.h"
#include "data/dataset.h"
#include "io/config.h"
#include "kernels/data_kernels.h"
#include "train/batch_source.h"
#include "train/runtime.h"
#include "train/trainer.h"

namespace dptrain {
namespace {

using gpu_test::have_mnist;
using gpu_test::kData;
using gpu_test::params_after_steps;
using gpu_test::randoms;
using gpu_test::rel;
using gpu_test::shipped_config;

class AugmentGpu : public gpu_test::GpuTest {};

Dataset synthetic(int count, int rows, int cols) {
  Dataset d;
  d.source = "synthetic-images";
  d.labels_source = "synthetic-labels";
  d.count = count;
  d.rows = rows;
  d.cols = cols;
  d.images.resize(static_cast<size_t>(count) * rows * cols);
  for (size_t i = 0; i < d.images.size(); ++i) d.images[i] = static_cast<uint8_t>((i * 37 + i / 97) % 256);
  for (int i = 0; i < count; ++i) d.labels.push_back(i % 7);
  return d;
}

struct Setting {
  const char* name;
  AugmentConfig a;
};

std::vector<Setting> settings() {
  std::vector<Setting> s;
  AugmentConfig a;
  a.rotation = 15, a.scale = 0.15, a.translation = 2.8;  // cdeotte's MNIST recipe
  s.push_back({"rotation+scale+translation", a});
  a = AugmentConfig{};
  a.rotation = 180, a.shear = 30, a.fill = 40;
  s.push_back({"rotation 180 + shear 30, fill 40", a});
  a = AugmentConfig{};
  a.erasing = 1, a.fill = 255;
  s.push_back({"erasing 1", a});
  a = AugmentConfig{};
  a.rotation = 10, a.scale = 0.3, a.translation = 1.5, a.shear = 10, a.erasing = 0.5, a.fill = 7.5;
  s.push_back({"everything", a});
  return s;
}

/// A CPU and a GPU source over one dataset with one setting, at epoch 3 of seed 11.
struct Sources {
  Sources(DeviceContext& cpu, DeviceContext& gpu, const Dataset& data, const AugmentConfig& a) {
    DataConfig config;
    config.augment = a;
    host = make_batch_source(data, config, true, cpu, /*augment=*/true);
    device = make_batch_source(data, config, true, gpu, /*augment=*/true);
    host->begin_epoch(11, 3);
    device->begin_epoch(11, 3);
  }
  std::unique_ptr<BatchSource> host, device;
};

/// Expects the CPU and GPU batches at epoch positions [first, first + count) to agree.
void expect_same_batch(DeviceContext& cpu, DeviceContext& gpu, Sources& src, size_t pixels, int64_t first, int count,
                       bool step, const std::string& where) {
  std::vector<float> xc(static_cast<size_t>(count) * pixels), xh(xc.size());
  std::vector<int32_t> yc(static_cast<size_t>(count)), yh(yc.size());
  Buffer<float> xg(Device::Cuda, xc.size());
  Buffer<int32_t> yg(Device::Cuda, yc.size());
  src.host->gather(cpu, first, count, xc.data(), yc.data());
  if (step) {
    gpu.set_step(StepState{{11, 3, static_cast<uint32_t>(first)}, {}});
    src.device->gather_step(gpu, count, xg.data(), yg.data());
  } else {
    src.device->gather(gpu, first, count, xg.data(), yg.data());
  }
  download(gpu, std::span<const float>(xg.span()), std::span<float>(xh));
  download(gpu, std::span<const int32_t>(yg.span()), std::span<int32_t>(yh));
  double worst = 0;
  size_t differ = 0;
  for (size_t i = 0; i < xc.size(); ++i) {
    worst = std::max(worst, std::fabs(double(xc[i]) - xh[i]));
    differ += xc[i] != xh[i];
  }
  EXPECT_LE(worst, 1e-6) << where << ": " << differ << " of " << xc.size() << " values differ";
  if (differ != 0) std::printf("%s: %zu values differ in their last bits (max %.3g)\n", where.c_str(), differ, worst);
  EXPECT_EQ(yh, yc) << where;
}

TEST_F(AugmentGpu, BatchesMatchCpuAcrossSettingsImageSizesAndTheGrid) {
  // 9x11: fewer pixels than threads; 16x16: exactly 256; 28x28 and 17x17: more, not a multiple.
  struct Shape {
    int rows, cols;
  };
  for (const Shape& shape : {Shape{9, 11}, Shape{16, 16}, Shape{17, 17}, Shape{28, 28}}) {
    const Dataset data = synthetic(4200, shape.rows, shape.cols);
    for (const Setting& s : settings()) {
      Sources src(cpu_, *gpu_, data, s.a);
      const int last = static_cast<int>(data.count);
      struct Batch {
        int64_t first;
        int count;
      };
      // one sample; a batch of 64 mid-epoch; either side of the 4096-block grid; the epoch's tail
      for (const Batch& b : {Batch{0, 1}, Batch{100, 64}, Batch{0, kernels::kAugmentGatherMaxBlocks - 1},
                             Batch{0, kernels::kAugmentGatherMaxBlocks}, Batch{3, kernels::kAugmentGatherMaxBlocks + 1},
                             Batch{last - 97, 97}})
        for (bool step : {false, true})
          expect_same_batch(cpu_, *gpu_, src, static_cast<size_t>(shape.rows) * shape.cols, b.first, b.count, step,
                            std::string(s.name) + ", " + std::to_string(shape.rows) + "x" + std::to_string(shape.cols) +
                                ", " + std::to_string(b.count) + " from " + std::to_string(b.first) +
                                (step ? " (gather_step)" : " (gather)"));
    }
  }
}

TEST_F(AugmentGpu, MnistBatchesMatchCpu) {
  if (!have_mnist()) GTEST_SKIP() << "MNIST not in " << kData;
  const MnistData data = load_mnist_dir(kData);
  for (const Setting& s : settings()) {
    Sources src(cpu_, *gpu_, data.train, s.a);
    for (int64_t first : {int64_t{0}, int64_t{59000}})
      expect_same_batch(cpu_, *gpu_, src, 784, first, 1000, true, std::string(s.name) + ", MNIST");
  }
}

std::vector<float> train_params(DeviceContext& ctx, const MnistData& data, int steps, bool graph,
                                std::vector<std::string> sets) {
  return params_after_steps(ctx, data, shipped_config("mnist_cnn", graph, std::move(sets)), steps);
}

// The augmenting gather runs inside the captured step graph, reading the step's position, seed
// and epoch from the StepState: replaying it equals eager execution bit for bit (algorithms by
// heuristics, as for every bitwise comparison), augmentation changes the result (it ran), and
// with SGD the GPU stays within rounding of the CPU backend.
TEST_F(AugmentGpu, GraphCapturedStepWithAugmentationEqualsEagerAndCpu) {
  if (!have_mnist()) GTEST_SKIP() << "MNIST not in " << kData;
  const MnistData data = load_mnist_dir(kData);
  const std::vector<std::string> augment{"data.augment={rotation: 15, scale: 0.15, translation: 2.8, erasing: 0.5}",
                                         "train.cudnn_benchmark=false"};
  TrainConfig heuristics;
  heuristics.cudnn_benchmark = false;
  DeviceContext a = make_device_context(Device::Cuda, heuristics), b = make_device_context(Device::Cuda, heuristics),
                c = make_device_context(Device::Cuda, heuristics);
  const std::vector<float> graph = train_params(a, data, 30, true, augment);
  EXPECT_EQ(graph, train_params(b, data, 30, false, augment));
  EXPECT_NE(graph, train_params(c, data, 30, true, {"train.cudnn_benchmark=false"})) << "augmentation had no effect";

  std::vector<std::string> sgd = augment;
  sgd.push_back("train.optimizer={type: sgd, lr: 0.01, momentum: 0.5}");
  sgd.push_back("train.schedule={type: constant}");
  DeviceContext d = make_device_context(Device::Cuda, heuristics);
  EXPECT_LT(rel(train_params(d, data, 20, true, sgd), train_params(cpu_, data, 20, false, sgd)), 1e-4);
}

}  // namespace
}  // namespace dptrain
