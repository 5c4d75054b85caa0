// Conv2d on the CPU, sample by sample (Caffe's formulation): im2col of one sample into a per-thread
// column matrix small enough to stay in the core's L2 cache, then one GEMM straight into that
// sample's output. Threads take whole samples, so every GEMM runs single-threaded near peak.
//
// Filter gradients sum over the batch in fixed groups of kGroup samples whatever the thread count,
// so the result does not depend on how many threads ran it.
#include <omp.h>

#include <algorithm>
#include <cstring>

#include "core/buffer.h"
#include "cpu/gemm.h"
#include "cpu/im2col.h"
#include "cpu/sum.h"
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
    threads_ = std::max(1, omp_get_max_threads());
    col_ = Buffer<T>(Device::Cpu, static_cast<size_t>(threads_) * col_size(g));
    const size_t groups = static_cast<size_t>((max_batch + kGroup - 1) / kGroup);
    dw_groups_ = Buffer<T>(Device::Cpu, groups * this->params()[0].value.size());
  }

  void forward(DeviceContext&, TensorView<const T> in, TensorView<T> out, Phase, const StepInfo&) override {
    const cpu::ConvGeometry g = geometry();
    const int oc = this->out_channels(), kk = g.col_rows(), P = g.col_cols();
    const T* w = this->params()[0].value.data();
    const T* b = this->params()[1].value.data();
#pragma omp parallel for schedule(static) num_threads(team())
    for (int n = 0; n < in.n; ++n) {
      T* col = lower(g, in, n);
      T* y = out.data + static_cast<size_t>(n) * oc * P;
      // y[oc, P] = W[oc, kk] * col[kk, P] + b, the bias added while y is still in cache.
      cpu::gemm_on_this_thread<T>(false, false, oc, P, kk, T(1), w, kk, col, P, T(0), y, P);
      for (int o = 0; o < oc; ++o)
        for (int p = 0; p < P; ++p) y[static_cast<size_t>(o) * P + p] += b[o];
    }
  }

  void backward(DeviceContext&, TensorView<const T> in, TensorView<const T>, TensorView<const T> dout,
                TensorView<T> din) override {
    const cpu::ConvGeometry g = geometry();
    const int oc = this->out_channels(), P = g.col_cols();
    T* db = this->params()[1].grad.data();
#pragma omp parallel for schedule(static) num_threads(team())
    for (int o = 0; o < oc; ++o) {
      T acc = 0;
      for (int n = 0; n < in.n; ++n) acc += cpu::sum(dout.data + (static_cast<size_t>(n) * oc + o) * P, P);
      db[o] = acc;
    }
    const int groups = (in.n + kGroup - 1) / kGroup;
#pragma omp parallel for schedule(static) num_threads(team())
    for (int group = 0; group < groups; ++group) backward_group(g, in, dout, din, group);
    sum_filter_gradient_groups(groups);
  }

 private:
  static constexpr int kGroup = 4;

  cpu::ConvGeometry geometry() const {
    const Dims in = this->input_dims(), out = this->output_dims();
    return {in.c, in.h, in.w, this->kernel(), this->stride(), this->padding(), out.h, out.w};
  }
  /// Threads for a parallel loop: the current setting, up to the column matrices reserved.
  int team() const { return std::min(threads_, omp_get_max_threads()); }
  static size_t col_size(const cpu::ConvGeometry& g) { return static_cast<size_t>(g.col_rows()) * g.col_cols(); }

  /// im2col of sample n into the calling thread's column matrix.
  T* lower(const cpu::ConvGeometry& g, TensorView<const T> in, int n) {
    T* col = col_.data() + static_cast<size_t>(omp_get_thread_num()) * col_size(g);
    cpu::im2col(g, in.data + static_cast<size_t>(n) * in.sample_size(), col, g.col_cols());
    return col;
  }

  /// The filter gradient of samples [group * kGroup, ...) into that group's slot, and their input
  /// gradients.
  void backward_group(const cpu::ConvGeometry& g, TensorView<const T> in, TensorView<const T> dout, TensorView<T> din,
                      int group) {
    const int oc = this->out_channels(), kk = g.col_rows(), P = g.col_cols();
    const T* w = this->params()[0].value.data();
    T* dw = dw_groups_.data() + static_cast<size_t>(group) * oc * kk;
    const int end = std::min(in.n, (group + 1) * kGroup);
    for (int n = group * kGroup; n < end; ++n) {
      const T* dy = dout.data + static_cast<size_t>(n) * oc * P;
      // Lowered again rather than kept from forward: keeping every sample's matrix (42 MB for
      // conv2 at batch 64) would go through DRAM, redoing it stays in this core's cache.
      T* col = lower(g, in, n);
      // dW_group[oc, kk] (+)= dy[oc, P] * col[kk, P]^T
      const T beta = n == group * kGroup ? T(0) : T(1);
      cpu::gemm_on_this_thread<T>(false, true, oc, kk, P, T(1), dy, P, col, P, beta, dw, kk);
      if (din.data == nullptr) continue;
      // dcol[kk, P] = W[oc, kk]^T * dy[oc, P], scattered back to the sample's pixels.
      cpu::gemm_on_this_thread<T>(true, false, kk, P, oc, T(1), w, kk, dy, P, T(0), col, P);
      T* image = din.data + static_cast<size_t>(n) * in.sample_size();
      std::memset(image, 0, sizeof(T) * in.sample_size());
      cpu::col2im(g, col, P, image);
    }
  }

  /// dW = the groups' filter gradients added in group order.
  void sum_filter_gradient_groups(int groups) {
    const long size = static_cast<long>(this->params()[0].grad.size());
    T* dw = this->params()[0].grad.data();
    const T* parts = dw_groups_.data();
#pragma omp parallel for schedule(static) num_threads(team())
    for (long i = 0; i < size; ++i) {
      T acc = parts[i];
      for (int group = 1; group < groups; ++group) acc += parts[static_cast<size_t>(group) * size + i];
      dw[i] = acc;
    }
  }

  int threads_ = 1;
  Buffer<T> col_;        ///< one column matrix per thread
  Buffer<T> dw_groups_;  ///< one filter gradient per group of kGroup samples
};

}  // namespace

template <typename T>
std::unique_ptr<Layer<T>> make_conv2d_cpu(const LayerConfig& c, int index, Dims in) {
  return std::make_unique<Conv2dCpu<T>>(c, index, in);
}
template std::unique_ptr<Layer<float>> make_conv2d_cpu<float>(const LayerConfig&, int, Dims);
template std::unique_ptr<Layer<double>> make_conv2d_cpu<double>(const LayerConfig&, int, Dims);

}  // namespace dptrain
