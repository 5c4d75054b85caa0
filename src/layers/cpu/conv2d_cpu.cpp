// Conv2d on the CPU: im2col of a chunk of samples side by side, then one GEMM per chunk, so the
// GEMMs are large enough for OpenBLAS to run near peak. Columns of sample j of a chunk occupy
// columns [j*P, (j+1)*P) of the column matrix (P = output positions).
#include <omp.h>

#include <algorithm>
#include <cstring>

#include "core/buffer.h"
#include "cpu/gemm.h"
#include "cpu/im2col.h"
#include "layers/conv2d.h"
#include "layers/cpu/cpu_layers.h"

namespace dptrain {

namespace {

template <typename T>
class Conv2dCpu final : public Conv2dLayer<T> {
 public:
  using Conv2dLayer<T>::Conv2dLayer;

  void reserve(DeviceContext&, int max_batch) override {
    const cpu::ConvGeometry g = geometry();
    chunk_ = std::max(1, std::min(max_batch, kChunk));
    const size_t cols = static_cast<size_t>(g.col_rows()) * g.col_cols() * chunk_;
    col_ = Buffer<T>(Device::Cpu, cols);
    gathered_ = Buffer<T>(Device::Cpu, static_cast<size_t>(this->out_channels()) * g.col_cols() * chunk_);
  }

  void forward(DeviceContext&, TensorView<const T> in, TensorView<T> out, Phase, const StepInfo&) override {
    const cpu::ConvGeometry g = geometry();
    const int oc = this->out_channels(), kk = g.col_rows(), P = g.col_cols();
    const T* w = this->params()[0].value.data();
    const T* b = this->params()[1].value.data();
    for (int n0 = 0; n0 < in.n; n0 += chunk_) {
      const int nb = std::min(chunk_, in.n - n0);
      const int ld = nb * P;
      lower(g, in, n0, nb, ld);
      // gathered[oc, nb*P] = W[oc, kk] * col[kk, nb*P]
      cpu::gemm<T>(false, false, oc, ld, kk, T(1), w, kk, col_.data(), ld, T(0), gathered_.data(), ld);
#pragma omp parallel for collapse(2) schedule(static)
      for (int j = 0; j < nb; ++j)
        for (int o = 0; o < oc; ++o) {
          const T* src = gathered_.data() + static_cast<size_t>(o) * ld + static_cast<size_t>(j) * P;
          T* dst = out.data + (static_cast<size_t>(n0 + j) * oc + o) * P;
          for (int p = 0; p < P; ++p) dst[p] = src[p] + b[o];
        }
    }
  }

  void backward(DeviceContext&, TensorView<const T> in, TensorView<const T>, TensorView<const T> dout,
                TensorView<T> din) override {
    const cpu::ConvGeometry g = geometry();
    const int oc = this->out_channels(), kk = g.col_rows(), P = g.col_cols();
    const T* w = this->params()[0].value.data();
    T* dw = this->params()[0].grad.data();
    T* db = this->params()[1].grad.data();
#pragma omp parallel for schedule(static)
    for (int o = 0; o < oc; ++o) {
      T acc = 0;
      for (int n = 0; n < in.n; ++n) {
        const T* src = dout.data + (static_cast<size_t>(n) * oc + o) * P;
        for (int p = 0; p < P; ++p) acc += src[p];
      }
      db[o] = acc;
    }
    for (int n0 = 0; n0 < in.n; n0 += chunk_) {
      const int nb = std::min(chunk_, in.n - n0);
      const int ld = nb * P;
#pragma omp parallel for collapse(2) schedule(static)
      for (int j = 0; j < nb; ++j)
        for (int o = 0; o < oc; ++o)
          std::memcpy(gathered_.data() + static_cast<size_t>(o) * ld + static_cast<size_t>(j) * P,
                      dout.data + (static_cast<size_t>(n0 + j) * oc + o) * P, sizeof(T) * P);
      lower(g, in, n0, nb, ld);
      // dW[oc, kk] (+)= dout[oc, nb*P] * col[kk, nb*P]^T
      cpu::gemm<T>(false, true, oc, kk, ld, T(1), gathered_.data(), ld, col_.data(), ld, n0 == 0 ? T(0) : T(1), dw, kk);
      if (din.data == nullptr) continue;
      // dcol[kk, nb*P] = W[oc, kk]^T * dout[oc, nb*P], then scattered back per sample.
      cpu::gemm<T>(true, false, kk, ld, oc, T(1), w, kk, gathered_.data(), ld, T(0), col_.data(), ld);
      const size_t sample = static_cast<size_t>(in.dims.count());
#pragma omp parallel for schedule(static)
      for (int j = 0; j < nb; ++j) {
        T* image = din.data + static_cast<size_t>(n0 + j) * sample;
        std::memset(image, 0, sizeof(T) * sample);
        cpu::col2im(g, col_.data() + static_cast<size_t>(j) * P, ld, image);
      }
    }
  }

 private:
  static constexpr int kChunk = 16;

  cpu::ConvGeometry geometry() const {
    const Dims in = this->input_dims(), out = this->output_dims();
    return {in.c, in.h, in.w, this->kernel(), this->stride(), this->padding(), out.h, out.w};
  }

  /// im2col of samples [n0, n0 + nb) side by side into col_ (row stride ld).
  void lower(const cpu::ConvGeometry& g, TensorView<const T> in, int n0, int nb, int ld) {
    const size_t sample = static_cast<size_t>(in.dims.count());
#pragma omp parallel for schedule(static)
    for (int j = 0; j < nb; ++j)
      cpu::im2col(g, in.data + static_cast<size_t>(n0 + j) * sample, col_.data() + static_cast<size_t>(j) * g.col_cols(), ld);
  }

  int chunk_ = 1;
  Buffer<T> col_;
  Buffer<T> gathered_;
};

}  // namespace

template <typename T>
std::unique_ptr<Layer<T>> make_conv2d_cpu(const LayerConfig& c, int index, Dims in) {
  return std::make_unique<Conv2dCpu<T>>(c, index, in);
}
template std::unique_ptr<Layer<float>> make_conv2d_cpu<float>(const LayerConfig&, int, Dims);
template std::unique_ptr<Layer<double>> make_conv2d_cpu<double>(const LayerConfig&, int, Dims);

}  // namespace dptrain
