// data.augment (core/augment.h, the CPU gather): each parameter's effect on a synthetic image whose
// result is known (rotation by 90 and 180 degrees, whole-pixel and half-pixel translation, zoom,
// shear, the fill outside, erasing); the draws' ranges and torchvision's erasing rules; that a
// sample's image depends only on (seed, epoch, global sample index), so batch splits, the shards
// of 2 ranks and a fresh source (a resume) see the same images; evaluation sources never augment;
// and the config's keys, defaults and errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/augment.h"
#include "core/device_context.h"
#include "core/error.h"
#include "data/dataset.h"
#include "data/sampler.h"
#include "io/config.h"
#include "train/batch_source.h"

namespace dptrain {
namespace {

using augment::Draw;
using augment::Settings;
using augment::Transform;

/// rows x cols pixels, each a distinct small value (exact under the weights 0.5 and 0.25).
std::vector<uint8_t> ramp(int rows, int cols) {
  std::vector<uint8_t> img(static_cast<size_t>(rows) * cols);
  for (size_t i = 0; i < img.size(); ++i) img[i] = static_cast<uint8_t>(4 * i + 8);
  return img;
}

/// The whole image under t, raw values.
std::vector<float> apply(const Transform& t, const std::vector<uint8_t>& img, int rows, int cols) {
  std::vector<float> out(img.size());
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) out[static_cast<size_t>(r) * cols + c] = augment::augmented_pixel(t, img.data(), rows, cols, r, c);
  return out;
}

float at(const std::vector<uint8_t>& img, int cols, int r, int c) { return static_cast<float>(img[static_cast<size_t>(r) * cols + c]); }

TEST(AugmentMath, SineCosineAndExpSeriesAreAccurate) {
  for (int i = -180; i <= 180; ++i) {
    const double x = i * (augment::kPi / 180.0);
    double s, c;
    augment::sin_cos(x, &s, &c);
    EXPECT_NEAR(s, std::sin(x), 1e-15) << i << " degrees";
    EXPECT_NEAR(c, std::cos(x), 1e-15) << i << " degrees";
  }
  for (double x = augment::kLogRatioLow; x <= augment::kLogRatioHigh; x += 0.01)
    EXPECT_NEAR(augment::exp_series(x), std::exp(x), 4e-15 * std::exp(x)) << x;
}

TEST(AugmentMath, IdentityDrawKeepsEveryPixelExactly) {
  const int rows = 5, cols = 7;
  const std::vector<uint8_t> img = ramp(rows, cols);
  for (bool affine : {false, true}) {
    const std::vector<float> out = apply(augment::make_transform(Draw{}, rows, cols, 99.0f, affine), img, rows, cols);
    for (size_t i = 0; i < img.size(); ++i) ASSERT_EQ(out[i], static_cast<float>(img[i])) << "pixel " << i << " affine " << affine;
  }
}

// Clockwise as displayed: the top-left pixel goes to the top right; out(r, c) = in(n-1-c, r).
TEST(AugmentMath, Rotation90IsExactOnASquareImage) {
  const int n = 6;
  const std::vector<uint8_t> img = ramp(n, n);
  Draw d;
  d.angle = 90.0f;
  const std::vector<float> out = apply(augment::make_transform(d, n, n, 0.0f, true), img, n, n);
  for (int r = 0; r < n; ++r)
    for (int c = 0; c < n; ++c) ASSERT_EQ(out[r * n + c], at(img, n, n - 1 - c, r)) << r << "," << c;
  d.angle = -90.0f;  // and back: out(r, c) = in(c, n-1-r)
  const std::vector<float> back = apply(augment::make_transform(d, n, n, 0.0f, true), img, n, n);
  for (int r = 0; r < n; ++r)
    for (int c = 0; c < n; ++c) ASSERT_EQ(back[r * n + c], at(img, n, c, n - 1 - r)) << r << "," << c;
}

TEST(AugmentMath, Rotation180IsExactOnARectangle) {
  const int rows = 4, cols = 7;
  const std::vector<uint8_t> img = ramp(rows, cols);
  Draw d;
  d.angle = 180.0f;
  const std::vector<float> out = apply(augment::make_transform(d, rows, cols, 0.0f, true), img, rows, cols);
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) ASSERT_EQ(out[r * cols + c], at(img, cols, rows - 1 - r, cols - 1 - c)) << r << "," << c;
}

