#include "train/train_state.h"

#include "core/device_ops.h"

namespace dptrain {

namespace {

std::vector<NamedTensor> views_of(const ParamStore<float>& params, const std::vector<float>& flat,
                                  const std::string& slot) {
  std::vector<NamedTensor> tensors;
  for (const ParamEntry& e : params.entries()) {
    const std::string name = slot.empty() ? e.name : optimizer_tensor_name(e.name, slot);
    tensors.push_back({name, e.shape, std::span<const float>(flat).subspan(e.offset, e.count)});
  }
  return tensors;
}

}  // namespace

std::vector<NamedTensor> state_tensors(const StateStore<float>& state, const std::vector<float>& flat) {
  std::vector<NamedTensor> tensors;
  for (const StateEntry& e : state.entries())
    tensors.push_back({e.name, e.shape, std::span<const float>(flat).subspan(e.offset, e.count), e.integer});
  return tensors;
}

template <typename File>
void restore_state_tensors(const File& file, DeviceContext& ctx, StateStore<float>& state) {
  if (state.size() == 0) return;
  std::vector<float> host(state.size(), 0.0f);
  for (const StateEntry& e : state.entries())
    file.copy_state_tensor(e.name, e.shape, std::span<float>(host).subspan(e.offset, e.count));
  upload(ctx, state.values().span(), std::span<const float>(host));
}
template void restore_state_tensors<LoadedCheckpoint>(const LoadedCheckpoint&, DeviceContext&, StateStore<float>&);
template void restore_state_tensors<LoadedWeights>(const LoadedWeights&, DeviceContext&, StateStore<float>&);

TrainStateSnapshot::TrainStateSnapshot(DeviceContext& ctx, const ParamStore<float>& params,
                                       const StateStore<float>& state, Optimizer& optimizer)
    : params_(params.size()), state_(state.size()) {
  download(ctx, std::span<const float>(params.values().span()), std::span<float>(params_));
  download(ctx, std::span<const float>(state.values().span()), std::span<float>(state_));
  model_ = views_of(params, params_, "");
  for (NamedTensor& t : state_tensors(state, state_)) model_.push_back(std::move(t));
  const std::vector<std::string> slots = optimizer.slot_names();
  slots_.resize(slots.size(), std::vector<float>(params.size()));  // sized before any view is taken
  for (size_t i = 0; i < slots.size(); ++i) {
    download(ctx, std::span<const float>(optimizer.slot(i).span()), std::span<float>(slots_[i]));
    for (NamedTensor& t : views_of(params, slots_[i], slots[i])) optimizer_.push_back(std::move(t));
  }
}

void restore_train_state(const LoadedCheckpoint& checkpoint, DeviceContext& ctx, ParamStore<float>& params,
                         StateStore<float>& state, Optimizer& optimizer) {
  const std::vector<std::string> slots = optimizer.slot_names();
  std::vector<std::string> names;
  for (const ParamEntry& e : params.entries()) {
    names.push_back(e.name);
    for (const std::string& slot : slots) names.push_back(optimizer_tensor_name(e.name, slot));
  }
  for (const StateEntry& e : state.entries()) names.push_back(e.name);
  checkpoint.check_tensor_names(names);
  restore_state_tensors(checkpoint, ctx, state);
  // Padding stays zero: the host image starts zeroed and only the tensors are filled in.
  std::vector<float> host(params.size(), 0.0f);
  for (const ParamEntry& e : params.entries())
    checkpoint.copy_tensor(e.name, e.shape, std::span<float>(host).subspan(e.offset, e.count));
  upload(ctx, params.values().span(), std::span<const float>(host));
  for (size_t i = 0; i < slots.size(); ++i) {
    std::fill(host.begin(), host.end(), 0.0f);
    for (const ParamEntry& e : params.entries())
      checkpoint.copy_tensor(optimizer_tensor_name(e.name, slots[i]), e.shape,
                             std::span<float>(host).subspan(e.offset, e.count));
    upload(ctx, optimizer.slot(i).span(), std::span<const float>(host));
  }
}

}  // namespace dptrain
