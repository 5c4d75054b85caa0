// The dataset checks as a user meets them, through the dptrain binary on small synthetic IDX
// folders: a dataset of 16x16 images with 12 classes trains (with data.augment on) when the config
// says so, and `predict` prints its data.classes names; images of another size than model.input,
// a test set of another size than the training set, and a label not below model.num_classes are
// each refused with exit status 2 and one line naming the file (and the index of the label).
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "data/pgm.h"
#include "command_runner.h"
#include "tiny_dataset.h"

namespace dptrain {
namespace {

namespace fs = std::filesystem;

using Result = test_support::CommandResult;
using test_support::write_pair;

Result run(const std::string& args) { return test_support::run_dptrain(args); }

class DatasetChecks : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("dptrain_datachecks_" + std::to_string(getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "data");
    std::ofstream(dir_ / "tiny.yaml") << R"(name: tiny
model:
  input: [1, 16, 16]
  num_classes: 12
  layers:
    - {type: flatten}
    - {type: linear, out_features: 12}
data:
  augment: {rotation: 10, translation: 1, erasing: 0.5}
  classes: [north, south, east, west, up, down, left, right, in, out, near, far]
train:
  batch_size: 16
  epochs: 1
  optimizer: {type: sgd, lr: 0.1}
  schedule: {type: constant}
)";
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string train(const std::string& config) const {
    return "train --device cpu --threads 1 --no-progress --config " + config + " --data " + (dir_ / "data").string() +
           " --out " + (dir_ / "run").string();
  }
  fs::path dir_;
};

TEST_F(DatasetChecks, SixteenPixelTwelveClassDataTrainsAndPredictNamesTheClasses) {
  write_pair(dir_ / "data", "train", 96, 16, 12);
  write_pair(dir_ / "data", "t10k", 24, 16, 12);
  const Result r = run(train((dir_ / "tiny.yaml").string()));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("96 training, 24 test images"), std::string::npos) << r.output;
  std::vector<uint8_t> pixels(16 * 16, 0);
  const fs::path pgm = dir_ / "x.pgm";
  write_pgm(pgm.string(), pixels.data(), 16, 16);
  const Result p = run("predict --checkpoint " + (dir_ / "run" / "final.safetensors").string() + " " + pgm.string());
  ASSERT_EQ(p.status, 0) << p.output;
  EXPECT_NE(p.output.find("x.pgm: class "), std::string::npos) << p.output;
  EXPECT_NE(p.output.find(" probabilities: north:"), std::string::npos) << p.output;
  EXPECT_NE(p.output.find(" far:"), std::string::npos) << p.output;
  // a 28x28 image for a 16x16 model
  std::vector<uint8_t> big(28 * 28, 0);
  write_pgm((dir_ / "big.pgm").string(), big.data(), 28, 28);
  const Result wrong = run("predict --checkpoint " + (dir_ / "run" / "final.safetensors").string() + " " +
                           (dir_ / "big.pgm").string());
  EXPECT_EQ(wrong.status, 2) << wrong.output;
  EXPECT_NE(wrong.output.find((dir_ / "big.pgm").string() + ": image is 28x28, expected 16x16"), std::string::npos)
      << wrong.output;
}

TEST_F(DatasetChecks, ImagesOfAnotherSizeThanModelInputNameTheFile) {
  write_pair(dir_ / "data", "train", 32, 16, 10);
  write_pair(dir_ / "data", "t10k", 8, 16, 10);
  const Result r = run(train(std::string(DPTRAIN_SOURCE_DIR) + "/configs/mnist_cnn.yaml"));
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("dptrain: error: " + (dir_ / "data" / "train-images-idx3-ubyte").string() +
                          ": images are 1x16x16 (channels x height x width) but model.input is 1x28x28"),
            std::string::npos)
      << r.output;
  // a test set of another size than the training set (and the model)
  write_pair(dir_ / "data", "t10k", 8, 20, 10);
  const Result t = run(train((dir_ / "tiny.yaml").string()) + " --set model.num_classes=10 --set model.layers.1.out_features=10 --set data.classes=null");
  EXPECT_EQ(t.status, 2) << t.output;
  EXPECT_NE(t.output.find((dir_ / "data" / "t10k-images-idx3-ubyte").string() + ": images are 1x20x20"), std::string::npos)
      << t.output;
}

TEST_F(DatasetChecks, ALabelNotBelowNumClassesNamesTheFileAndIndex) {
  write_pair(dir_ / "data", "train", 96, 16, 12);
  write_pair(dir_ / "data", "t10k", 24, 16, 12, /*bad_label_at=*/17);
  const Result r = run(train((dir_ / "tiny.yaml").string()));
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("dptrain: error: " + (dir_ / "data" / "t10k-labels-idx1-ubyte").string() +
                          ": label 12 at index 17 is not below model.num_classes (12)"),
            std::string::npos)
      << r.output;
  // data.classes of another length than model.num_classes
  const Result c = run(train((dir_ / "tiny.yaml").string()) + " --set 'data.classes=[a, b]'");
  EXPECT_EQ(c.status, 2) << c.output;
  EXPECT_NE(c.output.find("'data.classes': has 2 names but model.num_classes is 12"), std::string::npos) << c.output;
}

}  // namespace
}  // namespace dptrain