TEST(AugmentMath, WholePixelTranslationShiftsExactlyAndFillsTheRest) {
  const int rows = 5, cols = 6;
  const std::vector<uint8_t> img = ramp(rows, cols);
  Draw d;
  d.tx = 2.0f;   // right
  d.ty = -1.0f;  // up
  const float fill = 77.0f;
  const std::vector<float> out = apply(augment::make_transform(d, rows, cols, fill, true), img, rows, cols);
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) {
      const int sr = r + 1, sc = c - 2;
      const float want = sr < rows && sc >= 0 ? at(img, cols, sr, sc) : fill;
      ASSERT_EQ(out[r * cols + c], want) << r << "," << c;
    }
}

// Half a pixel: each output pixel is the mean of two neighbours, the fill counting for a neighbour
// outside the image (the image padded with the fill value).
TEST(AugmentMath, HalfPixelTranslationInterpolatesWithTheFillAtTheBorder) {
  const int rows = 3, cols = 4;
  const std::vector<uint8_t> img = ramp(rows, cols);
  Draw d;
  d.tx = 0.5f;
  const float fill = 100.0f;
  const std::vector<float> out = apply(augment::make_transform(d, rows, cols, fill, true), img, rows, cols);
  for (int r = 0; r < rows; ++r) {
    EXPECT_EQ(out[r * cols], 0.5f * fill + 0.5f * at(img, cols, r, 0)) << r;
    for (int c = 1; c < cols; ++c) EXPECT_EQ(out[r * cols + c], 0.5f * (at(img, cols, r, c - 1) + at(img, cols, r, c))) << r << "," << c;
  }
}

// Zoom 2 about the centre of a 5x5 image: out(r, c) samples in(2 + (r-2)/2, 2 + (c-2)/2).
TEST(AugmentMath, ScaleTwoSamplesHalfwayTowardsTheCentre) {
  const int n = 5;
  const std::vector<uint8_t> img = ramp(n, n);
  Draw d;
  d.scale = 2.0f;
  const std::vector<float> out = apply(augment::make_transform(d, n, n, 0.0f, true), img, n, n);
  EXPECT_EQ(out[2 * n + 2], at(img, n, 2, 2));
  EXPECT_EQ(out[0], at(img, n, 1, 1));
  EXPECT_EQ(out[4 * n + 4], at(img, n, 3, 3));
  EXPECT_EQ(out[0 * n + 4], at(img, n, 1, 3));
  // (1, 1) samples (1.5, 1.5): the mean of four pixels.
  EXPECT_EQ(out[1 * n + 1], 0.25f * (at(img, n, 1, 1) + at(img, n, 1, 2) + at(img, n, 2, 1) + at(img, n, 2, 2)));
  // Zoom 0.5: the corners sample outside and take the fill.
  d.scale = 0.5f;
  const std::vector<float> small = apply(augment::make_transform(d, n, n, 42.0f, true), img, n, n);
  EXPECT_EQ(small[0], 42.0f);
  EXPECT_EQ(small[2 * n + 2], at(img, n, 2, 2));
  EXPECT_EQ(small[2 * n + 3], at(img, n, 2, 4));  // one pixel right of centre samples two pixels right
}

