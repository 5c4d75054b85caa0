// Training-image augmentation (data.augment): a random affine transform (rotation, scale,
// translation, shear) with bilinear sampling and a fill value, then optional random erasing.
//
// One header for both backends: the CPU gather (data/sampler.cpp) and the CUDA gather kernel
// (kernels/data_kernels.cu) call these same functions, so the two produce the same images. Every
// step is IEEE basic arithmetic (+ - * / sqrt, floor), with contraction off on both sides
// (-ffp-contract=off, --fmad=false): sine, cosine and exp are Taylor polynomials here (coefficients
// written as hexadecimal doubles) rather than libm's or CUDA's functions, whose last bits differ.
// So CPU and GPU agree bit for bit (the GPU tests allow 1e-6 and report any bit that differs).
//
// The draws are keyed by (seed, epoch, global sample index) through Philox (core/philox.h), like
// dropout: the index is the sample's position in the epoch order (StepInfo::first_sample + i), so
// a sample's augmentation does not depend on the rank count, the batch split or a resume.
//
// Units: the transform works on raw pixel values (the IDX bytes, 0..255) before normalisation, so
// `fill` is a raw pixel value (0 is MNIST's black background) and the erased rectangle takes it too.
// Geometry: pixel (row r, column c) has its centre at (x, y) = (c, r); the transform turns about the
// image centre ((cols - 1) / 2, (rows - 1) / 2); positive angles turn clockwise as the image is
// displayed (rows downward), as torchvision's. C++17: CUDA code includes it.
#pragma once

#include <math.h>

#include <cstdint>

#include "core/host_device.h"
#include "core/philox.h"

