// Training curves (io/curves.h, `dptrain plot`): metrics.jsonl read back (partial and superseded
// epochs, malformed lines named by file and line), and the PNG drawn from it: it exists, decodes
// (libpng), has the size asked for, is the same for the same metrics and changes when they change.
// Without PLplot in the build the drawing tests skip and `dptrain plot` must fail with one line.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#if DPTRAIN_HAVE_PNG
#include <png.h>
#endif

#include "core/error.h"
#include "io/curves.h"
#include "command_runner.h"

namespace dptrain {
namespace {

namespace fs = std::filesystem;

using Result = test_support::CommandResult;
using test_support::run_dptrain;

fs::path temp_dir(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("dptrain_curves_" + name + "_" + std::to_string(getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

/// A metrics line as the trainer writes it (the fields the curves read, and the partial-epoch ones).
std::string metrics_line(int epoch, double train_loss, double test_loss, double accuracy, double rate,
                         int64_t samples = 60000) {
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "{\"epoch\":%d,\"step\":%d,\"train_loss\":%.6g,\"train_accuracy\":0.9,\"test_loss\":%.6g,"
                "\"test_accuracy\":%.6g,\"images_per_second\":%.6g,\"seconds\":1.5,\"lr\":1.0,\"ranks\":1,"
                "\"partial_epoch\":%s,\"samples\":%lld,\"epoch_size\":60000,\"timed_samples\":%lld,"
                "\"partial_timing\":false}\n",
                epoch, epoch * 938, train_loss, test_loss, accuracy, rate, samples < 60000 ? "true" : "false",
                static_cast<long long>(samples), static_cast<long long>(samples));
  return buf;
}

/// A run folder whose metrics follow a typical curve; `shift` moves every value.
fs::path write_run(const fs::path& dir, int epochs, double shift) {
  fs::create_directories(dir);
  std::ofstream out(dir / "metrics.jsonl");
  for (int e = 1; e <= epochs; ++e)
    out << metrics_line(e, 0.3 / e + shift, 0.05 / e + shift, 0.98 + 0.001 * e - shift, 280000 + 1000 * e - 1e5 * shift);
  return dir;
}

TEST(Curves, ReadsMetricsAndReplacesAPartialEpochThatWasFinishedLater) {
  const fs::path d = temp_dir("read");
  {
    std::ofstream out(d / "metrics.jsonl");
    out << metrics_line(1, 0.4, 0.1, 0.97, 1000, 19200)  // stopped partway, then resumed
        << metrics_line(1, 0.3, 0.08, 0.98, 1100) << "\n"  // (a blank line is ignored)
        << metrics_line(2, 0.2, 0.05, 0.985, 1200) << metrics_line(3, 0.15, 0.04, 0.988, 1200, 30000);
  }
  const RunCurves run = read_run_curves((d / "").string());
  EXPECT_EQ(run.label, d.filename().string());
  ASSERT_EQ(run.points.size(), 3u);
  EXPECT_EQ(run.points[0].epoch, 1);
  EXPECT_DOUBLE_EQ(run.points[0].train_loss, 0.3);
  EXPECT_DOUBLE_EQ(run.points[0].x, 1.0);
  EXPECT_DOUBLE_EQ(run.points[2].x, 2.5);  // half of epoch 3
  EXPECT_DOUBLE_EQ(run.points[2].test_accuracy, 0.988);
  // The file itself names the same run.
  EXPECT_EQ(read_run_curves((d / "metrics.jsonl").string()).points.size(), 3u);
}

TEST(Curves, BadMetricsAreNamedByFileAndLine) {
  const fs::path d = temp_dir("bad");
  try {
    read_run_curves((d / "nope").string());
    ADD_FAILURE() << "a missing folder was read";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("nope"), std::string::npos) << e.what();
  }
  fs::create_directories(d / "empty_folder");
  try {
    read_run_curves((d / "empty_folder").string());
    ADD_FAILURE() << "a folder without metrics.jsonl was read";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("empty_folder/metrics.jsonl"), std::string::npos) << e.what();
  }
  std::ofstream(d / "metrics.jsonl") << metrics_line(1, 0.3, 0.1, 0.97, 1000) << "{\"epoch\": 2, \"train_loss\": \n";
  try {
    read_run_curves(d.string());
    ADD_FAILURE() << "a malformed line was read";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("metrics.jsonl:2: not a JSON object"), std::string::npos) << e.what();
  }
  std::ofstream(d / "metrics.jsonl") << "{\"epoch\": 1, \"train_loss\": 0.1, \"test_loss\": 0.1, \"test_accuracy\": 0.9}\n";
  try {
    read_run_curves(d.string());
    ADD_FAILURE() << "a line without images_per_second was read";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("metrics.jsonl:1: 'images_per_second' is missing or not a number"),
              std::string::npos)
        << e.what();
  }
}

