// ReLU, Dropout and Flatten on the CPU.
#include <algorithm>
#include <cstring>

#include "core/buffer.h"
#include "core/philox.h"
#include "layers/cpu/cpu_layers.h"
#include "layers/elementwise.h"

namespace dptrain {

namespace {

template <typename T>
class ReluCpu final : public ReluLayer<T> {
 public:
  using ReluLayer<T>::ReluLayer;
  void forward(DeviceContext&, TensorView<const T> in, TensorView<T> out, Phase, const StepInfo&) override {
    const long n = in.size();
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; ++i) out.data[i] = in.data[i] > T(0) ? in.data[i] : T(0);
  }
  void backward(DeviceContext&, TensorView<const T>, TensorView<const T> out, TensorView<const T> dout,
                TensorView<T> din) override {
    if (din.data == nullptr) return;
    const long n = out.size();
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; ++i) {
      // Load first, then select: a load under the condition compiles to a branch the sign pattern
      // mispredicts half the time, and keeps the loop from vectorising.
      const T g = dout.data[i];
      din.data[i] = out.data[i] > T(0) ? g : T(0);
    }
  }
};

template <typename T>
class DropoutCpu final : public DropoutLayer<T> {
 public:
  using DropoutLayer<T>::DropoutLayer;
  void reserve(DeviceContext&, int max_batch) override {
    mask_ = Buffer<T>(Device::Cpu, static_cast<size_t>(max_batch) * this->input_dims().count());
  }
  void forward(DeviceContext&, TensorView<const T> in, TensorView<T> out, Phase phase, const StepInfo& step) override {
    const long per = static_cast<long>(in.sample_size());
    if (phase == Phase::Eval) {
      std::memcpy(out.data, in.data, sizeof(T) * static_cast<size_t>(in.size()));
      return;
    }
    const float p = static_cast<float>(this->p());
    const T scale = this->scale();
    const uint32_t layer = static_cast<uint32_t>(this->index());
#pragma omp parallel for schedule(static)
    for (int i = 0; i < in.n; ++i) {
      const uint32_t sample = step.first_sample + static_cast<uint32_t>(i);
      for (long e0 = 0; e0 < per; e0 += 4) {
        // One generator call per four elements: each word is exactly dropout_uniform's for its element.
        const philox::U32x4 words =
            philox::dropout_words(step.seed, step.epoch, layer, sample, static_cast<uint32_t>(e0 >> 2));
        for (long e = e0; e < std::min(per, e0 + 4); ++e) {
          const long k = i * per + e;
          mask_.data()[k] = philox::to_unit_float(words.v[e - e0]) >= p ? scale : T(0);
          out.data[k] = in.data[k] * mask_.data()[k];
        }
      }
    }
  }
  void backward(DeviceContext&, TensorView<const T> in, TensorView<const T>, TensorView<const T> dout,
                TensorView<T> din) override {
    if (din.data == nullptr) return;
    const long n = in.size();
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; ++i) din.data[i] = dout.data[i] * mask_.data()[i];
  }

 private:
  Buffer<T> mask_;
};

template <typename T>
class FlattenCpu final : public FlattenLayer<T> {
 public:
  using FlattenLayer<T>::FlattenLayer;
  void forward(DeviceContext&, TensorView<const T> in, TensorView<T> out, Phase, const StepInfo&) override {
    if (out.data != in.data) std::memcpy(out.data, in.data, sizeof(T) * static_cast<size_t>(in.size()));
  }
  void backward(DeviceContext&, TensorView<const T> in, TensorView<const T>, TensorView<const T> dout,
                TensorView<T> din) override {
    if (din.data != nullptr && din.data != dout.data)
      std::memcpy(din.data, dout.data, sizeof(T) * static_cast<size_t>(in.size()));
  }
};

}  // namespace

template <typename T>
std::unique_ptr<Layer<T>> make_relu_cpu(const LayerConfig& c, int index, Dims in) {
  return std::make_unique<ReluCpu<T>>(c, index, in);
}
template <typename T>
std::unique_ptr<Layer<T>> make_dropout_cpu(const LayerConfig& c, int index, Dims in) {
  return std::make_unique<DropoutCpu<T>>(c, index, in);
}
template <typename T>
std::unique_ptr<Layer<T>> make_flatten_cpu(const LayerConfig& c, int index, Dims in) {
  return std::make_unique<FlattenCpu<T>>(c, index, in);
}
#define DPTRAIN_INSTANTIATE(T)                                                                \
  template std::unique_ptr<Layer<T>> make_relu_cpu<T>(const LayerConfig&, int, Dims);          \
  template std::unique_ptr<Layer<T>> make_dropout_cpu<T>(const LayerConfig&, int, Dims);       \
  template std::unique_ptr<Layer<T>> make_flatten_cpu<T>(const LayerConfig&, int, Dims);
DPTRAIN_INSTANTIATE(float)
DPTRAIN_INSTANTIATE(double)
#undef DPTRAIN_INSTANTIATE

}  // namespace dptrain
