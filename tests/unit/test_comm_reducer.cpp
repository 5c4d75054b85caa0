// GradientReducer on a CPU context: every bucket is all-reduced exactly once per step, in bucket
// order, as early as the reported slices allow, whatever order the slices come in; with
// SingleRankCommunicator the gradients come out unchanged.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "comm/communicator.h"
#include "comm/gradient_reducer.h"
#include "core/device_context.h"

namespace dptrain {
namespace {

// A test double of the Communicator interface: acts as if a second rank held identical gradients
// (the sum doubles each element) and records which spans it was asked to reduce.
class DoublingCommunicator final : public Communicator {
 public:
  explicit DoublingCommunicator(const float* base) : base_(base) {}
  int rank() const override { return 0; }
  int size() const override { return 2; }
  std::string_view name() const override { return "doubling"; }
  void all_reduce_sum(std::span<float> data, cudaStream_t stream) override {
    EXPECT_EQ(stream, nullptr) << "a CPU context has no stream";
    calls.push_back({static_cast<size_t>(data.data() - base_), static_cast<size_t>(data.data() - base_) + data.size()});
    for (float& x : data) x *= 2.0f;
  }
  void broadcast(std::span<float>, int, cudaStream_t) override {}
  double all_reduce_scalar(double value, ReduceOp) override { return value; }
  void barrier() override {}
  void broadcast_bytes(std::string&, int) override {}

  std::vector<Bucket> calls;