// Shear 45 degrees: x' = x + y about the centre, so row r shifts right by r - 2 (5x5).
TEST(AugmentMath, Shear45ShiftsEachRowByItsDistanceFromTheCentre) {
  const int n = 5;
  const std::vector<uint8_t> img = ramp(n, n);
  Draw d;
  d.shear = 45.0f;
  const float fill = 1.0f;
  const std::vector<float> out = apply(augment::make_transform(d, n, n, fill, true), img, n, n);
  for (int r = 0; r < n; ++r)
    for (int c = 0; c < n; ++c) {
      const int sc = c - (r - 2);
      ASSERT_EQ(out[r * n + c], sc >= 0 && sc < n ? at(img, n, r, sc) : fill) << r << "," << c;
    }
}

TEST(AugmentMath, PointsFarOutsideTakeTheFill) {
  const int n = 6;
  const std::vector<uint8_t> img(n * n, 255);
  Draw d;
  d.angle = 45.0f;  // the corners of the output come from outside the source
  const std::vector<float> out = apply(augment::make_transform(d, n, n, 200.0f, true), img, n, n);
  for (int corner : {0, n - 1, n * (n - 1), n * n - 1}) EXPECT_EQ(out[corner], 200.0f) << corner;
  EXPECT_EQ(out[2 * n + 2], 255.0f);
  d = Draw{};
  d.tx = 1e9f;  // no integer overflow: every pixel is fill
  for (float v : apply(augment::make_transform(d, n, n, 3.0f, true), img, n, n)) ASSERT_EQ(v, 3.0f);
}

TEST(AugmentMath, ErasingWithProbabilityOneFillsARectangleOfTorchvisionsSize) {
  const int rows = 28, cols = 28;
  const std::vector<uint8_t> img = ramp(rows, cols);
  Settings s;
  s.erasing = 1.0f;
  s.fill = 9.0f;
  int erased = 0;
  for (uint32_t sample = 0; sample < 500; ++sample) {
    const Draw d = augment::sample_draw(s, 7, 0, sample, rows, cols);
    if (!d.erase) continue;  // all ten attempts may miss (rare): torchvision then leaves the image
    ++erased;
    ASSERT_GT(d.erase_height, 0);
    ASSERT_GT(d.erase_width, 0);
    ASSERT_GE(d.erase_top, 0);
    ASSERT_GE(d.erase_left, 0);
    ASSERT_LE(d.erase_top + d.erase_height, rows);
    ASSERT_LE(d.erase_left + d.erase_width, cols);
    // area in [0.02, 0.33] of the image, aspect in [0.3, 3.3], before rounding each side
    const double h = d.erase_height, w = d.erase_width;
    EXPECT_GE((h + 0.5) * (w + 0.5), 0.02 * rows * cols) << sample;
    EXPECT_LE((h - 0.5) * (w - 0.5), 0.33 * rows * cols) << sample;
    EXPECT_GE((h + 0.5) / (w - 0.5), 0.3) << sample;
    EXPECT_LE((h - 0.5) / (w + 0.5), 3.3) << sample;
    const Transform t = augment::sample_transform(s, 7, 0, sample, rows, cols);
    EXPECT_FALSE(t.affine);
    const std::vector<float> out = apply(t, img, rows, cols);
    for (int r = 0; r < rows; ++r)
      for (int c = 0; c < cols; ++c) {
        const bool inside = r >= d.erase_top && r < d.erase_top + d.erase_height && c >= d.erase_left &&
                            c < d.erase_left + d.erase_width;
        ASSERT_EQ(out[r * cols + c], inside ? 9.0f : at(img, cols, r, c)) << sample << ": " << r << "," << c;
      }
  }
  EXPECT_GT(erased, 450) << "one attempt in ten fits at least 90% of the time on a square image";
  // Probability 0.5: about half the samples (a fixed outcome: the draws are deterministic).
  s.erasing = 0.5f;
  int half = 0;
  for (uint32_t sample = 0; sample < 2000; ++sample) half += augment::sample_draw(s, 7, 0, sample, rows, cols).erase;
  EXPECT_GT(half, 850);
  EXPECT_LT(half, 1150);
}

