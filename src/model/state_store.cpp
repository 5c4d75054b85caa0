#include "model/state_store.h"

#include "model/aligned_layout.h"

namespace dptrain {

template <typename T>
StateStore<T>::StateStore(Device device, std::vector<StateEntry> entries) : entries_(std::move(entries)) {
  const size_t offset = lay_out_aligned(entries_, kAlign);
  values_ = Buffer<T>(device, offset);
  initialize();
}

template <typename T>
std::span<T> StateStore<T>::view(size_t entry) {
  const StateEntry& e = entries_.at(entry);
  return values_.span().subspan(e.offset, e.count);
}

template <typename T>
std::vector<T> StateStore<T>::initial_values() const {
  std::vector<T> host(values_.size(), T(0));
  for (const StateEntry& e : entries_)
    if (e.init == ParamInit::Ones)
      for (size_t i = 0; i < e.count; ++i) host[e.offset + i] = T(1);
  return host;
}

template <typename T>
void StateStore<T>::initialize() {
  if (values_.size() == 0) return;
  values_.copy_from_host(initial_values());
}

template class StateStore<float>;
template class StateStore<double>;

}  // namespace dptrain
