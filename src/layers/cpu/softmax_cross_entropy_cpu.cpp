// Softmax cross-entropy on the CPU: per sample, max-subtracted log-sum-exp, loss, first-argmax
// accuracy and the fused gradient, with optional label smoothing (layers/softmax_cross_entropy.h).
// The row is kept as (max, log z), as the CUDA kernels keep it (kernels/softmax_row.cuh): with huge
// logits max + log z rounds to max, and exp(x - lse) would lose log z.
#include <cmath>

#include "layers/cpu/cpu_layers.h"

namespace dptrain {

namespace {

template <typename T>
class SoftmaxCrossEntropyCpu final : public SoftmaxCrossEntropy<T> {
 public:
  explicit SoftmaxCrossEntropyCpu(double label_smoothing) : eps_(static_cast<T>(label_smoothing)) {}

  void forward_backward(DeviceContext&, TensorView<const T> logits, const int32_t* labels, T grad_scale,
                        TensorView<T> dlogits, double* sums) override {
    const int k = static_cast<int>(logits.sample_size());
    const T on = T(1) - eps_, off = eps_ / static_cast<T>(k);  // the target: on + off at the label, off elsewhere
    double loss = 0, correct = 0;
    for (int i = 0; i < logits.n; ++i) {
      const T* x = logits.data + static_cast<size_t>(i) * k;
      int best = 0;
      for (int c = 1; c < k; ++c)
        if (x[c] > x[best]) best = c;
      T z = 0, sum = 0;
      for (int c = 0; c < k; ++c) z += std::exp(x[c] - x[best]), sum += x[c];
      const T max = x[best], log_z = std::log(z);
      const int y = labels[i];
      const double nll = static_cast<double>((max - x[y]) + log_z);
      // -sum target * log_softmax = (1 - e) nll + e (lse - mean x)
      loss += eps_ == T(0) ? nll
                           : (1.0 - static_cast<double>(eps_)) * nll +
                                 static_cast<double>(eps_) * (static_cast<double>(max) + static_cast<double>(log_z) -
                                                              static_cast<double>(sum) / k);
      correct += best == y ? 1.0 : 0.0;
      if (dlogits.data == nullptr) continue;
      T* g = dlogits.data + static_cast<size_t>(i) * k;
      for (int c = 0; c < k; ++c) g[c] = (std::exp((x[c] - max) - log_z) - (c == y ? on : T(0)) - off) * grad_scale;
    }
    sums[0] += loss;
    sums[1] += correct;
  }

 private:
  T eps_;
};

}  // namespace

template <typename T>
std::unique_ptr<SoftmaxCrossEntropy<T>> make_softmax_cross_entropy_cpu(double label_smoothing) {
  return std::make_unique<SoftmaxCrossEntropyCpu<T>>(label_smoothing);
}
template std::unique_ptr<SoftmaxCrossEntropy<float>> make_softmax_cross_entropy_cpu<float>(double);
template std::unique_ptr<SoftmaxCrossEntropy<double>> make_softmax_cross_entropy_cpu<double>(double);

}  // namespace dptrain
