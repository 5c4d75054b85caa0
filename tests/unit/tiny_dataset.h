// Small synthetic IDX datasets for tests that run the dptrain binary: `count` images of side x side
// pixels whose bright 3x3 square's place depends on the label, so a linear model learns them.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace dptrain::test_support {

inline void write_idx(const std::filesystem::path& path, std::vector<uint32_t> dims, const std::vector<uint8_t>& data) {
  std::vector<uint8_t> b{0, 0, 8, static_cast<uint8_t>(dims.size())};
  for (uint32_t d : dims) b.insert(b.end(), {uint8_t(d >> 24), uint8_t(d >> 16), uint8_t(d >> 8), uint8_t(d)});
  b.insert(b.end(), data.begin(), data.end());
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

/// `count` images of side x side pixels (a bright square whose place depends on the label) and
/// their labels, as the pair `prefix`-images/labels in dir.
inline void write_pair(const std::filesystem::path& dir, const std::string& prefix, int count, int side, int classes, int bad_label_at = -1) {
  std::vector<uint8_t> images(static_cast<size_t>(count) * side * side, 0), labels(static_cast<size_t>(count));
  for (int i = 0; i < count; ++i) {
    const int label = i % classes;
    labels[static_cast<size_t>(i)] = static_cast<uint8_t>(i == bad_label_at ? classes : label);
    for (int r = 0; r < 3; ++r)
      for (int c = 0; c < 3; ++c)
        images[static_cast<size_t>(i) * side * side + static_cast<size_t>(label % 4 * 3 + r) * side + (label / 4 * 3 + c)] = 255;
  }
  write_idx(dir / (prefix + "-images-idx3-ubyte"), {static_cast<uint32_t>(count), static_cast<uint32_t>(side), static_cast<uint32_t>(side)}, images);
  write_idx(dir / (prefix + "-labels-idx1-ubyte"), {static_cast<uint32_t>(count)}, labels);
}

/// A run a test can train in a second: `train`/`test` images of 16x16 pixels (10 classes) in
/// dir/data, and dir/tiny.yaml, a linear classifier trained by SGD at batch 16 for `epochs`.
inline void write_tiny_run(const std::filesystem::path& dir, int train, int test, int epochs) {
  std::filesystem::create_directories(dir / "data");
  write_pair(dir / "data", "train", train, 16, 10);
  write_pair(dir / "data", "t10k", test, 16, 10);
  std::ofstream(dir / "tiny.yaml") << R"(name: tiny
model:
  input: [1, 16, 16]
  num_classes: 10
  layers:
    - {type: flatten}
    - {type: linear, out_features: 10}
train:
  batch_size: 16
  epochs: )" << epochs << R"(
  optimizer: {type: sgd, lr: 0.1}
  schedule: {type: constant}
)";
}

}  // namespace dptrain::test_support
