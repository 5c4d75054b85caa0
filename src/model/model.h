// Model<T>: the network built from a ModelConfig (Caffe's Net): its layers in order, the flat
// parameter/gradient store they view, and one activation and one activation-gradient buffer per
// layer (shared with the layer before for views: flatten, an absorbed ReLU), all sized once for
// max_batch samples. forward() and backward() queue work on the
// context's device and return without synchronising.
#pragma once

#include <memory>
#include <utility>
#include <vector>

#include "core/buffer.h"
#include "core/device_context.h"
#include "io/config.h"
#include "layers/layer.h"
#include "layers/softmax_cross_entropy.h"
#include "model/fused_train_step.h"
#include "model/gradient_hook.h"
#include "model/layer_observer.h"
#include "model/param_store.h"
#include "model/state_store.h"

namespace dptrain {

template <typename T>
class Model {
 public:
  /// Builds and shape-checks the layers (InputError naming the layer on a mismatch; the last layer
  /// must produce num_classes values), lays out the parameters and allocates activations.
  /// label_smoothing: the loss's (train.label_smoothing; SoftmaxCrossEntropy).
  /// with_backward = false (eval, predict): no activation-gradient buffers, and loss() refuses
  /// backward; the forward pass is the same.
  Model(const ModelConfig& config, DeviceContext& ctx, int max_batch, double label_smoothing = 0.0,
        bool with_backward = true);

  const std::vector<std::unique_ptr<Layer<T>>>& layers() const { return layers_; }
  ParamStore<T>& params() { return params_; }
  const ParamStore<T>& params() const { return params_; }
  /// State tensors beside the parameters (batchnorm's running statistics): saved, never optimised.
  StateStore<T>& state() { return state_; }
  const StateStore<T>& state() const { return state_; }

  /// Gives every layer that exchanges values in forward or backward (batchnorm) the way to sum
  /// over the ranks (null: one rank). Not owned.
  void set_cross_rank_sum(CrossRankSum* sum) {
    for (auto& layer : layers_) layer->set_cross_rank_sum(sum);
  }
  /// After a training step's backward and gradient exchange: each layer folds the step into its
  /// state (Layer::end_train_step). Every rank calls it, in every training step.
  void end_train_step(DeviceContext& ctx) {
    for (auto& layer : layers_) layer->end_train_step(ctx);
  }
  /// A rank without samples in this step (a short tail batch): zero gradients, and the exchanges
  /// a pass would make in the order it makes them: each layer's forward ones (Layer::idle_pass),
  /// then per layer from the last, its backward ones and its gradients reported to `hook`, then
  /// the hook's end of backward. So the ranks' collectives always pair up.
  void idle_step(DeviceContext& ctx, GradientHook* hook);
  Dims input_dims() const { return input_; }
  int num_classes() const { return num_classes_; }
  int max_batch() const { return max_batch_; }

  /// Plans every layer for a batch of `batch` samples (Layer::plan): forward only, or with backward;
  /// with backward, then the training pass (plan_train_pass).
  void plan(DeviceContext& ctx, int batch, bool backward);
  /// Where a fused pass serves this model (model/fused_train_step.h): whether train_pass runs it
  /// at this batch or runs the layers (the layers must be planned for it, with backward). Nothing
  /// otherwise, or while an observer listens (it hears of each layer).
  void plan_train_pass(DeviceContext& ctx, int batch);
  /// The fused training pass, or null where none serves this model.
  FusedTrainStep* fused_step() { return fused_.get(); }
  /// Whether train_pass runs the fused pass for a batch of n.
  bool runs_fused(int n) const;

  /// Hears of each stage of later training passes (null: none, the default). Not owned.
  void set_observer(LayerObserver<T>* observer) { observer_ = observer; }

  /// Forward through every layer; returns the logits [n, num_classes].
  TensorView<const T> forward(DeviceContext& ctx, TensorView<const T> input, Phase phase, const StepInfo& step);

  /// Loss of the last forward's logits against `labels` (accumulated into sums, see
  /// SoftmaxCrossEntropy) and, when `backward` is set, dL/dlogits scaled by grad_scale followed
  /// by the backward pass through every layer. `hook` (may be null) hears of each layer's
  /// finished gradient slice as soon as it is queued.
  void loss(DeviceContext& ctx, const int32_t* labels, T grad_scale, double* sums, bool backward,
            GradientHook* hook);

  /// A training pass: forward (Phase::Train), the loss and backward, as forward() then backward(),
  /// or the fused pass where plan_train_pass chose it for this batch size. Either way the gradients
  /// are in the gradient buffer, `hook` hears of each layer's (last layer first) and of the end of
  /// backward, and sums take the loss. After a fused pass the activations are not written.
  /// `gather`: null where input and labels hold the batch; else (only where runs_fused(input.n))
  /// the fused pass takes the batch from the dataset and writes it there (FusedTrainStep::run).
  void train_pass(DeviceContext& ctx, TensorView<const T> input, const int32_t* labels, T grad_scale, double* sums,
                  GradientHook* hook, const StepInfo& step, const StepGather* gather);

  /// Shorthand for loss(..., backward = true, hook).
  void backward(DeviceContext& ctx, const int32_t* labels, T grad_scale, double* sums, GradientHook* hook) {
    loss(ctx, labels, grad_scale, sums, true, hook);
  }

 private:
  /// The layer that would apply layer i for it (absorb_following_*): the one before, past the ReLU
  /// and pooling layers that it absorbed.
  size_t applier(size_t i) const;
  TensorView<T> activation(size_t i, int n);
  TensorView<T> activation_grad(size_t i, int n);
  /// Of the last pass: layer i's input, and where its backward writes dL/d(input) (null for layer 0).
  TensorView<const T> layer_input(size_t i);
  TensorView<T> input_grad(size_t i);

  Dims input_;
  int num_classes_;
  int max_batch_;
  T label_smoothing_;
  bool with_backward_ = true;
  std::vector<std::unique_ptr<Layer<T>>> layers_;
  std::unique_ptr<SoftmaxCrossEntropy<T>> loss_;
  ParamStore<T> params_;
  StateStore<T> state_;
  std::vector<size_t> owner_;         // owner_[i]: the layer whose buffers hold layer i's output (i, or before a view)
  std::vector<Buffer<T>> acts_;       // acts_[i]: output of layer i (empty for a view)
  std::vector<Buffer<T>> act_grads_;  // act_grads_[i]: dL/d(output of layer i)
  std::vector<std::pair<size_t, size_t>> grad_ranges_;  // per layer: [begin, end) in the flat buffer
  TensorView<const T> last_input_{};
  int last_n_ = 0;
  LayerObserver<T>* observer_ = nullptr;
  LayerObserver<T>* observing_ = nullptr;  // observer_ during a Phase::Train pass, else null
  std::unique_ptr<FusedTrainStep> fused_;  // null: none serves this model
  std::vector<int> fused_batches_;         // the batch sizes train_pass runs fused, sorted
};

}  // namespace dptrain
