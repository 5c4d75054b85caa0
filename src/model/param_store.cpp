#include "model/param_store.h"

#include <cmath>
#include <stdexcept>

#include "core/philox.h"
#include "model/aligned_layout.h"

namespace dptrain {

template <typename T>
ParamStore<T>::ParamStore(Device device, std::vector<ParamEntry> entries) : entries_(std::move(entries)) {
  const size_t offset = lay_out_aligned(entries_, kAlign);
  values_ = Buffer<T>(device, offset);
  grads_ = Buffer<T>(device, offset);
  values_.zero();
  grads_.zero();
}

template <typename T>
int ParamStore<T>::find(const std::string& name) const {
  for (size_t i = 0; i < entries_.size(); ++i)
    if (entries_[i].name == name) return static_cast<int>(i);
  return -1;
}

template <typename T>
ParamView<T> ParamStore<T>::view(size_t entry) {
  const ParamEntry& e = entries_.at(entry);
  return {values_.span().subspan(e.offset, e.count), grads_.span().subspan(e.offset, e.count)};
}

namespace {

/// Writes entry `param_index`'s default initial values to out[0, count): element i is a function of
/// (seed, param_index, i) alone, so threads may share the work without changing a bit. Large
/// entries (mnist_cnn's fc1: 1.2M of its 1.2M parameters) are split over OpenMP's threads: one
/// thread takes about 20 ms of a GPU run's start-up for them.
template <typename T>
void default_init_into(T* out, uint64_t seed, uint32_t param_index, size_t count, int64_t fan_in) {
  // kaiming_uniform_(a=sqrt(5)): gain = sqrt(2 / (1 + 5)), bound = gain * sqrt(3 / fan_in) = 1/sqrt(fan_in);
  // the bias rule U(+-1/sqrt(fan_in)) gives the same bound.
  const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
  const auto n = static_cast<int64_t>(count);
#pragma omp parallel for schedule(static) if (n >= 65536)
  for (int64_t i = 0; i < n; ++i)
    out[i] = static_cast<T>((2.0 * philox::init_uniform(seed, param_index, static_cast<uint64_t>(i)) - 1.0) * bound);
}

}  // namespace

std::vector<double> default_init_values(uint64_t seed, uint32_t param_index, size_t count, int64_t fan_in) {
  std::vector<double> out(count);
  default_init_into(out.data(), seed, param_index, count, fan_in);
  return out;
}

template <typename T>
void ParamStore<T>::initialize(uint64_t seed) {
  std::vector<T> host(values_.size(), T(0));
  for (size_t k = 0; k < entries_.size(); ++k) {
    const ParamEntry& e = entries_[k];
    if (e.init == ParamInit::Ones || e.init == ParamInit::Zeros) {  // batchnorm's affine weight and bias
      for (size_t i = 0; i < e.count; ++i) host[e.offset + i] = e.init == ParamInit::Ones ? T(1) : T(0);
      continue;
    }
    default_init_into(host.data() + e.offset, seed, static_cast<uint32_t>(k), e.count, e.fan_in);
  }
  values_.copy_from_host(host);
  grads_.zero();
}

template class ParamStore<float>;
template class ParamStore<double>;

}  // namespace dptrain
