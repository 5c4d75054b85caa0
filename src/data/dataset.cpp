#include "data/dataset.h"

#include <filesystem>

#include "core/error.h"
#include "data/idx_reader.h"

namespace dptrain {

Dataset load_idx_pair(const std::string& images_path, const std::string& labels_path) {
  IdxArray images = read_idx_u8(images_path, 3);
  const IdxArray labels = read_idx_u8(labels_path, 1);
  Dataset d;
  d.source = images_path;
  d.labels_source = labels_path;
  d.count = images.dims[0];
  d.rows = static_cast<int>(images.dims[1]);
  d.cols = static_cast<int>(images.dims[2]);
  // Any size: check_image_size compares it with the model's input once a config is known.
  if (d.rows == 0 || d.cols == 0 || images.dims[1] > kMaxImageSide || images.dims[2] > kMaxImageSide)
    throw InputError(images_path, "images are " + std::to_string(images.dims[1]) + "x" + std::to_string(images.dims[2]) +
                                      ", expected each side in 1.." + std::to_string(kMaxImageSide));
  if (d.count == 0) throw InputError(images_path, "holds no images");
  if (labels.dims[0] != images.dims[0])
    throw InputError(labels_path, "has " + std::to_string(labels.dims[0]) + " labels but " + images_path + " has " +
                                      std::to_string(images.dims[0]) + " images");
  // Labels are checked against model.num_classes by check_labels, once a config is known.
  d.labels.assign(labels.data.begin(), labels.data.end());
  d.images = std::move(images.data);
  return d;
}

void check_labels(const Dataset& d, int num_classes) {
  for (size_t i = 0; i < d.labels.size(); ++i)
    if (d.labels[i] < 0 || d.labels[i] >= num_classes)
      throw InputError(d.labels_source, "label " + std::to_string(d.labels[i]) + " at index " + std::to_string(i) +
                                            " is not below model.num_classes (" + std::to_string(num_classes) + ")");
}

void check_image_size(const Dataset& d, const Dims& input) {
  if (input.c != 1 || input.h != d.rows || input.w != d.cols)
    throw InputError(d.source, "images are 1x" + std::to_string(d.rows) + "x" + std::to_string(d.cols) +
                                   " (channels x height x width) but model.input is " + to_string(input));
}

namespace {

std::string find_file(const std::string& dir, const std::string& name) {
  const std::filesystem::path base = std::filesystem::path(dir) / name;
  for (const std::string& candidate : {base.string(), base.string() + ".gz"}) {
    std::error_code error;  // a symlink loop or an unreadable folder: not found here, said below
    if (std::filesystem::is_regular_file(candidate, error)) return candidate;
  }
  throw InputError(base.string(), "not found (nor " + name + ".gz); fetch MNIST with launch/get_mnist.sh " + dir);
}

Dataset load_pair(const std::string& dir, const std::string& prefix) {
  const std::string images = find_file(dir, prefix + "-images-idx3-ubyte");  // images first: named first when missing
  const std::string labels = find_file(dir, prefix + "-labels-idx1-ubyte");
  return load_idx_pair(images, labels);
}

}  // namespace

Dataset load_mnist_test(const std::string& dir) { return load_pair(dir, "t10k"); }

MnistData load_mnist_dir(const std::string& dir) {
  MnistData m;
  m.train = load_pair(dir, "train");
  m.test = load_mnist_test(dir);
  return m;
}

}  // namespace dptrain