TEST(AugmentMath, DrawsSpanTheirRangesAndDependOnlyOnSeedEpochAndSample) {
  Settings s;
  s.rotation = 15.0f;
  s.scale = 0.15f;
  s.translation = 2.8f;
  s.shear = 10.0f;
  float lo_angle = 0, hi_angle = 0, lo_scale = 1, hi_scale = 1, hi_t = 0, hi_shear = 0;
  for (uint32_t sample = 0; sample < 4000; ++sample) {
    const Draw d = augment::sample_draw(s, 1, 3, sample, 28, 28);
    ASSERT_LE(std::fabs(d.angle), 15.0f);
    ASSERT_LE(std::fabs(d.scale - 1.0f), 0.15f + 1e-6f);
    ASSERT_LE(std::fabs(d.tx), 2.8f);
    ASSERT_LE(std::fabs(d.ty), 2.8f);
    ASSERT_LE(std::fabs(d.shear), 10.0f);
    ASSERT_FALSE(d.erase);
    lo_angle = std::min(lo_angle, d.angle), hi_angle = std::max(hi_angle, d.angle);
    lo_scale = std::min(lo_scale, d.scale), hi_scale = std::max(hi_scale, d.scale);
    hi_t = std::max({hi_t, std::fabs(d.tx), std::fabs(d.ty)});
    hi_shear = std::max(hi_shear, std::fabs(d.shear));
  }
  EXPECT_LT(lo_angle, -14.9f);
  EXPECT_GT(hi_angle, 14.9f);
  EXPECT_LT(lo_scale, 0.851f);
  EXPECT_GT(hi_scale, 1.149f);
  EXPECT_GT(hi_t, 2.79f);
  EXPECT_GT(hi_shear, 9.9f);
  const auto same = [](const Draw& a, const Draw& b) {
    return a.angle == b.angle && a.scale == b.scale && a.tx == b.tx && a.ty == b.ty && a.shear == b.shear;
  };
  const Draw base = augment::sample_draw(s, 1, 3, 17, 28, 28);
  EXPECT_TRUE(same(base, augment::sample_draw(s, 1, 3, 17, 28, 28)));
  EXPECT_FALSE(same(base, augment::sample_draw(s, 2, 3, 17, 28, 28))) << "seed";
  EXPECT_FALSE(same(base, augment::sample_draw(s, 1, 4, 17, 28, 28))) << "epoch";
  EXPECT_FALSE(same(base, augment::sample_draw(s, 1, 3, 18, 28, 28))) << "sample";
}

// --- the CPU batch source ---------------------------------------------------------------------

/// 37 images of 9x11 pixels, patterns that differ per image, labels 0..4.
Dataset synthetic(int count = 37, int rows = 9, int cols = 11) {
  Dataset d;
  d.source = "synthetic-images";
  d.labels_source = "synthetic-labels";
  d.count = count;
  d.rows = rows;
  d.cols = cols;
  d.images.resize(static_cast<size_t>(count) * rows * cols);
  for (size_t i = 0; i < d.images.size(); ++i) d.images[i] = static_cast<uint8_t>((i * 37 + i / 99) % 256);
  for (int i = 0; i < count; ++i) d.labels.push_back(i % 5);
  return d;
}

DataConfig augmenting() {
  DataConfig c;
  c.augment.rotation = 20;
  c.augment.scale = 0.2;
  c.augment.translation = 1.5;
  c.augment.shear = 8;
  c.augment.erasing = 0.5;
  c.augment.fill = 12;
  return c;
}

struct Batch {
  std::vector<float> x;
  std::vector<int32_t> y;
};

Batch gather(BatchSource& src, DeviceContext& ctx, int64_t first, int count, size_t pixels) {
  Batch b{std::vector<float>(static_cast<size_t>(count) * pixels), std::vector<int32_t>(static_cast<size_t>(count))};
  src.gather(ctx, first, count, b.x.data(), b.y.data());
  return b;
}

