// The softmax cross-entropy loss and the whole mnist_cnn model (dropout on) against central finite
// differences in double precision.
#include <gtest/gtest.h>

#include <cmath>

#include "gradient_checker.h"
#include "io/config.h"
#include "layers/softmax_cross_entropy.h"
#include "model/model.h"

namespace dptrain {
namespace {

using testing::central_difference;
using testing::check_model_gradients;
using testing::random_vector;
using testing::rel_error;

TEST(SoftmaxCrossEntropy, LossAccuracyAndGradient) {
  auto loss = make_softmax_cross_entropy<double>(Device::Cpu);
  DeviceContext ctx;
  const int n = 3, k = 4;
  std::vector<double> x = random_vector(n * k, 11, -3, 3);
  x[0 * k + 2] = 5.0;  // sample 0: class 2 clearly ahead
  const std::vector<int32_t> labels{2, 0, 3};
  auto value = [&]() {
    double sums[2] = {0, 0};
    loss->forward_backward(ctx, TensorView<const double>{x.data(), n, {k, 1, 1}}, labels.data(), 1.0,
                           TensorView<double>{nullptr, n, {k, 1, 1}}, sums);
    return sums[0];
  };
  // Hand computation of the loss: sum_i logsumexp(x_i) - x_i[label].
  double expected = 0;
  for (int i = 0; i < n; ++i) {
    double z = 0;
    for (int c = 0; c < k; ++c) z += std::exp(x[static_cast<size_t>(i * k + c)]);
    expected += std::log(z) - x[static_cast<size_t>(i * k + labels[static_cast<size_t>(i)])];
  }
  EXPECT_NEAR(value(), expected, 1e-12);
  double sums[2] = {0, 0};
  std::vector<double> g(x.size());
  loss->forward_backward(ctx, TensorView<const double>{x.data(), n, {k, 1, 1}}, labels.data(), 0.5,
                         TensorView<double>{g.data(), n, {k, 1, 1}}, sums);
  EXPECT_GE(sums[1], 1.0);  // sample 0 is right
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_LT(rel_error(g[i], 0.5 * central_difference(x[i], 1e-6, value)), 1e-6) << i;
  }
}

TEST(SoftmaxCrossEntropy, StableForHugeLogits) {
  auto loss = make_softmax_cross_entropy<float>(Device::Cpu);
  DeviceContext ctx;
  std::vector<float> x{1000.0f, -1000.0f, 0.0f}, g(3);
  const int32_t label = 1;
  double sums[2] = {0, 0};
  loss->forward_backward(ctx, TensorView<const float>{x.data(), 1, {3, 1, 1}}, &label, 1.0f,
                         TensorView<float>{g.data(), 1, {3, 1, 1}}, sums);
  EXPECT_NEAR(sums[0], 2000.0, 1e-3);
  EXPECT_TRUE(std::isfinite(g[0]) && std::isfinite(g[1]) && std::isfinite(g[2]));
  EXPECT_NEAR(g[0], 1.0f, 1e-6);
  EXPECT_NEAR(g[1], -1.0f, 1e-6);
  EXPECT_EQ(sums[1], 0.0);
}

TEST(ModelGradient, WholeMnistCnnMatchesFiniteDifferences) {
  const Config config = load_config(std::string(DPTRAIN_SOURCE_DIR) + "/configs/mnist_cnn.yaml");
  DeviceContext ctx;
  const int n = 2;
  Model<double> model(config.model, ctx, n);
  model.params().initialize(3);
  const std::vector<double> x = random_vector(static_cast<size_t>(n) * 784, 12, -1, 2);
  const std::vector<int32_t> labels{3, 8};
  const StepInfo step{5, 0, 40};  // dropout on, with fixed masks
  const int checked = check_model_gradients(ctx, model, x, {1, 28, 28}, labels, step, 25, 1);
  EXPECT_EQ(checked, 8 * 25);
}

}  // namespace
}  // namespace dptrain
