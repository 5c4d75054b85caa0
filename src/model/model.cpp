#include "model/model.h"

#include <algorithm>
#include <stdexcept>
#include <type_traits>
#include <string>
#include <utility>

#include "core/device_ops.h"
#include "core/error.h"
#include "layers/elementwise.h"
#include "layers/layer_factory.h"
#include "layers/maxpool2d.h"

namespace dptrain {

namespace {

template <typename T>
std::vector<ParamEntry> collect_params(const std::vector<std::unique_ptr<Layer<T>>>& layers) {
  std::vector<ParamEntry> entries;
  for (const auto& layer : layers) {
    for (const ParamSpec& spec : layer->param_specs()) {
      ParamEntry e;
      e.name = layer->name() + "." + spec.suffix;
      e.shape = spec.shape;
      e.init = spec.init;
      e.fan_in = spec.fan_in;
      e.layer = layer->index();
      entries.push_back(std::move(e));
    }
  }
  return entries;
}

template <typename T>
std::vector<StateEntry> collect_state(const std::vector<std::unique_ptr<Layer<T>>>& layers) {
  std::vector<StateEntry> entries;
  for (const auto& layer : layers)
    for (const StateSpec& spec : layer->state_specs())
      entries.push_back({layer->name() + "." + spec.suffix, spec.shape, 0, 0, spec.init, spec.integer, layer->index()});
  return entries;
}

}  // namespace

template <typename T>
Model<T>::Model(const ModelConfig& config, DeviceContext& ctx, int max_batch, double label_smoothing,
                bool with_backward)
    : input_(config.input), num_classes_(config.num_classes), max_batch_(max_batch),
      label_smoothing_(static_cast<T>(label_smoothing)), with_backward_(with_backward) {
  if (config.layers.empty()) throw InputError("model.layers", "the model has no layers");
  Dims dims = input_;
  for (size_t i = 0; i < config.layers.size(); ++i) {
    layers_.push_back(make_layer<T>(config.layers[i], static_cast<int>(i), dims, ctx.device()));
    dims = layers_.back()->output_dims();
  }
  if (dims.count() != num_classes_ || dims.h != 1 || dims.w != 1)
    throw InputError("model.layers", "the last layer ('" + layers_.back()->name() + "') produces " +
                                         to_string(dims) + " values per sample, but the loss needs " +
                                         std::to_string(num_classes_) + " class scores (Cx1x1)");
  loss_ = make_softmax_cross_entropy<T>(ctx.device(), label_smoothing);
  loss_->reserve(ctx, max_batch, num_classes_);
  for (size_t i = 0; i + 1 < layers_.size(); ++i)
    if (auto* relu = dynamic_cast<ReluLayer<T>*>(layers_[i + 1].get()))
      if (layers_[i]->absorb_following_relu(ctx)) relu->mark_absorbed();
  for (size_t i = 1; i < layers_.size(); ++i)
    if (auto* pool = dynamic_cast<MaxPool2dLayer<T>*>(layers_[i].get()))
      if (layers_[applier(i)]->absorb_following_pool(ctx, pool->spec())) pool->mark_absorbed();
  for (size_t i = 1; i < layers_.size(); ++i)
    if (auto* dropout = dynamic_cast<DropoutLayer<T>*>(layers_[i].get()))
      if (layers_[applier(i)]->absorb_following_dropout(ctx, dropout->spec())) dropout->mark_absorbed();

  params_ = ParamStore<T>(ctx.device(), collect_params(layers_));
  state_ = StateStore<T>(ctx.device(), collect_state(layers_));
  size_t entry = 0, state_entry = 0;
  for (size_t i = 0; i < layers_.size(); ++i) {
    Layer<T>& layer = *layers_[i];
    std::vector<ParamView<T>> views;
    for (size_t k = 0; k < layer.param_specs().size(); ++k) views.push_back(params_.view(entry++));
    layer.bind(std::move(views));
    std::vector<std::span<T>> state;
    for (size_t k = 0; k < layer.state_specs().size(); ++k) state.push_back(state_.view(state_entry++));
    layer.bind_state(std::move(state));
    layer.reserve(ctx, max_batch);
    // A view shares the buffers of the layer before it (the first layer's input is not ours).
    const bool view = i > 0 && layer.is_view();
    owner_.push_back(view ? owner_[i - 1] : i);
    const size_t count = view ? 0 : static_cast<size_t>(max_batch) * layer.output_dims().count();
    acts_.emplace_back(ctx.device(), count);
    act_grads_.emplace_back(ctx.device(), with_backward ? count : 0);  // forward-only: never written
  }
  if constexpr (std::is_same_v<T, float>)
    if (with_backward) fused_ = make_fused_train_step(config, params_.entries(), ctx, max_batch, label_smoothing);
  // Each layer's slice of the gradient buffer, padding included, so the slices tile the buffer.
  grad_ranges_.assign(layers_.size(), {0, 0});
  const auto& entries = params_.entries();
  for (size_t k = 0; k < entries.size(); ++k) {
    const size_t end = k + 1 < entries.size() ? entries[k + 1].offset : params_.size();
    auto& range = grad_ranges_[static_cast<size_t>(entries[k].layer)];
    if (range.second == 0) range.first = entries[k].offset;
    range.second = end;
  }
}

template <typename T>
size_t Model<T>::applier(size_t i) const {
  size_t before = i - 1;  // the layer whose kernels would apply layer i, past the ReLU and pooling it absorbed
  while (before > 0) {
    auto* relu = dynamic_cast<ReluLayer<T>*>(layers_[before].get());
    auto* pool = dynamic_cast<MaxPool2dLayer<T>*>(layers_[before].get());
    if (!(relu && relu->absorbed()) && !(pool && pool->absorbed())) break;
    --before;
  }
  return before;
}

template <typename T>
TensorView<T> Model<T>::activation(size_t i, int n) {
  return {acts_[owner_[i]].data(), n, layers_[i]->output_dims()};
}

template <typename T>
TensorView<T> Model<T>::activation_grad(size_t i, int n) {
  return {act_grads_[owner_[i]].data(), n, layers_[i]->output_dims()};
}

template <typename T>
void Model<T>::plan(DeviceContext& ctx, int batch, bool backward) {
  for (auto& layer : layers_) layer->plan(ctx, batch, backward);
  if (backward) plan_train_pass(ctx, batch);
}

template <typename T>
void Model<T>::plan_train_pass(DeviceContext& ctx, int batch) {
  if constexpr (std::is_same_v<T, float>) {
    if (!fused_ || !fused_->fits(batch) || observer_ != nullptr) return;
    const LayeredPass layered = [&](const float* x, const int32_t* labels, double* sums) {
      forward(ctx, TensorView<const float>{x, batch, input_}, Phase::Train, StepInfo{});
      loss(ctx, labels, 1.0f / static_cast<float>(batch), sums, true, nullptr);
    };
    const bool fused = plan_fused_pass(ctx, *fused_, batch, input_, params_.values().data(), params_.grads().data(),
                                       params_.entries(), layered);
    const auto at = std::lower_bound(fused_batches_.begin(), fused_batches_.end(), batch);
    const bool listed = at != fused_batches_.end() && *at == batch;
    if (fused && !listed) fused_batches_.insert(at, batch);
    if (!fused && listed) fused_batches_.erase(at);
  } else {
    (void)ctx;
    (void)batch;
  }
}

template <typename T>
bool Model<T>::runs_fused(int n) const {
  return fused_ && observer_ == nullptr && std::binary_search(fused_batches_.begin(), fused_batches_.end(), n);
}

template <typename T>
void Model<T>::train_pass(DeviceContext& ctx, TensorView<const T> input, const int32_t* labels, T grad_scale,
                          double* sums, GradientHook* hook, const StepInfo& step, const StepGather* gather) {
  if constexpr (std::is_same_v<T, float>) {
    if (runs_fused(input.n)) {
      if (input.n > max_batch_ || !(input.dims == input_))
        throw std::logic_error("Model::train_pass: a batch of " + std::to_string(input.n) + " x " +
                               to_string(input.dims));
      fused_->run(ctx, params_.values().data(), input.data, labels, input.n, grad_scale, params_.grads().data(), sums,
                  gather);
      last_input_ = input;
      last_n_ = input.n;
      if (hook == nullptr) return;
      for (size_t i = layers_.size(); i-- > 0;) {
        const auto [begin, end] = grad_ranges_[i];
        if (end > begin) hook->on_gradients_ready(ctx, begin, end);
      }
      hook->on_backward_done(ctx);
      return;
    }
  }
  if (gather != nullptr)
    throw std::logic_error("Model::train_pass: a gather for a batch of " + std::to_string(input.n) +
                           ", which the layered pass runs");
  forward(ctx, input, Phase::Train, step);
  loss(ctx, labels, grad_scale, sums, true, hook);
}

template <typename T>
TensorView<const T> Model<T>::forward(DeviceContext& ctx, TensorView<const T> input, Phase phase,
                                      const StepInfo& step) {
  if (input.n > max_batch_ || input.n <= 0)
    throw std::logic_error("Model::forward: batch of " + std::to_string(input.n) + " outside 1.." +
                           std::to_string(max_batch_));
  if (!(input.dims == input_)) throw std::logic_error("Model::forward: input dims " + to_string(input.dims));
  observing_ = phase == Phase::Train ? observer_ : nullptr;
  TensorView<const T> x = input;
  for (size_t i = 0; i < layers_.size(); ++i) {
    TensorView<T> y = activation(i, input.n);
    if (observing_ != nullptr) observing_->forward_begin(ctx, *layers_[i]);
    layers_[i]->forward(ctx, x, y, phase, step);
    if (observing_ != nullptr) observing_->forward_done(ctx, *layers_[i], y);
    x = y;
  }
  last_input_ = input;
  last_n_ = input.n;
  return x;
}

template <typename T>
void Model<T>::loss(DeviceContext& ctx, const int32_t* labels, T grad_scale, double* sums, bool backward,
                    GradientHook* hook) {
  if (backward && !with_backward_) throw std::logic_error("Model::loss: backward on a model built forward-only");
  const size_t last = layers_.size() - 1;
  const int n = last_n_;
  // The last layer may take the loss into its own backward (one launch); else the loss, then it.
  const bool fused = backward && layers_[last]->backward_with_loss(ctx, layer_input(last), activation(last, n), labels,
                                                                   grad_scale, label_smoothing_, sums, activation_grad(last, n),
                                                                   input_grad(last));
  if (!fused) {
    TensorView<T> dlogits = backward ? activation_grad(last, n) : TensorView<T>{nullptr, n, layers_[last]->output_dims()};
    loss_->forward_backward(ctx, activation(last, n), labels, grad_scale, dlogits, sums);
  }
  if (observing_ != nullptr) observing_->loss_done(ctx, std::span<const double>(sums, 2));
  if (!backward) return;
  for (size_t i = layers_.size(); i-- > 0;) {
    Layer<T>& layer = *layers_[i];
    const TensorView<T> din = input_grad(i);
    if (observing_ != nullptr) observing_->backward_begin(ctx, layer);
    if (!(fused && i == last)) layer.backward(ctx, layer_input(i), activation(i, n), activation_grad(i, n), din);
    const auto [begin, end] = grad_ranges_[i];
    if (observing_ != nullptr) {
      ctx.join_side_work();  // the observer reads this layer's gradients and times its work
      observing_->backward_done(ctx, layer, din, std::span<const T>(params_.grads().data() + begin, end - begin));
    }
    if (hook != nullptr && end > begin) hook->on_gradients_ready(ctx, begin, end);
  }
  ctx.join_side_work();
  if (hook != nullptr) hook->on_backward_done(ctx);
}

template <typename T>
void Model<T>::idle_step(DeviceContext& ctx, GradientHook* hook) {
  zero_async(ctx, params_.grads().span());
  for (auto& layer : layers_) layer->idle_pass(ctx, true);
  for (size_t i = layers_.size(); i-- > 0;) {
    layers_[i]->idle_pass(ctx, false);
    const auto [begin, end] = grad_ranges_[i];
    if (hook != nullptr && end > begin) hook->on_gradients_ready(ctx, begin, end);
  }
  if (hook != nullptr) hook->on_backward_done(ctx);
}

template <typename T>
TensorView<const T> Model<T>::layer_input(size_t i) {
  return i == 0 ? last_input_ : TensorView<const T>(activation(i - 1, last_n_));
}

template <typename T>
TensorView<T> Model<T>::input_grad(size_t i) {
  return i == 0 ? TensorView<T>{nullptr, last_n_, input_} : activation_grad(i - 1, last_n_);
}

template class Model<float>;
template class Model<double>;

}  // namespace dptrain
