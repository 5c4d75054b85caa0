// MaxPool2d on the CPU. Forward records, per output, the input offset of the first maximum of its
// window; backward routes each output gradient there.
#include <limits>

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
          T best = -std::numeric_limits<T>::infinity();
          int32_t where = -1;
          for (int ky = 0; ky < k; ++ky) {
            const int y = oy * s - pad + ky;
            if (y < 0 || y >= id.h) continue;
            for (int kx = 0; kx < k; ++kx) {
              const int x = ox * s - pad + kx;
              if (x < 0 || x >= id.w) continue;
              const T v = src[y * id.w + x];
              if (v > best || where < 0) best = v, where = y * id.w + x;
            }
          }
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