Batch gather_step(BatchSource& src, DeviceContext& ctx, uint64_t seed, uint32_t epoch, uint32_t first, int count,
                  size_t pixels) {
  Batch b{std::vector<float>(static_cast<size_t>(count) * pixels), std::vector<int32_t>(static_cast<size_t>(count))};
  ctx.set_step(StepState{{seed, epoch, first}, {}});
  src.gather_step(ctx, count, b.x.data(), b.y.data());
  return b;
}

TEST(AugmentGather, ASamplesImageDependsOnlyOnSeedEpochAndItsGlobalIndex) {
  const Dataset data = synthetic();
  const size_t pixels = 9 * 11;
  DeviceContext ctx;
  auto src = make_batch_source(data, augmenting(), /*shuffle=*/true, ctx, /*augment=*/true);
  src->begin_epoch(5, 2);
  const Batch whole = gather(*src, ctx, 0, 37, pixels);
  // In pieces, through gather and gather_step (the StepState's seed, epoch and position).
  Batch pieces;
  for (int first = 0; first < 37; first += 10) {
    const int count = std::min(10, 37 - first);
    const Batch b = first % 20 == 0 ? gather(*src, ctx, first, count, pixels)
                                    : gather_step(*src, ctx, 5, 2, static_cast<uint32_t>(first), count, pixels);
    pieces.x.insert(pieces.x.end(), b.x.begin(), b.x.end());
    pieces.y.insert(pieces.y.end(), b.y.begin(), b.y.end());
  }
  EXPECT_EQ(pieces.x, whole.x);
  EXPECT_EQ(pieces.y, whole.y);
  // A fresh source, as a resumed run builds, gives the same images.
  auto again = make_batch_source(data, augmenting(), true, ctx, true);
  again->begin_epoch(5, 2);
  EXPECT_EQ(gather(*again, ctx, 0, 37, pixels).x, whole.x);
  // Another epoch or seed gives other images; the labels follow the samples.
  again->begin_epoch(5, 3);
  EXPECT_NE(gather(*again, ctx, 0, 37, pixels).x, whole.x);
  again->begin_epoch(6, 2);
  EXPECT_NE(gather(*again, ctx, 0, 37, pixels).x, whole.x);
  const std::vector<uint32_t> order = epoch_permutation(5, 2, 37);
  for (int i = 0; i < 37; ++i) EXPECT_EQ(whole.y[i], data.labels[order[i]]);
}

// Each rank gathers its shard of every global batch (BatchPlan) from the StepState's position: the
// two shards together are the one-rank batch, image for image.
TEST(AugmentGather, TheShardsOfTwoRanksSeeTheImagesOfOneRank) {
  const Dataset data = synthetic();
  const size_t pixels = 9 * 11;
  const BatchPlan one(37, 12, 1), two(37, 12, 2);
  DeviceContext ctx0, ctx1, solo;
  auto r0 = make_batch_source(data, augmenting(), true, ctx0, true);
  auto r1 = make_batch_source(data, augmenting(), true, ctx1, true);
  auto single = make_batch_source(data, augmenting(), true, solo, true);
  for (uint32_t epoch : {0u, 1u}) {
    for (BatchSource* s : {r0.get(), r1.get(), single.get()}) s->begin_epoch(9, epoch);
    for (int64_t step = 0; step < one.steps_per_epoch(); ++step) {
      const BatchPlan::Shard all = one.shard(step, 0), a = two.shard(step, 0), b = two.shard(step, 1);
      const Batch want = gather_step(*single, solo, 9, epoch, static_cast<uint32_t>(all.first), all.count, pixels);
      Batch got = gather_step(*r0, ctx0, 9, epoch, static_cast<uint32_t>(a.first), a.count, pixels);
      const Batch second = gather_step(*r1, ctx1, 9, epoch, static_cast<uint32_t>(b.first), b.count, pixels);
      got.x.insert(got.x.end(), second.x.begin(), second.x.end());
      got.y.insert(got.y.end(), second.y.begin(), second.y.end());
      EXPECT_EQ(got.x, want.x) << "epoch " << epoch << " step " << step;
      EXPECT_EQ(got.y, want.y) << "epoch " << epoch << " step " << step;
    }
  }
}

