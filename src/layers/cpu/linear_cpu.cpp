// Linear on the CPU: three GEMMs (forward, weight gradient, input gradient) and a bias loop.
#include "cpu/gemm.h"
#include "layers/cpu/cpu_layers.h"
#include "layers/linear.h"

namespace dptrain {

namespace {

template <typename T>
class LinearCpu final : public LinearLayer<T> {
 public:
  using LinearLayer<T>::LinearLayer;

  void forward(DeviceContext&, TensorView<const T> in, TensorView<T> out, Phase, const StepInfo&) override {
    const int n = in.n, fi = this->in_features(), fo = this->out_features();
    const T* w = this->params()[0].value.data();
    const T* b = this->params()[1].value.data();
    cpu::gemm<T>(false, true, n, fo, fi, T(1), in.data, fi, w, fi, T(0), out.data, fo);
    for (int i = 0; i < n; ++i)
      for (int o = 0; o < fo; ++o) out.data[static_cast<size_t>(i) * fo + o] += b[o];
  }

  void backward(DeviceContext&, TensorView<const T> in, TensorView<const T>, TensorView<const T> dout,
                TensorView<T> din) override {
    const int n = in.n, fi = this->in_features(), fo = this->out_features();
    const T* w = this->params()[0].value.data();
    T* dw = this->params()[0].grad.data();
    T* db = this->params()[1].grad.data();
    cpu::gemm<T>(true, false, fo, fi, n, T(1), dout.data, fo, in.data, fi, T(0), dw, fi);
    for (int o = 0; o < fo; ++o) {
      T acc = 0;
      for (int i = 0; i < n; ++i) acc += dout.data[static_cast<size_t>(i) * fo + o];
      db[o] = acc;
    }
    if (din.data != nullptr) cpu::gemm<T>(false, false, n, fi, fo, T(1), dout.data, fo, w, fi, T(0), din.data, fi);
  }
};

}  // namespace

template <typename T>
std::unique_ptr<Layer<T>> make_linear_cpu(const LayerConfig& c, int index, Dims in) {
  return std::make_unique<LinearCpu<T>>(c, index, in);
}
template std::unique_ptr<Layer<float>> make_linear_cpu<float>(const LayerConfig&, int, Dims);
template std::unique_ptr<Layer<double>> make_linear_cpu<double>(const LayerConfig&, int, Dims);

}  // namespace dptrain
