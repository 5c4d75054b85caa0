// The CPU reference of batchnorm2d / batchnorm1d (layers/batchnorm.h), float and double (the
// gradient checker). Sums run in double in a fixed order (group, then sample, then position), so a
// rank's results never depend on threads; only the cross-rank sums (sync mode, running
// statistics) round in float.
#include <cmath>
#include <vector>

#include "layers/batchnorm.h"
#include "layers/cpu/cpu_layers.h"

namespace dptrain {

namespace {

template <typename T>
class BatchNormCpu final : public BatchNormLayer<T> {
 public:
  using BatchNormLayer<T>::BatchNormLayer;

  void reserve(DeviceContext&, int max_batch) override {
    const size_t c = static_cast<size_t>(this->channels());
    const size_t groups = static_cast<size_t>(this->groups(std::max(max_batch, 1)));
    mean_.assign(groups * c, 0.0);
    invstd_.assign(groups * c, 0.0);
    partial_.assign(2 * c + 1, 0.0);
  }

  void forward(DeviceContext& ctx, TensorView<const T> in, TensorView<T> out, Phase phase, const StepInfo&) override {
    const int C = this->channels(), S = this->spatial(), n = in.n;
    const T* w = this->params()[0].value.data();
    const T* b = this->params()[1].value.data();
    if (phase == Phase::Eval) {
      const T* rm = this->state()[0].data();
      const T* rv = this->state()[1].data();
      for (int c = 0; c < C; ++c) {
        const double inv = 1.0 / std::sqrt(static_cast<double>(rv[c]) + this->eps());
        const double scale = inv * static_cast<double>(w[c]);
        const double shift = static_cast<double>(b[c]) - static_cast<double>(rm[c]) * scale;
        for (int i = 0; i < n; ++i)
          for (int s = 0; s < S; ++s) {
            const size_t k = (static_cast<size_t>(i) * C + c) * S + s;
            out.data[k] = static_cast<T>(static_cast<double>(in.data[k]) * scale + shift);
          }
      }
      return;
    }
    compute_statistics(ctx, in.data, n);
    for (int g = 0; g < this->groups(n); ++g)
      for (int c = 0; c < C; ++c) {
        const double mean = mean_[static_cast<size_t>(g) * C + c], inv = invstd_[static_cast<size_t>(g) * C + c];
        for (int i = this->group_first(g); i < this->group_first(g) + this->group_count(g, n); ++i)
          for (int s = 0; s < S; ++s) {
            const size_t k = (static_cast<size_t>(i) * C + c) * S + s;
            out.data[k] = static_cast<T>((static_cast<double>(in.data[k]) - mean) * inv * static_cast<double>(w[c]) +
                                         static_cast<double>(b[c]));
          }
      }
  }

  void backward(DeviceContext& ctx, TensorView<const T> in, TensorView<const T>, TensorView<const T> dout,
                TensorView<T> din) override {
    const int C = this->channels(), S = this->spatial(), n = in.n;
    const T* w = this->params()[0].value.data();
    T* dw = this->params()[0].grad.data();
    T* db = this->params()[1].grad.data();
    std::vector<double> sdy(static_cast<size_t>(C)), sdyx(static_cast<size_t>(C));
    std::vector<double> dw_sum(static_cast<size_t>(C), 0.0), db_sum(static_cast<size_t>(C), 0.0);
    for (int g = 0; g < this->groups(n); ++g) {
      const int first = this->group_first(g), count = this->group_count(g, n);
      for (int c = 0; c < C; ++c) {
        const double mean = mean_[static_cast<size_t>(g) * C + c], inv = invstd_[static_cast<size_t>(g) * C + c];
        double a = 0, bsum = 0;
        for (int i = first; i < first + count; ++i)
          for (int s = 0; s < S; ++s) {
            const size_t k = (static_cast<size_t>(i) * C + c) * S + s;
            const double dy = static_cast<double>(dout.data[k]);
            a += dy;
            bsum += dy * (static_cast<double>(in.data[k]) - mean) * inv;
          }
        sdy[static_cast<size_t>(c)] = a, sdyx[static_cast<size_t>(c)] = bsum;
        dw_sum[static_cast<size_t>(c)] += bsum, db_sum[static_cast<size_t>(c)] += a;
      }
      // Sync: the normalisation's gradient needs the sums over the global batch; the parameter
      // gradients stay this rank's (the gradient exchange sums them).
      double m = static_cast<double>(count) * S;
      if (this->sync()) {
        std::vector<double> both(sdy);
        both.insert(both.end(), sdyx.begin(), sdyx.end());
        both.push_back(m);
        cross_sum(ctx, both);
        for (int c = 0; c < C; ++c) sdy[static_cast<size_t>(c)] = both[static_cast<size_t>(c)], sdyx[static_cast<size_t>(c)] = both[static_cast<size_t>(C + c)];
        m = both[static_cast<size_t>(2 * C)];
      }
      if (din.data == nullptr) continue;
      for (int c = 0; c < C; ++c) {
        const double mean = mean_[static_cast<size_t>(g) * C + c], inv = invstd_[static_cast<size_t>(g) * C + c];
        const double a = sdy[static_cast<size_t>(c)] / m, bb = sdyx[static_cast<size_t>(c)] / m;
        for (int i = first; i < first + count; ++i)
          for (int s = 0; s < S; ++s) {
            const size_t k = (static_cast<size_t>(i) * C + c) * S + s;
            const double xhat = (static_cast<double>(in.data[k]) - mean) * inv;
            din.data[k] = static_cast<T>(static_cast<double>(w[c]) * inv * (static_cast<double>(dout.data[k]) - a - xhat * bb));
          }
      }
    }
    for (int c = 0; c < C; ++c) dw[c] = static_cast<T>(dw_sum[static_cast<size_t>(c)]), db[c] = static_cast<T>(db_sum[static_cast<size_t>(c)]);
  }