TEST(AugmentGather, OffOrEvaluationIsThePlainGatherAndOnChangesTheImages) {
  const Dataset data = synthetic();
  const size_t pixels = 9 * 11;
  DeviceContext ctx;
  const std::vector<uint32_t> order = epoch_permutation(5, 1, 37);
  Batch plain{std::vector<float>(37 * pixels), std::vector<int32_t>(37)};
  gather_normalize(data, order, 0, 37, 0.1307f, 0.3081f, plain.x.data(), plain.y.data());
  // an evaluation source (augment false) with augmentation configured, and a training source
  // with every setting 0
  auto eval = make_batch_source(data, augmenting(), true, ctx, /*augment=*/false);
  auto off = make_batch_source(data, DataConfig{}, true, ctx, /*augment=*/true);
  auto on = make_batch_source(data, augmenting(), true, ctx, /*augment=*/true);
  for (BatchSource* s : {eval.get(), off.get(), on.get()}) s->begin_epoch(5, 1);
  EXPECT_EQ(gather(*eval, ctx, 0, 37, pixels).x, plain.x);
  EXPECT_EQ(gather(*off, ctx, 0, 37, pixels).x, plain.x);
  const Batch augmented = gather(*on, ctx, 0, 37, pixels);
  EXPECT_EQ(augmented.y, plain.y);
  size_t changed = 0;
  for (size_t i = 0; i < plain.x.size(); ++i) changed += augmented.x[i] != plain.x[i];
  EXPECT_GT(changed, plain.x.size() / 2) << "most pixels move under rotation, zoom, shift and shear";
  // The normalisation follows the transform: a fill-only image (shifted far away) is (fill/255 - mean) / std.
  DataConfig far;
  far.augment.translation = 1e6;
  far.augment.fill = 51;
  auto gone = make_batch_source(data, far, true, ctx, true);
  gone->begin_epoch(5, 1);
  const Batch filled = gather(*gone, ctx, 0, 37, pixels);
  size_t filled_pixels = 0;
  const float want = (51.0f * (1.0f / 255.0f) - 0.1307f) / 0.3081f;
  for (float v : filled.x) filled_pixels += v == want;
  EXPECT_GT(filled_pixels, filled.x.size() * 9 / 10) << "shifts up to 1e6 pixels leave almost only fill";
}

// --- config ---------------------------------------------------------------------------------

const char* kModel = R"(
model:
  layers:
    - {name: fc, type: linear, out_features: 10}
)";

std::string error_of(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  try {
    parse_config(yaml, "test.yaml", overrides);
  } catch (const InputError& e) {
    return e.what();
  }
  return "no error";
}

