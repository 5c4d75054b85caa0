// Average pooling on the CPU (layers/avgpool2d.h): avgpool2d and global_avgpool. Forward sums each
// window's elements inside the plane (padding adds zeros) and divides by kh x kw; backward gives
// each input element the sum of dy over the windows that hold it, divided likewise (a gather, the
// order the CUDA kernel uses).
#include <algorithm>

#include "layers/avgpool2d.h"
#include "layers/cpu/cpu_layers.h"

namespace dptrain {

namespace {

template <typename T>
class AvgPoolCpu final : public AvgPoolLayer<T> {
 public:
  using AvgPoolLayer<T>::AvgPoolLayer;

  void forward(DeviceContext&, TensorView<const T> in, TensorView<T> out, Phase, const StepInfo&) override {
    const Dims id = this->input_dims(), od = this->output_dims();
    const AvgPoolWindow w = this->window();
    const T divisor = static_cast<T>(w.kh * w.kw);
#pragma omp parallel for schedule(static)
    for (long plane = 0; plane < static_cast<long>(in.n) * id.c; ++plane) {
      const T* src = in.data + plane * id.h * id.w;
      T* dst = out.data + plane * od.h * od.w;
      for (int oy = 0; oy < od.h; ++oy)
        for (int ox = 0; ox < od.w; ++ox) {
          const int y0 = oy * w.stride - w.pad, x0 = ox * w.stride - w.pad;
          T sum = 0;
          for (int y = std::max(y0, 0); y < std::min(y0 + w.kh, id.h); ++y)
            for (int x = std::max(x0, 0); x < std::min(x0 + w.kw, id.w); ++x) sum += src[y * id.w + x];
          dst[oy * od.w + ox] = sum / divisor;
        }
    }
  }

  void backward(DeviceContext&, TensorView<const T> in, TensorView<const T>, TensorView<const T> dout,
                TensorView<T> din) override {
    if (din.data == nullptr) return;
    const Dims id = this->input_dims(), od = this->output_dims();
    const AvgPoolWindow w = this->window();
    const T divisor = static_cast<T>(w.kh * w.kw);
#pragma omp parallel for schedule(static)
    for (long plane = 0; plane < static_cast<long>(in.n) * id.c; ++plane) {
      const T* g = dout.data + plane * od.h * od.w;
      T* dst = din.data + plane * id.h * id.w;
      for (int y = 0; y < id.h; ++y)
        for (int x = 0; x < id.w; ++x) {
          // Windows oy with oy*stride - pad <= y < oy*stride - pad + kh (likewise for x).
          const int oy0 = std::max(0, ceil_div(y + w.pad - w.kh + 1, w.stride)), oy1 = std::min(od.h - 1, (y + w.pad) / w.stride);
          const int ox0 = std::max(0, ceil_div(x + w.pad - w.kw + 1, w.stride)), ox1 = std::min(od.w - 1, (x + w.pad) / w.stride);
          T sum = 0;
          for (int oy = oy0; oy <= oy1; ++oy)
            for (int ox = ox0; ox <= ox1; ++ox) sum += g[oy * od.w + ox];
          dst[y * id.w + x] = sum / divisor;
        }
    }
  }

 private:
  /// ceil(a / b) for b > 0 and any a (C++ division truncates toward zero).
  static int ceil_div(int a, int b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }
};

}  // namespace

template <typename T>
std::unique_ptr<Layer<T>> make_avgpool2d_cpu(const LayerConfig& c, int index, Dims in) {
  return std::make_unique<AvgPoolCpu<T>>("avgpool2d", c, index, in);
}
template <typename T>
std::unique_ptr<Layer<T>> make_global_avgpool_cpu(const LayerConfig& c, int index, Dims in) {
  return std::make_unique<AvgPoolCpu<T>>("global_avgpool", c, index, in);
}
template std::unique_ptr<Layer<float>> make_avgpool2d_cpu<float>(const LayerConfig&, int, Dims);
template std::unique_ptr<Layer<double>> make_avgpool2d_cpu<double>(const LayerConfig&, int, Dims);
template std::unique_ptr<Layer<float>> make_global_avgpool_cpu<float>(const LayerConfig&, int, Dims);
template std::unique_ptr<Layer<double>> make_global_avgpool_cpu<double>(const LayerConfig&, int, Dims);

}  // namespace dptrain
