// IDX and PGM readers on good files and on each kind of malformed file, the MNIST folder loader,
// and the epoch order and rank shards the sampler gives.
#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <set>

#include "core/error.h"
#include "data/dataset.h"
#include "data/idx_reader.h"
#include "data/pgm.h"
#include "data/sampler.h"

namespace dptrain {
namespace {

namespace fs = std::filesystem;

class DataFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("dptrain_data_" + std::to_string(getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  static std::vector<uint8_t> idx(uint8_t type, std::vector<uint32_t> dims, size_t data_bytes, uint8_t fill = 1) {
    std::vector<uint8_t> b{0, 0, type, static_cast<uint8_t>(dims.size())};
    for (uint32_t d : dims) b.insert(b.end(), {uint8_t(d >> 24), uint8_t(d >> 16), uint8_t(d >> 8), uint8_t(d)});
    b.insert(b.end(), data_bytes, fill);
    return b;
  }
  std::string write(const std::string& name, const std::vector<uint8_t>& bytes, bool gzip = false) {
    const std::string path = (dir_ / name).string();
    if (gzip) {
      gzFile f = gzopen(path.c_str(), "wb");
      gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
      gzclose(f);
    } else {
      std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    }
    return path;
  }
  std::string error(const std::string& images, const std::string& labels) {
    try {
      load_idx_pair(images, labels);
    } catch (const InputError& e) {
      return e.what();
    }
    return "no error";
  }
  fs::path dir_;
};

TEST_F(DataFiles, ReadsRawAndGzipPairs) {
  for (bool gz : {false, true}) {
    const std::string im = write(gz ? "a.gz" : "a", idx(8, {3, 28, 28}, 3 * 784, 7), gz);
    std::vector<uint8_t> lab = idx(8, {3}, 0);
    lab.insert(lab.end(), {0, 9, 4});
    const std::string lb = write(gz ? "b.gz" : "b", lab, gz);
    const Dataset d = load_idx_pair(im, lb);
    EXPECT_EQ(d.count, 3);
    EXPECT_EQ(d.images.size(), 3u * 784);
    EXPECT_EQ(d.images[5], 7);
    EXPECT_EQ(d.labels, (std::vector<int32_t>{0, 9, 4}));
  }
}

TEST_F(DataFiles, LabelsMustBeBelowTheModelsClassCount) {
  const std::string im = write("c", idx(8, {3, 28, 28}, 3 * 784, 7));
  std::vector<uint8_t> lab = idx(8, {3}, 0);
  lab.insert(lab.end(), {0, 9, 4});
  const std::string lb = write("d", lab);
  const Dataset d = load_idx_pair(im, lb);
  EXPECT_NO_THROW(check_labels(d, 10));
  try {
    check_labels(d, 5);
    FAIL() << "a label of 9 passed with 5 classes";
  } catch (const InputError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(lb), std::string::npos) << what;
    EXPECT_NE(what.find("label 9 at index 1"), std::string::npos) << what;
    EXPECT_NE(what.find("model.num_classes (5)"), std::string::npos) << what;
  }
}

// Labels up to 255 load (EMNIST Balanced has 47 classes, Kuzushiji-49 49); check_labels, run on
// the training and the test set by train, eval and bench, holds them to model.num_classes.
TEST_F(DataFiles, LabelsAboveNineLoadAndAreCheckedAgainstTheClassCount) {
  const std::string im = write("e", idx(8, {4, 28, 28}, 4 * 784, 7));
  std::vector<uint8_t> lab = idx(8, {4}, 0);
  lab.insert(lab.end(), {0, 46, 12, 255});
  const std::string lb = write("f", lab);
  const Dataset d = load_idx_pair(im, lb);
  EXPECT_EQ(d.labels, (std::vector<int32_t>{0, 46, 12, 255}));
  EXPECT_NO_THROW(check_labels(d, 256));
  try {
    check_labels(d, 47);
    FAIL() << "a label of 255 passed with 47 classes";
  } catch (const InputError& e) {
    const std::string what = e.what();
    EXPECT_EQ(what.rfind(lb + ": ", 0), 0u) << "names the label file first: " << what;
    EXPECT_NE(what.find("label 255 at index 3 is not below model.num_classes (47)"), std::string::npos) << what;
  }
}

// Any image size loads; check_image_size compares it with model.input and names the image file.
TEST_F(DataFiles, ImageSizeIsCheckedAgainstModelInputNamingTheFile) {
  const std::string im = write("g", idx(8, {2, 20, 32}, 2 * 640, 3));
  std::vector<uint8_t> lab = idx(8, {2}, 0);
  lab.insert(lab.end(), {1, 0});
  const Dataset d = load_idx_pair(im, write("h", lab));
  EXPECT_EQ(d.rows, 20);
  EXPECT_EQ(d.cols, 32);
  EXPECT_EQ(d.images.size(), 2u * 640);
  EXPECT_NO_THROW(check_image_size(d, Dims{1, 20, 32}));
  for (const Dims& wrong : {Dims{1, 28, 28}, Dims{1, 32, 20}, Dims{3, 20, 32}}) {
    try {
      check_image_size(d, wrong);
      FAIL() << to_string(wrong) << " accepted for 20x32 images";
    } catch (const InputError& e) {
      const std::string what = e.what();
      EXPECT_EQ(what.rfind(im + ": ", 0), 0u) << what;
      EXPECT_NE(what.find("images are 1x20x32 (channels x height x width) but model.input is " + to_string(wrong)),
                std::string::npos)
          << what;
    }
  }
}

TEST_F(DataFiles, EveryMalformedCaseIsNamed) {
  std::vector<uint8_t> labels3 = idx(8, {3}, 0);
  labels3.insert(labels3.end(), {1, 2, 3});
  const std::string good_labels = write("labels", labels3);
  const std::string good_images = write("images", idx(8, {3, 28, 28}, 3 * 784));
  struct Case {
    std::string file;
    std::vector<uint8_t> bytes;
    bool is_images;
    std::string phrase;
  };
  std::vector<uint8_t> bad_magic = idx(8, {3, 28, 28}, 3 * 784);
  bad_magic[0] = 0x1a;
  std::vector<uint8_t> huge = idx(8, {0xffffffffu, 28, 28}, 10);
  std::vector<uint8_t> trailing = idx(8, {3, 28, 28}, 3 * 784 + 5);
  const std::vector<Case> cases = {
      {"bad_magic", bad_magic, true, "bad magic number"},
      {"bad_type", idx(0x0d, {3, 28, 28}, 3 * 784 * 4), true, "data type 0x0d is not unsigned byte"},
      {"bad_ndims", idx(8, {3, 784}, 3 * 784), true, "has 2 dimensions, expected 3"},
      {"truncated", idx(8, {3, 28, 28}, 3 * 784 - 10), true, "truncated: header promises 2352 data bytes, file has 2342"},
      {"trailing", trailing, true, "trailing bytes"},
      {"short_header", {0, 0, 8, 3, 0, 0}, true, "truncated header"},
      {"empty", {}, true, "file is empty"},
      {"huge", huge, true, "header promises more than 4 GiB"},
      {"zero_side", idx(8, {3, 0, 28}, 0), true, "images are 0x28, expected each side in 1..4096"},
      {"count_mismatch", idx(8, {4}, 4), false, "has 4 labels but"},
      {"labels_as_images", labels3, true, "has 1 dimensions, expected 3"},
  };
  for (const Case& c : cases) {
    const std::string path = write(c.file, c.bytes);
    const std::string msg = c.is_images ? error(path, good_labels) : error(good_images, path);
    EXPECT_NE(msg.find(path + ": "), std::string::npos) << c.file << ": " << msg;
    EXPECT_NE(msg.find(c.phrase), std::string::npos) << c.file << ": " << msg;
  }
  // A gzip file cut short, and one with garbage after the 1f 8b magic.
  std::ifstream in(write("full.gz", idx(8, {3, 28, 28}, 3 * 784), true), std::ios::binary);
  std::vector<uint8_t> gz((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  gz.resize(gz.size() / 2);
  EXPECT_NE(error(write("cut.gz", gz), good_labels).find("gzip data is truncated"), std::string::npos);
  EXPECT_NE(error(write("junk.gz", {0x1f, 0x8b, 1, 2, 3, 4, 5, 6, 7, 8, 9}), good_labels).find("gzip data is corrupt"),
            std::string::npos);
  EXPECT_NE(error((dir_ / "missing").string(), good_labels).find("cannot open"), std::string::npos);
  // A gzip bomb: a header of 3 images and 64 MiB of zeros behind it (64 KiB packed). Refused once
  // the stream passes the 2,368 bytes the header announces, not after inflating all of it.
  const std::string bomb = write("bomb.gz", idx(8, {3, 28, 28}, size_t{64} << 20, 0), true);
  EXPECT_LT(fs::file_size(bomb), size_t{1} << 20);
  EXPECT_NE(error(bomb, good_labels).find(bomb + ": decompresses to more than the 2368 bytes its IDX header announces"),
            std::string::npos)
      << error(bomb, good_labels);
}

TEST_F(DataFiles, MnistFolderNamesWhatIsMissing) {
  try {
    load_mnist_dir(dir_.string());
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("train-images-idx3-ubyte: not found"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("launch/get_mnist.sh"), std::string::npos) << e.what();
  }
}

TEST(Mnist, RealFilesLoad) {
  if (!fs::exists(fs::path(DPTRAIN_TEST_DATA_DIR) / "t10k-labels-idx1-ubyte.gz") &&
      !fs::exists(fs::path(DPTRAIN_TEST_DATA_DIR) / "t10k-labels-idx1-ubyte"))
    GTEST_SKIP() << "MNIST not in " << DPTRAIN_TEST_DATA_DIR;
  const MnistData m = load_mnist_dir(DPTRAIN_TEST_DATA_DIR);
  EXPECT_EQ(m.train.count, 60000);
  EXPECT_EQ(m.test.count, 10000);
  EXPECT_EQ(m.train.labels[0], 5);
  EXPECT_EQ(m.test.labels[0], 7);
  std::vector<int> histogram(10);
  for (int32_t l : m.train.labels) ++histogram[static_cast<size_t>(l)];
  EXPECT_EQ(histogram[1], 6742);  // MNIST's most frequent training digit
}

TEST_F(DataFiles, PgmReadsBinaryAndAscii) {
  std::vector<uint8_t> pixels(784);
  for (size_t i = 0; i < 784; ++i) pixels[i] = static_cast<uint8_t>(i % 256);
  write_pgm((dir_ / "a.pgm").string(), pixels.data(), 28, 28);
  EXPECT_EQ(read_pgm((dir_ / "a.pgm").string()), pixels);
  std::ofstream ascii(dir_ / "b.pgm");
  ascii << "P2\n# a comment\n28 28\n15\n";
  for (int i = 0; i < 784; ++i) ascii << (i % 16) << (i % 28 == 27 ? "\n" : " ");
  ascii.close();
  const std::vector<uint8_t> b = read_pgm((dir_ / "b.pgm").string());
  EXPECT_EQ(b[0], 0);
  EXPECT_EQ(b[15], 255);  // maxval 15 scales to 255
  auto error = [&](const std::string& text) {
    std::ofstream(dir_ / "c.pgm", std::ios::binary) << text;
    try {
      read_pgm((dir_ / "c.pgm").string());
    } catch (const InputError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(error("P6\n28 28\n255\n").find("not a PGM"), std::string::npos);
  EXPECT_NE(error("P5\n32 32\n255\n").find("image is 32x32, expected 28x28 (the model's input)"), std::string::npos);
  EXPECT_NE(error("P5\n28 28\n255\nabc").find("truncated"), std::string::npos);
  EXPECT_NE(error("P5\n28 x\n255\n").find("cannot read the height"), std::string::npos);
  EXPECT_NE(error("P2\n28 28\n255\n1 2 300").find("outside 0..255"), std::string::npos);
  // Another model input size: width x height as the header writes them, rows x cols as the call.
  std::vector<uint8_t> wide(20 * 32, 9);
  write_pgm((dir_ / "w.pgm").string(), wide.data(), 20, 32);
  EXPECT_EQ(read_pgm((dir_ / "w.pgm").string(), 20, 32), wide);
  try {
    read_pgm((dir_ / "w.pgm").string());
    FAIL() << "a 32x20 image read as 28x28";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("image is 32x20, expected 28x28"), std::string::npos) << e.what();
  }
}

TEST(Sampler, PermutationIsDeterministicAndSeeded) {
  const std::vector<uint32_t> a = epoch_permutation(1, 0, 60000);
  std::vector<uint32_t> sorted = a;
  std::sort(sorted.begin(), sorted.end());
  std::vector<uint32_t> iota(60000);
  std::iota(iota.begin(), iota.end(), 0u);
  EXPECT_EQ(sorted, iota);
  EXPECT_EQ(a, epoch_permutation(1, 0, 60000));
  EXPECT_NE(a, epoch_permutation(1, 1, 60000));
  EXPECT_NE(a, epoch_permutation(2, 0, 60000));
  EXPECT_NE(a, iota);
}

TEST(Sampler, ShardsAreDisjointCoverAndMatchOneRank) {
  for (int64_t n : {60000, 1001, 7}) {
    for (int ranks : {1, 2, 3, 4}) {
      const int batch = 12;
      const BatchPlan plan(n, batch, ranks), one(n, batch, 1);
      std::vector<int> seen(static_cast<size_t>(n), 0);
      for (int64_t s = 0; s < plan.steps_per_epoch(); ++s) {
        int64_t next = one.shard(s, 0).first;
        for (int r = 0; r < ranks; ++r) {
          const BatchPlan::Shard sh = plan.shard(s, r);
          EXPECT_EQ(sh.first, next) << "rank shards of a global batch are contiguous, in rank order";
          for (int i = 0; i < sh.count; ++i) ++seen[static_cast<size_t>(sh.first + i)];
          next += sh.count;
        }
        EXPECT_EQ(next, one.shard(s, 0).first + one.shard(s, 0).count) << "N ranks cover the one-rank batch";
      }
      EXPECT_TRUE(std::all_of(seen.begin(), seen.end(), [](int c) { return c == 1; })) << n << " " << ranks;
    }
  }
  EXPECT_EQ(BatchPlan(60000, 64, 1).steps_per_epoch(), 938);
  EXPECT_EQ(BatchPlan(60000, 64, 1).global_batch_size(937), 32);
  EXPECT_THROW(BatchPlan(100, 10, 3), InputError);
}

TEST(Sampler, GatherNormalizes) {
  Dataset d;
  d.count = 2;
  d.images.assign(2 * 784, 0);
  d.images[784] = 255;
  d.labels = {4, 6};
  const std::vector<uint32_t> order{1, 0};
  std::vector<float> x(2 * 784);
  std::vector<int32_t> y(2);
  gather_normalize(d, order, 0, 2, 0.5f, 0.25f, x.data(), y.data());
  EXPECT_EQ(y, (std::vector<int32_t>{6, 4}));
  EXPECT_FLOAT_EQ(x[0], 2.0f);    // (1 - 0.5) / 0.25
  EXPECT_FLOAT_EQ(x[1], -2.0f);   // (0 - 0.5) / 0.25
  EXPECT_FLOAT_EQ(x[784], -2.0f);
}

}  // namespace
}  // namespace dptrain