TEST(AugmentConfig, KeysDefaultsAndRoundTrip) {
  const Config off = parse_config(kModel, "test.yaml");
  EXPECT_FALSE(off.data.augment.enabled());
  EXPECT_TRUE(off.data.classes.empty());
  const Config c = parse_config(std::string(kModel) + R"(
data:
  augment: {rotation: 15, scale: 0.15, translation: 2.8, shear: 5, erasing: 0.25, fill: 10}
  classes: [zero, one, two, three, four, five, six, seven, eight, "yes"]
)",
                                "test.yaml");
  EXPECT_TRUE(c.data.augment.enabled());
  EXPECT_DOUBLE_EQ(c.data.augment.rotation, 15);
  EXPECT_DOUBLE_EQ(c.data.augment.scale, 0.15);
  EXPECT_DOUBLE_EQ(c.data.augment.translation, 2.8);
  EXPECT_DOUBLE_EQ(c.data.augment.shear, 5);
  EXPECT_DOUBLE_EQ(c.data.augment.erasing, 0.25);
  EXPECT_DOUBLE_EQ(c.data.augment.fill, 10);
  ASSERT_EQ(c.data.classes.size(), 10u);
  EXPECT_EQ(c.data.classes[9], "yes");
  const std::string yaml = to_yaml(c);
  EXPECT_NE(yaml.find("augment: {rotation: 15, scale: 0.15, translation: 2.8, shear: 5, erasing: 0.25, fill: 10}"),
            std::string::npos)
      << yaml;
  const Config back = parse_config(yaml, "resolved.yaml");
  EXPECT_EQ(to_yaml(back), yaml);
  EXPECT_EQ(back.data.classes, c.data.classes);
  // --set reaches each key
  const Config set = parse_config(kModel, "test.yaml", {"data.augment.rotation=10", "data.augment.erasing=1"});
  EXPECT_DOUBLE_EQ(set.data.augment.rotation, 10);
  EXPECT_DOUBLE_EQ(set.data.augment.erasing, 1);
  EXPECT_TRUE(set.data.augment.enabled());
  // only a fill is not augmentation
  EXPECT_FALSE(parse_config(kModel, "test.yaml", {"data.augment.fill=3"}).data.augment.enabled());
}

TEST(AugmentConfig, ErrorsNameTheKey) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"data.augment.rotation=-1", "'data.augment.rotation': must be in [0, 180] degrees"},
      {"data.augment.rotation=181", "'data.augment.rotation': must be in [0, 180] degrees"},
      {"data.augment.scale=-0.1", "'data.augment.scale': must be in [0, 1)"},
      {"data.augment.scale=1", "'data.augment.scale': must be in [0, 1)"},
      {"data.augment.translation=-2", "'data.augment.translation': must be >= 0 pixels"},
      {"data.augment.translation=.inf", "'data.augment.translation': expected a finite number, got '.inf'"},
      {"data.augment.shear=-5", "'data.augment.shear': must be in [0, 90) degrees"},
      {"data.augment.shear=90", "'data.augment.shear': must be in [0, 90) degrees"},
      {"data.augment.erasing=1.5", "'data.augment.erasing': must be a probability in [0, 1]"},
      {"data.augment.erasing=-0.5", "'data.augment.erasing': must be a probability in [0, 1]"},
      {"data.augment.erasing=.nan", "'data.augment.erasing': expected a finite number, got '.nan'"},
      {"data.augment.fill=256", "'data.augment.fill': must be a raw pixel value in [0, 255]"},
      {"data.augment.fill=-1", "'data.augment.fill': must be a raw pixel value in [0, 255]"},
      {"data.augment.rotate=15", "'data.augment.rotate': unknown key"},
      {"data.augment.rotation=lots", "'data.augment.rotation': expected a number, got 'lots'"},
      {"data.augment=15", "'data.augment': expected a mapping"},
      {"data.classes=[a, b, c]", "'data.classes': has 3 names but model.num_classes is 10"},
      {"data.classes=five", "'data.classes': expected a list of class names"},
      {"data.classes=[a, b, c, d, e, f, g, h, i, a]", "'data.classes[9]': duplicate class name 'a'"},
      {"data.classes=[a, b, c, d, e, f, g, h, i, [j]]", "'data.classes[9]': expected a non-empty name"},
  };
  for (const auto& [set, want] : cases) {
    const std::string what = error_of(kModel, {set});
    EXPECT_NE(what.find("test.yaml: " + want), std::string::npos) << set << "\n  got: " << what;
  }
  // classes follow num_classes
  EXPECT_EQ(error_of(kModel, {"model.num_classes=3", "model.layers.0.out_features=3", "data.classes=[a, b, c]"}),
            "no error");
}

}  // namespace
}  // namespace dptrain
