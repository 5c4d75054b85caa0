// Dataset: a labelled image set in memory, exactly as the IDX files hold it (uint8 pixels of any
// one size, one label 0..255 per image; check_labels and check_image_size compare them with the
// model's config). Normalisation happens when a batch is gathered, so the raw bytes are what
// travels to the GPU (47 MB for MNIST's training set).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace dptrain {

struct Dataset {
  std::string source;         ///< the image file it came from, for messages
  std::string labels_source;  ///< the label file
  int64_t count = 0;
  int rows = 28, cols = 28;   ///< the IDX header's image size
  std::vector<uint8_t> images;  ///< count * rows * cols, sample-major, row-major
  std::vector<int32_t> labels;  ///< count, each in 0..255 (IDX bytes)
};

/// Reads and cross-checks an image file and its label file (raw or gzip). InputError on any fault.
Dataset load_idx_pair(const std::string& images_path, const std::string& labels_path);

/// InputError naming the label file and the first index whose label is not below num_classes (a
/// model with fewer class scores than the data has labels would read past its logits).
void check_labels(const Dataset& d, int num_classes);

/// InputError naming the image file when its images are not model.input's size (one channel,
/// input.h x input.w).
void check_image_size(const Dataset& d, const Dims& input);

/// The largest image side the reader accepts (a sanity bound; the IDX header is not trusted).
constexpr uint32_t kMaxImageSide = 4096;

struct MnistData {
  Dataset train, test;
};

/// The four files of MNIST's layout in `dir` (train-images-idx3-ubyte, train-labels-idx1-ubyte,
/// t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte), each raw or with ".gz".
MnistData load_mnist_dir(const std::string& dir);
/// Only the test pair (for `dptrain eval`).
Dataset load_mnist_test(const std::string& dir);

}  // namespace dptrain
