// Philox-4x32-10 against the Random123 known-answer vectors, and the properties dptrain relies on:
// draws are pure functions of (key, counter) and uniform in [0, 1).
#include <gtest/gtest.h>

#include <omp.h>

#include <cmath>
#include <set>

#include "core/philox.h"
#include "model/param_store.h"

namespace dptrain {
namespace {

// Known-answer tests from Random123's kat_vectors (philox4x32_10).
TEST(Philox, MatchesRandom123KnownAnswers) {
  const philox::U32x4 zero = philox::philox4x32({{0, 0, 0, 0}}, 0);
  EXPECT_EQ(zero.v[0], 0x6627e8d5u);
  EXPECT_EQ(zero.v[1], 0xe169c58du);
  EXPECT_EQ(zero.v[2], 0xbc57ac4cu);
  EXPECT_EQ(zero.v[3], 0x9b00dbd8u);
  const philox::U32x4 ones =
      philox::philox4x32({{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}}, 0xffffffffffffffffull);
  EXPECT_EQ(ones.v[0], 0x408f276du);
  EXPECT_EQ(ones.v[1], 0x41c83b0eu);
  EXPECT_EQ(ones.v[2], 0xa20bc7c6u);
  EXPECT_EQ(ones.v[3], 0x6d5451fdu);
  const philox::U32x4 pi = philox::philox4x32({{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}},
                                              (uint64_t{0x299f31d0u} << 32) | 0xa4093822u);
  EXPECT_EQ(pi.v[0], 0xd16cfe09u);
  EXPECT_EQ(pi.v[1], 0x94fdccebu);
  EXPECT_EQ(pi.v[2], 0x5001e420u);
  EXPECT_EQ(pi.v[3], 0x24126ea1u);
}

TEST(Philox, DropoutDrawsArePureAndUniform) {
  double sum = 0;
  std::set<float> distinct;
  for (uint32_t e = 0; e < 4096; ++e) {
    const float u = philox::dropout_uniform(7, 3, 2, 100, e);
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    EXPECT_EQ(u, philox::dropout_uniform(7, 3, 2, 100, e));
    sum += u;
    distinct.insert(u);
  }
  EXPECT_NEAR(sum / 4096, 0.5, 0.02);
  EXPECT_GT(distinct.size(), 4000u);
  // Any change of key or counter changes the draw.
  EXPECT_NE(philox::dropout_uniform(7, 3, 2, 100, 0), philox::dropout_uniform(8, 3, 2, 100, 0));
  EXPECT_NE(philox::dropout_uniform(7, 3, 2, 100, 0), philox::dropout_uniform(7, 4, 2, 100, 0));
  EXPECT_NE(philox::dropout_uniform(7, 3, 2, 100, 0), philox::dropout_uniform(7, 3, 1, 100, 0));
  EXPECT_NE(philox::dropout_uniform(7, 3, 2, 100, 0), philox::dropout_uniform(7, 3, 2, 101, 0));
}

TEST(ParamStore, DefaultInitMatchesPyTorchBounds) {
  const int64_t fan_in = 9216;
  const std::vector<double> v = default_init_values(1, 4, 100000, fan_in);
  const double bound = 1.0 / std::sqrt(double(fan_in));
  double lo = 1, hi = -1, mean = 0;
  for (double x : v) {
    lo = std::min(lo, x);
    hi = std::max(hi, x);
    mean += x;
  }
  mean /= double(v.size());
  EXPECT_GE(lo, -bound);
  EXPECT_LE(hi, bound);
  EXPECT_LT(lo, -0.99 * bound);
  EXPECT_GT(hi, 0.99 * bound);
  EXPECT_NEAR(mean, 0.0, 0.01 * bound);
}

// The initial values are split over OpenMP's threads for large tensors: every element is the same
// function of (seed, tensor, index) whatever the thread count, and equals a one-element draw.
TEST(ParamStore, DefaultInitIsTheSameOnAnyThreadCount) {
  const int64_t fan_in = 800;
  const size_t count = 204800;  // above the size that is split over threads
  const int threads_before = omp_get_max_threads();
  omp_set_num_threads(1);
  const std::vector<double> one = default_init_values(3, 2, count, fan_in);
  omp_set_num_threads(4);
  const std::vector<double> four = default_init_values(3, 2, count, fan_in);
  omp_set_num_threads(threads_before);
  ASSERT_EQ(one.size(), count);
  EXPECT_EQ(one, four);
  for (size_t i : {size_t{0}, size_t{1}, count / 4 + 1, count / 2, count - 1})
    EXPECT_EQ(one[i], (2.0 * philox::init_uniform(3, 2, i) - 1.0) * (1.0 / std::sqrt(800.0))) << i;
}

TEST(ParamStore, LaysOutAlignedZeroPaddedTensors) {
  std::vector<ParamEntry> entries(2);
  entries[0].name = "a.weight";
  entries[0].shape = {3, 5};
  entries[1].name = "a.bias";
  entries[1].shape = {3};
  ParamStore<float> store(Device::Cpu, entries);
  ASSERT_EQ(store.entries()[0].offset, 0u);
  ASSERT_EQ(store.entries()[1].offset, 64u);
  EXPECT_EQ(store.size(), 128u);
  store.initialize(5);
  const float* p = store.values().data();
  for (size_t i = 15; i < 64; ++i) EXPECT_EQ(p[i], 0.0f) << i;
  for (size_t i = 67; i < 128; ++i) EXPECT_EQ(p[i], 0.0f) << i;
  EXPECT_NE(p[0], 0.0f);
  EXPECT_EQ(store.find("a.bias"), 1);
  EXPECT_EQ(store.find("nope"), -1);
}

}  // namespace
}  // namespace dptrain