struct Image {
  int width = 0, height = 0;
  std::vector<uint8_t> rgba;
};

/// Decodes a PNG with libpng into 8-bit RGBA; an empty image if it does not decode.
Image decode_png(const fs::path& path) {
  Image img;
#if DPTRAIN_HAVE_PNG
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_file(&image, path.c_str())) return img;
  image.format = PNG_FORMAT_RGBA;
  std::vector<uint8_t> pixels(PNG_IMAGE_SIZE(image));
  if (!png_image_finish_read(&image, nullptr, pixels.data(), 0, nullptr)) {
    png_image_free(&image);
    return img;
  }
  img.width = static_cast<int>(image.width), img.height = static_cast<int>(image.height);
  img.rgba = std::move(pixels);
#else
  (void)path;
#endif
  return img;
}

size_t differing_pixels(const Image& a, const Image& b) {
  size_t n = 0;
  for (size_t i = 0; i + 3 < std::min(a.rgba.size(), b.rgba.size()); i += 4)
    n += a.rgba[i] != b.rgba[i] || a.rgba[i + 1] != b.rgba[i + 1] || a.rgba[i + 2] != b.rgba[i + 2];
  return n;
}

TEST(Curves, PlotOfTwoRunsDecodesAtItsSizeAndFollowsTheMetrics) {
  if (const auto why = plot_unavailable_reason()) GTEST_SKIP() << "no plotting here: " << *why;
#if !DPTRAIN_HAVE_PNG
  GTEST_SKIP() << "built without libpng (libpng-dev): cannot decode the PNG";
#endif
  const fs::path d = temp_dir("draw");
  const fs::path a = write_run(d / "run_a", 4, 0.0), b = write_run(d / "run_b", 3, 0.002);
  const Result r = run_dptrain("plot " + a.string() + " " + b.string() + " --out " + (d / "two.png").string());
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("two.png: 2 run(s), 7 epoch line(s)"), std::string::npos) << r.output;
  const Image first = decode_png(d / "two.png");
  ASSERT_EQ(first.width, 1200);
  ASSERT_EQ(first.height, 800);
  for (const auto& entry : fs::directory_iterator(d))
    EXPECT_EQ(entry.path().string().find(".tmp"), std::string::npos) << "left behind: " << entry.path();

  // The same metrics draw the same image; other metrics another one.
  draw_curves({read_run_curves(a.string()), read_run_curves(b.string())}, (d / "again.png").string());
  EXPECT_EQ(differing_pixels(first, decode_png(d / "again.png")), 0u);
  write_run(b, 3, 0.004);
  draw_curves({read_run_curves(a.string()), read_run_curves(b.string())}, (d / "changed.png").string());
  const Image changed = decode_png(d / "changed.png");
  ASSERT_EQ(changed.width, 1200);
  EXPECT_GT(differing_pixels(first, changed), 100u);

  // Another size; one run (into its folder by default).
  draw_curves({read_run_curves(a.string())}, (d / "small.png").string(), 600, 400);
  const Image small = decode_png(d / "small.png");
  EXPECT_EQ(small.width, 600);
  EXPECT_EQ(small.height, 400);
  const Result one = run_dptrain("plot " + a.string());
  ASSERT_EQ(one.status, 0) << one.output;
  EXPECT_EQ(decode_png(a / "curves.png").width, 1200);
}

TEST(Curves, PlotCommandRefusesBadInputWithOneLine) {
  const fs::path d = temp_dir("cmd");
  if (const auto why = plot_unavailable_reason()) {
    const Result r = run_dptrain("plot " + d.string());
    EXPECT_EQ(r.status, 1) << r.output;
    EXPECT_EQ(r.output, "dptrain: error: cannot plot: " + *why + "\n");
    return;
  }
  Result r = run_dptrain("plot " + (d / "missing").string());
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("missing"), std::string::npos) << r.output;
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
  const fs::path run = write_run(d / "run", 2, 0.0);
  std::ofstream(run / "metrics.jsonl", std::ios::app) << "not json\n";
  r = run_dptrain("plot " + run.string() + " --out " + (d / "x.png").string());
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("metrics.jsonl:3: not a JSON object"), std::string::npos) << r.output;
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
  EXPECT_FALSE(fs::exists(d / "x.png"));
  r = run_dptrain("plot " + write_run(d / "ok", 2, 0.0).string() + " --out " + (d / "no_dir" / "x.png").string());
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("no_dir/x.png: cannot write here"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace dptrain