 private:
  const float* base_;
};

std::vector<float> iota_data(size_t n) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<float>(i % 1000) * 0.25f + 1.0f;
  return v;
}

// Cuts [0, n) at `cuts` random points into slices (like layers' gradient ranges, not aligned).
std::vector<Bucket> random_slices(size_t n, size_t cuts, std::mt19937& rng) {
  std::vector<size_t> points = {0, n};
  std::uniform_int_distribution<size_t> pick(1, n - 1);
  for (size_t i = 0; i < cuts; ++i) points.push_back(pick(rng));
  std::sort(points.begin(), points.end());
  points.erase(std::unique(points.begin(), points.end()), points.end());
  std::vector<Bucket> slices;
  for (size_t i = 0; i + 1 < points.size(); ++i) slices.push_back({points[i], points[i + 1]});
  return slices;
}

// How many leading buckets (in launch order) are fully covered by `done` elements flags.
size_t complete_prefix(const std::vector<Bucket>& buckets, const std::vector<bool>& done) {
  size_t k = 0;
  for (; k < buckets.size(); ++k)
    if (!std::all_of(done.begin() + buckets[k].begin, done.begin() + buckets[k].end, [](bool d) { return d; })) break;
  return k;
}

TEST(CommReducer, EveryBucketOnceInOrderForAnySliceOrder) {
  DeviceContext ctx;  // CPU
  std::mt19937 rng(1234);
  // 0.0005 MiB = 131 floats -> cap 128; 0.001 MiB -> 256.
  for (double mb : {0.0005, 0.001, 1.0}) {
    for (size_t n : {1u, 64u, 1000u, 5000u}) {
      for (int trial = 0; trial < 6; ++trial) {
        SCOPED_TRACE("mb " + std::to_string(mb) + " n " + std::to_string(n) + " trial " + std::to_string(trial));
        std::vector<float> grads = iota_data(n);
        const std::vector<float> original = grads;
        DoublingCommunicator comm(grads.data());
        GradientReducer reducer(comm, ctx, grads, {mb, /*overlap=*/true});
        const std::vector<Bucket>& buckets = reducer.buckets();

        std::vector<Bucket> slices = n > 1 ? random_slices(n, 3 + trial * 7, rng) : std::vector<Bucket>{{0, 1}};
        if (trial == 0)
          std::reverse(slices.begin(), slices.end());  // what backward does
        else
          std::shuffle(slices.begin(), slices.end(), rng);

        std::vector<bool> done(n, false);
        for (const Bucket& s : slices) {
          reducer.on_gradients_ready(ctx, s.begin, s.end);
          std::fill(done.begin() + s.begin, done.begin() + s.end, true);
          // Launched as soon as possible, and not before its elements are final.
          EXPECT_EQ(reducer.launched(), complete_prefix(buckets, done));
          EXPECT_EQ(comm.calls.size(), reducer.launched());
        }
        EXPECT_EQ(reducer.launched(), buckets.size());  // slices tile the buffer: all went early
        reducer.on_backward_done(ctx);
        EXPECT_EQ(reducer.launched(), 0u);
        EXPECT_EQ(comm.calls, buckets);  // each exactly once, in bucket order
        for (size_t i = 0; i < n; ++i) ASSERT_EQ(grads[i], 2.0f * original[i]) << "element " << i;
      }
    }
  }
}

TEST(CommReducer, ReverseOrderOverlapsBackward) {
  DeviceContext ctx;
  std::vector<float> grads = iota_data(1000);
  DoublingCommunicator comm(grads.data());
  GradientReducer reducer(comm, ctx, grads, {0.001, true});  // cap 256: {768,1000} {512,768} {256,512} {0,256}
  ASSERT_EQ(reducer.bucket_count(), 4u);
  reducer.on_gradients_ready(ctx, 900, 1000);
  EXPECT_EQ(comm.calls.size(), 0u);
  reducer.on_gradients_ready(ctx, 700, 900);  // completes bucket 0 (and half of bucket 1)
  ASSERT_EQ(comm.calls.size(), 1u);
  EXPECT_EQ(comm.calls[0], (Bucket{768, 1000}));
  reducer.on_gradients_ready(ctx, 0, 700);  // the rest at once
  EXPECT_EQ(comm.calls.size(), 4u);
  reducer.on_backward_done(ctx);
  EXPECT_EQ(comm.calls.size(), 4u);
}

TEST(CommReducer, UncoveredBucketsGoAtBackwardDone) {
  // Elements never reported (padding between tensors, frozen parameters) are reduced at the end.
  DeviceContext ctx;
  std::vector<float> grads = iota_data(1000);
  const std::vector<float> original = grads;
  DoublingCommunicator comm(grads.data());
  GradientReducer reducer(comm, ctx, grads, {0.001, true});
  reducer.on_gradients_ready(ctx, 768, 1000);
  reducer.on_gradients_ready(ctx, 10, 500);  // bucket 1 incomplete: buckets 1..3 wait
  EXPECT_EQ(comm.calls.size(), 1u);
  reducer.on_backward_done(ctx);
  EXPECT_EQ(comm.calls, reducer.buckets());
  for (size_t i = 0; i < grads.size(); ++i) ASSERT_EQ(grads[i], 2.0f * original[i]);
}

TEST(CommReducer, WithoutOverlapOneReductionAtTheEnd) {
  DeviceContext ctx;
  std::vector<float> grads = iota_data(1000);
  DoublingCommunicator comm(grads.data());
  GradientReducer reducer(comm, ctx, grads, {0.001, /*overlap=*/false});
  reducer.on_gradients_ready(ctx, 500, 1000);
  reducer.on_gradients_ready(ctx, 0, 500);
  EXPECT_TRUE(comm.calls.empty());
  reducer.on_backward_done(ctx);
  EXPECT_EQ(comm.calls, (std::vector<Bucket>{{0, 1000}}));
}

TEST(CommReducer, SeveralStepsAndSingleRankIdentity) {
  DeviceContext ctx;
  std::vector<float> grads = iota_data(3000);
  const std::vector<float> original = grads;
  SingleRankCommunicator single;
  GradientReducer reducer(single, ctx, grads, {0.001, true});
  for (int step = 0; step < 3; ++step) {
    reducer.on_gradients_ready(ctx, 1500, 3000);
    reducer.on_gradients_ready(ctx, 0, 1500);
    EXPECT_EQ(reducer.launched(), reducer.bucket_count());
    reducer.on_backward_done(ctx);
    EXPECT_EQ(reducer.launched(), 0u);  // counters reset for the next step
  }
  EXPECT_EQ(grads, original);
}

TEST(CommReducer, RejectsBadRanges) {
  DeviceContext ctx;
  std::vector<float> grads = iota_data(1000);
  DoublingCommunicator comm(grads.data());
  GradientReducer reducer(comm, ctx, grads, {0.001, true});
  EXPECT_THROW(reducer.on_gradients_ready(ctx, 10, 1001), std::out_of_range);
  EXPECT_THROW(reducer.on_gradients_ready(ctx, 20, 10), std::out_of_range);
  reducer.on_gradients_ready(ctx, 0, 100);
  EXPECT_THROW(reducer.on_gradients_ready(ctx, 50, 300), std::logic_error);  // 50..100 twice
}

}  // namespace
}  // namespace dptrain