namespace dptrain::augment {

/// data.augment as the gather uses it (io/config.h holds the checked config). All zero: off.
struct Settings {
  float rotation = 0;     ///< degrees: angle uniform in [-rotation, rotation]
  float scale = 0;        ///< fraction: zoom factor uniform in [1 - scale, 1 + scale]
  float translation = 0;  ///< pixels: shift uniform in [-translation, translation], each axis
  float shear = 0;        ///< degrees: x-shear angle uniform in [-shear, shear]
  float erasing = 0;      ///< probability of erasing one rectangle (torchvision's RandomErasing)
  float fill = 0;         ///< raw pixel value outside the source image and inside the erased rectangle
};

DPTRAIN_HD bool affine_enabled(const Settings& s) {
  return s.rotation > 0 || s.scale > 0 || s.translation > 0 || s.shear > 0;
}
DPTRAIN_HD bool enabled(const Settings& s) { return affine_enabled(s) || s.erasing > 0; }

/// One sample's random choices.
struct Draw {
  float angle = 0;  ///< degrees, clockwise
  float scale = 1;  ///< zoom factor (> 1 enlarges)
  float tx = 0, ty = 0;  ///< shift in pixels (right, down)
  float shear = 0;  ///< degrees: x' = x + tan(shear) * y about the centre
  bool erase = false;
  int erase_top = 0, erase_left = 0, erase_height = 0, erase_width = 0;
};

/// What the per-pixel sampling needs: the inverse map from an output pixel to its source point,
/// and the erased rectangle [top, bottom) x [left, right) (empty when none).
struct Transform {
  bool affine = false;  ///< false: the source pixel is the output pixel itself
  float m00 = 1, m01 = 0, m10 = 0, m11 = 1;  ///< inverse of the forward linear part
  float cx = 0, cy = 0;  ///< image centre
  float tx = 0, ty = 0;  ///< forward shift
  int erase_top = 0, erase_bottom = 0, erase_left = 0, erase_right = 0;
  float fill = 0;
};

// Erasing's ranges, torchvision's RandomErasing defaults: area fraction in [0.02, 0.33], aspect
// ratio log-uniform in [0.3, 3.3], up to 10 attempts to fit the rectangle inside the image.
constexpr double kEraseAreaLow = 0.02, kEraseAreaHigh = 0.33;
constexpr double kLogRatioLow = -1.2039728043259361;  // ln 0.3
constexpr double kLogRatioHigh = 1.1939224684724346;  // ln 3.3
constexpr int kEraseAttempts = 10;
constexpr double kPi = 3.14159265358979323846;

/// Philox counter word 0 of each group of four draws: the affine draws, then erasing's.
constexpr uint32_t kAffineGroup = 0, kShearEraseGroup = 1, kFirstEraseAttemptGroup = 2;

/// sin and cos of |x| <= pi by their Taylor polynomials to degree 29/28 (truncation below 3e-17),
/// evaluated by Horner's rule with the coefficients as hexadecimal literals (read identically by
/// every compiler): the same basic operations in the same order on host and device, so the same bits.
DPTRAIN_HD void sin_cos(double x, double* s, double* c) {
  constexpr double kSin[15] = {0x1.0000000000000p+0,   -0x1.5555555555555p-3,  0x1.1111111111111p-7,
                               -0x1.a01a01a01a01ap-13, 0x1.71de3a556c734p-19,  -0x1.ae64567f544e4p-26,
                               0x1.6124613a86d09p-33,  -0x1.ae7f3e733b81fp-41, 0x1.952c77030ad4ap-49,
                               -0x1.2f49b46814157p-57, 0x1.71b8ef6dcf572p-66,  -0x1.761b41316381ap-75,
                               0x1.3f3ccdd165fa9p-84,  -0x1.d1ab1c2dccea3p-94, 0x1.259f98b4358adp-103};
  constexpr double kCos[15] = {0x1.0000000000000p+0,   -0x1.0000000000000p-1,  0x1.5555555555555p-5,
                               -0x1.6c16c16c16c17p-10, 0x1.a01a01a01a01ap-16,  -0x1.27e4fb7789f5cp-22,
                               0x1.1eed8eff8d898p-29,  -0x1.93974a8c07c9dp-37, 0x1.ae7f3e733b81fp-45,
                               -0x1.6827863b97d97p-53, 0x1.e542ba4020225p-62,  -0x1.0ce396db7f853p-70,
                               0x1.f2cf01972f578p-80,  -0x1.88e85fc6a4e5ap-89, 0x1.0a18a2635085dp-98};
  const double x2 = x * x;
  double ps = kSin[14], pc = kCos[14];
  for (int k = 13; k >= 0; --k) {
    ps = ps * x2 + kSin[k];
    pc = pc * x2 + kCos[k];
  }
  *s = x * ps;
  *c = pc;
}

/// exp(x) for |x| <= 1.25 (erasing's log aspect ratios) by its Taylor polynomial to degree 20
/// (truncation below 1e-17), Horner's rule, hexadecimal coefficients.
DPTRAIN_HD double exp_series(double x) {
  constexpr double kExp[21] = {0x1.0000000000000p+0,  0x1.0000000000000p+0,  0x1.0000000000000p-1,
                               0x1.5555555555555p-3,  0x1.5555555555555p-5,  0x1.1111111111111p-7,
                               0x1.6c16c16c16c17p-10, 0x1.a01a01a01a01ap-13, 0x1.a01a01a01a01ap-16,
                               0x1.71de3a556c734p-19, 0x1.27e4fb7789f5cp-22, 0x1.ae64567f544e4p-26,
                               0x1.1eed8eff8d898p-29, 0x1.6124613a86d09p-33, 0x1.93974a8c07c9dp-37,
                               0x1.ae7f3e733b81fp-41, 0x1.ae7f3e733b81fp-45, 0x1.952c77030ad4ap-49,
                               0x1.6827863b97d97p-53, 0x1.2f49b46814157p-57, 0x1.e542ba4020225p-62};
  double p = kExp[20];
  for (int k = 19; k >= 0; --k) p = p * x + kExp[k];
  return p;
}

/// Uniform in [-1, 1) from a Philox word: exact in float (24-bit numerator).
DPTRAIN_HD float symmetric(uint32_t word) { return 2.0f * philox::to_unit_float(word) - 1.0f; }

DPTRAIN_HD philox::U32x4 words(uint64_t seed, uint32_t epoch, uint32_t sample, uint32_t group) {
  return philox::philox4x32(philox::U32x4{{group, sample, epoch, philox::kAugment}}, seed);
}

/// The draws of global sample `sample` in `epoch` (parameters that are 0 draw nothing visible).
DPTRAIN_HD Draw sample_draw(const Settings& s, uint64_t seed, uint32_t epoch, uint32_t sample, int rows, int cols) {
  Draw d;
  if (affine_enabled(s)) {
    const philox::U32x4 a = words(seed, epoch, sample, kAffineGroup);
    d.angle = symmetric(a.v[0]) * s.rotation;
    d.scale = 1.0f + symmetric(a.v[1]) * s.scale;
    d.tx = symmetric(a.v[2]) * s.translation;
    d.ty = symmetric(a.v[3]) * s.translation;
  }
  const philox::U32x4 b = words(seed, epoch, sample, kShearEraseGroup);
  if (s.shear > 0) d.shear = symmetric(b.v[0]) * s.shear;
  if (s.erasing > 0 && philox::to_unit_float(b.v[1]) < s.erasing) {
    const double area = static_cast<double>(rows) * cols;
    for (int attempt = 0; attempt < kEraseAttempts; ++attempt) {
      const philox::U32x4 e = words(seed, epoch, sample, kFirstEraseAttemptGroup + attempt);
      const double erase_area =
          area * (kEraseAreaLow + (kEraseAreaHigh - kEraseAreaLow) * static_cast<double>(philox::to_unit_float(e.v[0])));
      const double aspect =
          exp_series(kLogRatioLow + (kLogRatioHigh - kLogRatioLow) * static_cast<double>(philox::to_unit_float(e.v[1])));
      const int h = static_cast<int>(floor(sqrt(erase_area * aspect) + 0.5));
      const int w = static_cast<int>(floor(sqrt(erase_area / aspect) + 0.5));
      if (!(h < rows && w < cols)) continue;
      // randint(0, rows - h + 1): u < 1, so the product stays below the bound
      d.erase = true;
      d.erase_top = static_cast<int>(floor(static_cast<double>(philox::to_unit_float(e.v[2])) * (rows - h + 1)));
      d.erase_left = static_cast<int>(floor(static_cast<double>(philox::to_unit_float(e.v[3])) * (cols - w + 1)));
      d.erase_height = h;
      d.erase_width = w;
      break;
    }
  }
  return d;
}

/// The transform of a draw. `affine` false skips the resampling (identity, bit for bit the plain
/// gather); with it true an identity draw still gives the source pixels exactly.
DPTRAIN_HD Transform make_transform(const Draw& d, int rows, int cols, float fill, bool affine) {
  Transform t;
  t.affine = affine;
  t.fill = fill;
  t.cx = static_cast<float>(cols - 1) * 0.5f;
  t.cy = static_cast<float>(rows - 1) * 0.5f;
  t.tx = d.tx;
  t.ty = d.ty;
  if (affine) {
    // Forward linear part A = scale * R(angle) * Shear, R = [[c, -s], [s, c]], Shear = [[1, k], [0, 1]];
    // its inverse (1/scale) [[c + k s, s - k c], [-s, c]], in double, rounded once to float.
    double s, c, ss, cs;
    sin_cos(static_cast<double>(d.angle) * (kPi / 180.0), &s, &c);
    sin_cos(static_cast<double>(d.shear) * (kPi / 180.0), &ss, &cs);
    const double k = ss / cs;
    const double inv = 1.0 / static_cast<double>(d.scale);
    t.m00 = static_cast<float>((c + k * s) * inv);
    t.m01 = static_cast<float>((s - k * c) * inv);
    t.m10 = static_cast<float>(-s * inv);
    t.m11 = static_cast<float>(c * inv);
  }
  if (d.erase) {
    t.erase_top = d.erase_top;
    t.erase_bottom = d.erase_top + d.erase_height;
    t.erase_left = d.erase_left;
    t.erase_right = d.erase_left + d.erase_width;
  }
  return t;
}

DPTRAIN_HD Transform sample_transform(const Settings& s, uint64_t seed, uint32_t epoch, uint32_t sample, int rows,
                                      int cols) {
  return make_transform(sample_draw(s, seed, epoch, sample, rows, cols), rows, cols, s.fill, affine_enabled(s));
}

/// Raw value of source pixel (r, c), or the fill outside the image.
DPTRAIN_HD float source_or_fill(const uint8_t* image, int rows, int cols, int r, int c, float fill) {
  return r >= 0 && r < rows && c >= 0 && c < cols ? static_cast<float>(image[r * cols + c]) : fill;
}

/// Raw value (0..255 scale, float) of output pixel (r, c) of `image` (rows x cols bytes) under t:
/// bilinear interpolation of the four source pixels around the inverse-mapped point, each source
/// pixel outside the image counting as the fill (the image padded with fill), then erasing.
DPTRAIN_HD float augmented_pixel(const Transform& t, const uint8_t* image, int rows, int cols, int r, int c) {
  if (r >= t.erase_top && r < t.erase_bottom && c >= t.erase_left && c < t.erase_right) return t.fill;
  if (!t.affine) return static_cast<float>(image[r * cols + c]);
  const float u = (static_cast<float>(c) - t.cx) - t.tx;
  const float v = (static_cast<float>(r) - t.cy) - t.ty;
  const float xs = (t.m00 * u + t.m01 * v) + t.cx;
  const float ys = (t.m10 * u + t.m11 * v) + t.cy;
  // All four neighbours outside (and no int overflow from far-away points).
  if (!(xs > -1.0f && xs < static_cast<float>(cols) && ys > -1.0f && ys < static_cast<float>(rows))) return t.fill;
  const float x0f = floorf(xs), y0f = floorf(ys);
  const int x0 = static_cast<int>(x0f), y0 = static_cast<int>(y0f);
  const float fx = xs - x0f, fy = ys - y0f;
  const float v00 = source_or_fill(image, rows, cols, y0, x0, t.fill);
  const float v01 = source_or_fill(image, rows, cols, y0, x0 + 1, t.fill);
  const float v10 = source_or_fill(image, rows, cols, y0 + 1, x0, t.fill);
  const float v11 = source_or_fill(image, rows, cols, y0 + 1, x0 + 1, t.fill);
  const float top = (1.0f - fx) * v00 + fx * v01;
  const float bottom = (1.0f - fx) * v10 + fx * v11;
  return (1.0f - fy) * top + fy * bottom;
}

}  // namespace dptrain::augment
