// cudnn_algo_rules.h's table against cuDNN itself: a recorded plan is confirmed by the table (and a
// workspace query) instead of cuDNN's heuristic query, so the table must say what the heuristics say.
#include <gtest/gtest.h>

#include <cudnn.h>

#include <vector>

#include "core/cuda_check.h"
#include "core/cuda_context.h"
#include "gpu_test_support.h"
#include "layers/cuda/conv_executor.h"
#include "layers/cuda/cudnn_algo_rules.h"

namespace dptrain {
namespace {

class CudnnAlgoRulesGpu : public gpu_test::GpuTest {};

struct Shape {
  Dims in;
  int out_channels, kernel, stride, padding, n;
  bool tf32;
};

Dims output_of(const Shape& s) {
  const auto side = [&](int x) { return (x + 2 * s.padding - s.kernel) / s.stride + 1; };
  return Dims{s.out_channels, side(s.in.h), side(s.in.w)};
}

// The shapes of the shipped configs' convolutions and a few others (strided, padded, 1x1, 7x7),
// in both maths: every algorithm cuDNN's heuristics rate as supported must be deterministic exactly
// when the table says so, and the workspace query (what confirms a recorded one) must support it too.
TEST_F(CudnnAlgoRulesGpu, TableMatchesCudnnHeuristics) {
  const std::vector<Shape> shapes = {
      {{1, 28, 28}, 32, 3, 1, 0, 64, false},  {{32, 26, 26}, 64, 3, 1, 0, 64, false},
      {{32, 26, 26}, 64, 3, 1, 0, 64, true},  {{24, 12, 12}, 32, 3, 1, 0, 96, false},
      {{1, 28, 28}, 24, 5, 1, 0, 256, false}, {{32, 14, 14}, 32, 5, 2, 2, 128, false},
      {{64, 7, 7}, 128, 1, 1, 0, 512, true},  {{3, 32, 32}, 16, 7, 3, 3, 7, false},
  };
  cudnnHandle_t h = gpu_->cuda().cudnn();
  int supported = 0;
  for (const Shape& s : shapes) {
    const ConvExecutor exec(s.in, output_of(s), s.kernel, s.stride, s.padding, s.tf32, false, false);
    const ConvBatch b = exec.batch(s.n);
    SCOPED_TRACE("in " + std::to_string(s.in.c) + "x" + std::to_string(s.in.h) + " k" + std::to_string(s.kernel) +
                 " stride " + std::to_string(s.stride) + " batch " + std::to_string(s.n) + (s.tf32 ? " tf32" : ""));
    const auto check = [&](const auto* r, int count) {
      for (int i = 0; i < count; ++i) {
        if (r[i].status != CUDNN_STATUS_SUCCESS) continue;
        ++supported;
        EXPECT_EQ(r[i].determinism == CUDNN_DETERMINISTIC, deterministic(r[i].algo)) << "algorithm " << r[i].algo;
        const std::optional<size_t> bytes = cudnn_workspace(exec, b, r[i].algo, h);
        ASSERT_TRUE(bytes.has_value()) << "algorithm " << r[i].algo << ": heuristics support it, the workspace query not";
        EXPECT_LT(static_cast<int>(r[i].algo), algo_count(r[i].algo));
      }
    };
    constexpr int kMax = 16;
    int k = 0;
    cudnnConvolutionFwdAlgoPerf_t fwd[kMax];
    CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(h, b.x, exec.filter_desc(), exec.conv_desc(), b.y, kMax, &k, fwd));
    check(fwd, k);
    cudnnConvolutionBwdDataAlgoPerf_t data[kMax];
    CUDNN_CHECK(
        cudnnGetConvolutionBackwardDataAlgorithm_v7(h, exec.filter_desc(), b.y, exec.conv_desc(), b.x, kMax, &k, data));
    check(data, k);
    cudnnConvolutionBwdFilterAlgoPerf_t filter[kMax];
    CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, b.x, b.y, exec.conv_desc(), exec.filter_desc(), kMax,
                                                              &k, filter));
    check(filter, k);
  }
  EXPECT_GT(supported, 3 * static_cast<int>(shapes.size()));
}

// The rules on their own: deterministic runs refuse the atomic backward algorithms, exact runs the
// transforms, and no run the non-fused Winograd.
TEST(CudnnAlgoRules, RefuseWhatTheRunsRulesExclude) {
  const AlgoRules strict{true, true}, loose{false, false};
  EXPECT_FALSE(rules_allow(CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0, strict));
  EXPECT_FALSE(rules_allow(CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3, AlgoRules{true, false}));
  EXPECT_TRUE(rules_allow(CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3, loose));
  EXPECT_FALSE(rules_allow(CUDNN_CONVOLUTION_BWD_DATA_ALGO_0, AlgoRules{true, false}));
  EXPECT_TRUE(rules_allow(CUDNN_CONVOLUTION_BWD_DATA_ALGO_1, strict));
  EXPECT_FALSE(rules_allow(CUDNN_CONVOLUTION_FWD_ALGO_FFT, strict));
  EXPECT_TRUE(rules_allow(CUDNN_CONVOLUTION_FWD_ALGO_FFT, AlgoRules{true, false}));
  EXPECT_FALSE(rules_allow(CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED, loose));
  EXPECT_FALSE(rules_allow(CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED, loose));
  EXPECT_FALSE(rules_allow(CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED, loose));
  EXPECT_TRUE(rules_allow(CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, strict));
}

}  // namespace
}  // namespace dptrain
