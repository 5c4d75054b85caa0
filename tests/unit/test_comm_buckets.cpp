// Bucket layout of the GradientReducer and the pure parts of the bootstrap (backend names, GPU
// choice, the shared-GPU check that runs before NCCL starts).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "comm/bootstrap.h"
#include "comm/gradient_reducer.h"
#include "core/error.h"

namespace dptrain {
namespace {

TEST(CommBuckets, ElementsFromMegabytes) {
  EXPECT_EQ(bucket_elements(1.0), 262144u);   // 1 MiB of floats
  EXPECT_EQ(bucket_elements(25.0), 25u * 262144u);
  EXPECT_EQ(bucket_elements(0.001), 256u);    // 262.1 floats, rounded down to the alignment
  EXPECT_EQ(bucket_elements(1e-7), kBucketAlign);  // never below one aligned block
  EXPECT_THROW(bucket_elements(0.0), InputError);
  EXPECT_THROW(bucket_elements(-1.0), InputError);
  EXPECT_THROW(bucket_elements(std::nan("")), InputError);
  EXPECT_THROW(bucket_elements(std::numeric_limits<double>::infinity()), InputError);
}

TEST(CommBuckets, KnownLayout) {
  // 1000 elements, cap 256: from the end, the first bucket starts at 1000-256=744 rounded up to 768.
  const std::vector<Bucket> expected = {{768, 1000}, {512, 768}, {256, 512}, {0, 256}};
  EXPECT_EQ(plan_buckets(1000, 256), expected);
  EXPECT_EQ(plan_buckets(256, 256), (std::vector<Bucket>{{0, 256}}));
  EXPECT_EQ(plan_buckets(10, 256), (std::vector<Bucket>{{0, 10}}));
  EXPECT_EQ(plan_buckets(257, 256), (std::vector<Bucket>{{64, 257}, {0, 64}}));
  EXPECT_TRUE(plan_buckets(0, 256).empty());
  EXPECT_THROW(plan_buckets(100, 0), std::invalid_argument);
  EXPECT_THROW(plan_buckets(100, 100), std::invalid_argument);  // not a multiple of 64
}

TEST(CommBuckets, CoverReverseAlignedCapped) {
  for (size_t cap : {64u, 128u, 192u, 1024u, 262144u}) {
    for (size_t count : {1u, 63u, 64u, 65u, 127u, 1000u, 4097u, 100003u, 1000000u}) {
      SCOPED_TRACE("count " + std::to_string(count) + " cap " + std::to_string(cap));
      const std::vector<Bucket> buckets = plan_buckets(count, cap);
      ASSERT_FALSE(buckets.empty());
      EXPECT_EQ(buckets.front().end, count);  // the end of the buffer goes first
      EXPECT_EQ(buckets.back().begin, 0u);
      for (size_t i = 0; i < buckets.size(); ++i) {
        EXPECT_GT(buckets[i].size(), 0u);
        EXPECT_LE(buckets[i].size(), cap);
        EXPECT_EQ(buckets[i].begin % kBucketAlign, 0u);
        if (i + 1 < buckets.size()) {
          EXPECT_EQ(buckets[i + 1].end, buckets[i].begin);  // contiguous, descending
        }
        // Only the first and the last bucket may be smaller than the cap.
        if (i != 0 && i + 1 != buckets.size()) {
          EXPECT_EQ(buckets[i].size(), cap);
        }
      }
      // Aligning the first boundary costs at most one bucket over the minimum.
      EXPECT_LE(buckets.size(), (count + cap - 1) / cap + 1);
    }
  }
}

TEST(CommBootstrap, ParseCommKind) {
  EXPECT_EQ(parse_comm_kind("auto"), CommKind::Auto);
  EXPECT_EQ(parse_comm_kind("nccl"), CommKind::Nccl);
  EXPECT_EQ(parse_comm_kind("mpi"), CommKind::Mpi);
  EXPECT_EQ(comm_kind_name(CommKind::Nccl), "nccl");
  try {
    parse_comm_kind("gloo", "--comm");
    FAIL() << "no exception";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("--comm: unknown communication backend 'gloo'"), std::string::npos) << e.what();
  }
}

TEST(CommBootstrap, ChooseGpu) {
  EXPECT_EQ(choose_gpu(0, 4), 0);
  EXPECT_EQ(choose_gpu(3, 4), 3);
  EXPECT_EQ(choose_gpu(5, 4), 1);
  EXPECT_EQ(choose_gpu(1, 1), 0);
  EXPECT_THROW(choose_gpu(0, 0), InputError);
  EXPECT_THROW(choose_gpu(-1, 2), std::invalid_argument);
}

TEST(CommBootstrap, SharedGpuDetected) {
  const std::vector<RankPlacement> ok = {
      {"a", "0000:01:00.0", 2}, {"a", "0000:02:00.0", 2}, {"b", "0000:01:00.0", 2}, {"b", "0000:02:00.0", 2}};
  EXPECT_FALSE(find_shared_gpu(ok).has_value());  // the same bus id on two hosts is two GPUs

  const std::vector<RankPlacement> crowded = {
      {"a", "0000:01:00.0", 2}, {"b", "0000:01:00.0", 1}, {"a", "0000:02:00.0", 2}, {"b", "0000:01:00.0", 1},
      {"a", "0000:01:00.0", 2}};
  const auto message = find_shared_gpu(crowded);
  ASSERT_TRUE(message.has_value());
  // Host a comes first in rank order: 3 ranks, 2 GPUs, ranks 0 and 4 on one GPU.
  EXPECT_EQ(*message,
            "3 ranks on host a but only 2 GPUs visible (ranks 0 and 4 both drive GPU 0000:01:00.0); NCCL refuses "
            "two ranks on one GPU: use one rank per GPU, or --comm mpi to debug");
  EXPECT_FALSE(find_shared_gpu({}).has_value());
}

}  // namespace
}  // namespace dptrain
