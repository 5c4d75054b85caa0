// Softmax cross-entropy on the CPU: per sample, max-subtracted log-sum-exp, loss, first-argmax
// accuracy and the fused gradient.
#include <cmath>

#include "layers/cpu/cpu_layers.h"

namespace dptrain {

namespace {

template <typename T>
class SoftmaxCrossEntropyCpu final : public SoftmaxCrossEntropy<T> {
 public:
  void forward_backward(DeviceContext&, TensorView<const T> logits, const int32_t* labels, T grad_scale,
                        TensorView<T> dlogits, double* sums) override {
    const int k = static_cast<int>(logits.sample_size());
    double loss = 0, correct = 0;
    for (int i = 0; i < logits.n; ++i) {
      const T* x = logits.data + static_cast<size_t>(i) * k;
      int best = 0;
      for (int c = 1; c < k; ++c)
        if (x[c] > x[best]) best = c;
      T z = 0;
      for (int c = 0; c < k; ++c) z += std::exp(x[c] - x[best]);
      const T lse = x[best] + std::log(z);
      const int y = labels[i];
      loss += static_cast<double>(lse - x[y]);
      correct += best == y ? 1.0 : 0.0;
      if (dlogits.data == nullptr) continue;
      T* g = dlogits.data + static_cast<size_t>(i) * k;
      for (int c = 0; c < k; ++c) g[c] = (std::exp(x[c] - lse) - (c == y ? T(1) : T(0))) * grad_scale;
    }
    sums[0] += loss;
    sums[1] += correct;
  }
};

}  // namespace

template <typename T>
std::unique_ptr<SoftmaxCrossEntropy<T>> make_softmax_cross_entropy_cpu() {
  return std::make_unique<SoftmaxCrossEntropyCpu<T>>();
}
template std::unique_ptr<SoftmaxCrossEntropy<float>> make_softmax_cross_entropy_cpu<float>();
template std::unique_ptr<SoftmaxCrossEntropy<double>> make_softmax_cross_entropy_cpu<double>();

}  // namespace dptrain
