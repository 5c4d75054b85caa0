// MaxPool2d on the CPU. Forward records, per output, the input offset of the first maximum of its
// window; backward routes each output gradient there.
#include <algorithm>
#include <limits>
#include <utility>

#include "core/buffer.h"
#include "layers/cpu/cpu_layers.h"
#include "layers/maxpool2d.h"

namespace dptrain {

namespace {

template <typename T>
class MaxPool2dCpu final : public MaxPool2dLayer<T> {
 public:
  using MaxPool2dLayer<T>::MaxPool2dLayer;

  void reserve(DeviceContext&, int max_batch) override {
    argmax_ = Buffer<int32_t>(Device::Cpu, static_cast<size_t>(max_batch) * this->output_dims().count());
  }

  void forward(DeviceContext&, TensorView<const T> in, TensorView<T> out, Phase, const StepInfo&) override {
    const Dims id = this->input_dims(), od = this->output_dims();
    const int k = this->kernel(), s = this->stride(), pad = this->padding();
#pragma omp parallel for schedule(static)
    for (long plane = 0; plane < static_cast<long>(in.n) * id.c; ++plane) {
      const T* src = in.data + plane * id.h * id.w;
      T* dst = out.data + plane * od.h * od.w;
      int32_t* arg = argmax_.data() + plane * od.h * od.w;
      for (int oy = 0; oy < od.h; ++oy)
        for (int ox = 0; ox < od.w; ++ox) {
          const int y0 = oy * s - pad, x0 = ox * s - pad;
          const bool inside = y0 >= 0 && x0 >= 0 && y0 + k <= id.h && x0 + k <= id.w;
          const auto [best, where] = inside ? interior_max(src, id.w, k, y0, x0) : border_max(src, id, k, y0, x0);
          dst[oy * od.w + ox] = best;
          arg[oy * od.w + ox] = where;
        }
    }
  }

  void backward(DeviceContext&, TensorView<const T> in, TensorView<const T>, TensorView<const T> dout,
                TensorView<T> din) override {
    if (din.data == nullptr) return;
    const Dims id = this->input_dims(), od = this->output_dims();
#pragma omp parallel for schedule(static)
    for (long plane = 0; plane < static_cast<long>(in.n) * id.c; ++plane) {
      T* dst = din.data + plane * id.h * id.w;
      for (int i = 0; i < id.h * id.w; ++i) dst[i] = T(0);
      const T* g = dout.data + plane * od.h * od.w;
      const int32_t* arg = argmax_.data() + plane * od.h * od.w;
      for (int i = 0; i < od.h * od.w; ++i) dst[arg[i]] += g[i];
    }
  }

 private:
  /// The first maximum of a window that lies wholly inside the plane. Selects instead of branches:
  /// which element wins is data-dependent and would defeat the branch predictor.
  static std::pair<T, int32_t> interior_max(const T* src, int width, int k, int y0, int x0) {
    int32_t where = y0 * width + x0;
    T best = src[where];
    for (int ky = 0; ky < k; ++ky)
      for (int kx = 0; kx < k; ++kx) {
        const int32_t at = (y0 + ky) * width + x0 + kx;
        const bool take = src[at] > best;
        best = take ? src[at] : best;
        where = take ? at : where;
      }
    return {best, where};
  }

  /// The first maximum of the window's elements inside the plane (padding never wins).
  static std::pair<T, int32_t> border_max(const T* src, Dims id, int k, int y0, int x0) {
    T best = -std::numeric_limits<T>::infinity();
    int32_t where = -1;
    for (int y = std::max(y0, 0); y < std::min(y0 + k, id.h); ++y)
      for (int x = std::max(x0, 0); x < std::min(x0 + k, id.w); ++x) {
        const T v = src[y * id.w + x];
        if (v > best || where < 0) best = v, where = y * id.w + x;
      }
    return {best, where};
  }

  Buffer<int32_t> argmax_;
};

}  // namespace

template <typename T>
std::unique_ptr<Layer<T>> make_maxpool2d_cpu(const LayerConfig& c, int index, Dims in) {
  return std::make_unique<MaxPool2dCpu<T>>(c, index, in);
}
template std::unique_ptr<Layer<float>> make_maxpool2d_cpu<float>(const LayerConfig&, int, Dims);
template std::unique_ptr<Layer<double>> make_maxpool2d_cpu<double>(const LayerConfig&, int, Dims);

}  // namespace dptrain