  void idle_pass(DeviceContext& ctx, bool forward) override {
    if (forward) {
      compute_statistics(ctx, nullptr, 0);
    } else if (this->sync()) {
      std::vector<double> zeros(static_cast<size_t>(2 * this->channels() + 1), 0.0);
      cross_sum(ctx, zeros);
    }
  }

  void end_train_step(DeviceContext& ctx) override {
    const int C = this->channels();
    if (!this->sync()) cross_sum(ctx, partial_);  // every rank's groups; sync's are global already
    const double groups = partial_[static_cast<size_t>(2 * C)];
    T* rm = this->state()[0].data();
    T* rv = this->state()[1].data();
    T* tracked = this->state()[2].data();
    const double mom = this->momentum();
    if (groups > 0)
      for (int c = 0; c < C; ++c) {
        rm[c] = static_cast<T>((1.0 - mom) * static_cast<double>(rm[c]) + mom * partial_[static_cast<size_t>(c)] / groups);
        rv[c] = static_cast<T>((1.0 - mom) * static_cast<double>(rv[c]) + mom * partial_[static_cast<size_t>(C + c)] / groups);
      }
    tracked[0] += T(1);
  }

 private:
  /// Per group: mean and 1/sqrt(biased var + eps) into mean_ / invstd_; the step's running-stat
  /// partials (sum over groups of mean and unbiased var, group count) into partial_. n = 0: an
  /// idle rank (zero partials; sync still joins both sums).
  void compute_statistics(DeviceContext& ctx, const T* x, int n) {
    const int C = this->channels(), S = this->spatial();
    std::fill(partial_.begin(), partial_.end(), 0.0);
    const int groups = n == 0 ? (this->sync() ? 1 : 0) : this->groups(n);
    for (int g = 0; g < groups; ++g) {
      const int first = this->group_first(g), count = n == 0 ? 0 : this->group_count(g, n);
      std::vector<double> sums(static_cast<size_t>(C + 1), 0.0);
      for (int c = 0; c < C; ++c)
        for (int i = first; i < first + count; ++i)
          for (int s = 0; s < S; ++s) sums[static_cast<size_t>(c)] += static_cast<double>(x[(static_cast<size_t>(i) * C + c) * S + s]);
      sums[static_cast<size_t>(C)] = static_cast<double>(count) * S;
      if (this->sync()) cross_sum(ctx, sums);
      const double m = sums[static_cast<size_t>(C)];
      std::vector<double> sq(static_cast<size_t>(C), 0.0);
      for (int c = 0; c < C; ++c) {
        const double mean = m > 0 ? sums[static_cast<size_t>(c)] / m : 0.0;
        mean_[static_cast<size_t>(g) * C + c] = mean;
        for (int i = first; i < first + count; ++i)
          for (int s = 0; s < S; ++s) {
            const double d = static_cast<double>(x[(static_cast<size_t>(i) * C + c) * S + s]) - mean;
            sq[static_cast<size_t>(c)] += d * d;
          }
      }
      if (this->sync()) cross_sum(ctx, sq);
      for (int c = 0; c < C; ++c) {
        const double var = m > 0 ? sq[static_cast<size_t>(c)] / m : 0.0;
        if (n > 0) invstd_[static_cast<size_t>(g) * C + c] = 1.0 / std::sqrt(var + this->eps());
        partial_[static_cast<size_t>(c)] += mean_[static_cast<size_t>(g) * C + c];
        partial_[static_cast<size_t>(C + c)] += m > 1 ? var * m / (m - 1) : var;
      }
      partial_[static_cast<size_t>(2 * C)] += 1;
    }
  }

  /// Sums `v` over the ranks (in float, as the communicator does); nothing on one rank.
  void cross_sum(DeviceContext& ctx, std::vector<double>& v) {
    if (!this->exchanges()) return;
    std::vector<float> f(v.begin(), v.end());
    this->cross_->sum(ctx, std::span<float>(f));
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<double>(f[i]);
  }

  std::vector<double> mean_, invstd_, partial_;
};

}  // namespace

template <typename T>
std::unique_ptr<Layer<T>> make_batchnorm2d_cpu(const LayerConfig& c, int index, Dims in) {
  return std::make_unique<BatchNormCpu<T>>("batchnorm2d", c, index, in);
}
template <typename T>
std::unique_ptr<Layer<T>> make_batchnorm1d_cpu(const LayerConfig& c, int index, Dims in) {
  return std::make_unique<BatchNormCpu<T>>("batchnorm1d", c, index, in);
}

template std::unique_ptr<Layer<float>> make_batchnorm2d_cpu<float>(const LayerConfig&, int, Dims);
template std::unique_ptr<Layer<double>> make_batchnorm2d_cpu<double>(const LayerConfig&, int, Dims);
template std::unique_ptr<Layer<float>> make_batchnorm1d_cpu<float>(const LayerConfig&, int, Dims);
template std::unique_ptr<Layer<double>> make_batchnorm1d_cpu<double>(const LayerConfig&, int, Dims);

}  // namespace dptrain
