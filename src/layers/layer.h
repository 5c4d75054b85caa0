// Layer<T>: the contract every layer keeps, on every backend (Caffe's Layer, llm.c's explicit
// context argument).
//
// A layer is built from its LayerConfig and the shape of its input; the constructor infers the
// output shape and throws InputError naming the layer when the shapes cannot work. Parameters are
// not owned by the layer: the model lays all of them out in one flat buffer (and the gradients in
// another) and hands each layer its views through bind(). forward() and backward() run on the
// DeviceContext's device, allocate nothing and never synchronise with the host; scratch space is
// sized once in reserve(). backward() overwrites (does not accumulate) its parameter gradients.
//
// T is float for training; the CPU reference layers are also instantiated for double so that the
// gradient checker can compare against central finite differences.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/device_context.h"
#include "core/step_state.h"
#include "core/tensor.h"
#include "layers/cross_rank_sum.h"

namespace dptrain {

enum class Phase { Train, Eval };

/// How a parameter tensor is initialised (PyTorch's defaults for Conv2d and Linear).
enum class ParamInit {
  KaimingUniform,  ///< weights: kaiming_uniform_(a=sqrt(5)), i.e. U(+-1/sqrt(fan_in))
  FanInUniform,    ///< biases: U(+-1/sqrt(fan_in))
  Ones,            ///< batchnorm weight, running_var
  Zeros,           ///< batchnorm bias, running_mean, num_batches_tracked
};

/// A state tensor the layer keeps beside its parameters (PyTorch's buffers: batchnorm's running
/// statistics): saved in checkpoints and final.safetensors under "<layer name>.<suffix>", carried
/// by resume and inspect, but never a parameter: no gradient, no optimizer update, no weight decay.
/// The model lays them out in one flat state buffer (model/state_store.h) and hands each layer its
/// views through bind_state().
struct StateSpec {
  std::string suffix;  ///< e.g. "running_mean"
  ParamShape shape;    ///< {} for a scalar (num_batches_tracked)
  ParamInit init = ParamInit::Zeros;
  /// Stored in files as I64 (PyTorch's num_batches_tracked); held as T here (exact below 2^24).
  bool integer = false;
};

/// A parameter the layer needs; the model allocates it in the flat buffer in this order.
struct ParamSpec {
  std::string suffix;  ///< "weight" or "bias": the state_dict key is "<layer name>.<suffix>"
  ParamShape shape;    ///< PyTorch's layout, e.g. conv weight [out, in, kh, kw]
  ParamInit init = ParamInit::KaimingUniform;
  int64_t fan_in = 1;
};

/// A dropout layer as another layer applies it (Layer::absorb_following_dropout).
struct DropoutSpec {
  float p = 0.0f;      ///< drop probability
  float scale = 1.0f;  ///< factor of kept elements, 1 / (1 - p)
  int layer = 0;       ///< the dropout layer's index, part of its random key
};

/// A max pooling layer as another layer applies it (Layer::absorb_following_pool).
struct PoolSpec {
  int kernel = 1, stride = 1, padding = 0;
  /// Output size along a side of `in` (floor, as nn.MaxPool2d).
  int pooled(int in) const { return (in + 2 * padding - kernel) / stride + 1; }
};

/// One parameter's slice of the flat value and gradient buffers.
template <typename T>
struct ParamView {
  std::span<T> value;
  std::span<T> grad;
};

template <typename T>
class Layer {
 public:
  Layer(std::string name, int index, Dims input) : name_(std::move(name)), index_(index), input_(input) {}
  virtual ~Layer() = default;
  Layer(const Layer&) = delete;
  Layer& operator=(const Layer&) = delete;

  /// Name in configs and state_dict keys (e.g. "conv1"); position in the model.
  const std::string& name() const { return name_; }
  int index() const { return index_; }
  virtual std::string_view type() const = 0;

  Dims input_dims() const { return input_; }
  Dims output_dims() const { return output_; }

  /// Parameters this layer needs, in state_dict order. Empty for parameter-free layers.
  virtual std::vector<ParamSpec> param_specs() const { return {}; }
  /// Receives the views of its parameters, one per param_specs() entry, same order.
  void bind(std::vector<ParamView<T>> params) { params_ = std::move(params); }

  /// State tensors this layer keeps (StateSpec), in state_dict order after its parameters.
  virtual std::vector<StateSpec> state_specs() const { return {}; }
  /// Receives the views of its state, one per state_specs() entry, same order.
  void bind_state(std::vector<std::span<T>> state) { state_ = std::move(state); }

  /// Gives a layer that needs other ranks (batchnorm: global statistics) the way to sum over them.
  /// Null, or one rank: this rank is the whole batch. Not owned. The model passes it on to every
  /// layer (Model::set_cross_rank_sum).
  virtual void set_cross_rank_sum(CrossRankSum* sum) { (void)sum; }

  /// After a training step's backward and gradient exchange: fold the step's statistics into the
  /// state (batchnorm: running mean and variance, all ranks together). Called on every rank, also
  /// on one left without samples by a short tail batch (after idle_pass()).
  virtual void end_train_step(DeviceContext& ctx) { (void)ctx; }

  /// A rank without samples in this step joins what forward (forward = true) or backward would
  /// have exchanged with the other ranks, contributing nothing. Layers that exchange nothing do
  /// nothing.
  virtual void idle_pass(DeviceContext& ctx, bool forward) {
    (void)ctx;
    (void)forward;
  }

  /// Offers this layer the ReLU that follows it. A layer that takes it (on CUDA: convolutions and
  /// linear layers, as a fused epilogue) from then on outputs max(y, 0), and its backward receives
  /// dL/d(ReLU output) and applies the ReLU's mask itself. Called before reserve().
  virtual bool absorb_following_relu(DeviceContext& ctx) {
    (void)ctx;
    return false;
  }

  /// Offers this layer the dropout that follows it (after a ReLU it absorbed, if any). A layer that
  /// takes it (on CUDA: max pooling and linear layers) multiplies its training outputs by the
  /// dropout's mask and its incoming gradient likewise, drawing the mask as the dropout layer
  /// would (same generator, key and element order). Called before reserve().
  virtual bool absorb_following_dropout(DeviceContext& ctx, const DropoutSpec& dropout) {
    (void)ctx;
    (void)dropout;
    return false;
  }

  /// Offers this layer the max pooling that follows it (after a ReLU it absorbed, if any). A layer
  /// that takes it (on CUDA: convolutions, whose bias, ReLU and pooling then run in one pass) from
  /// then on outputs the pooled tensor (at the start of its output buffer, which keeps its own
  /// size), and its backward receives the gradient of the pooled output. Called before reserve(),
  /// before the dropout that follows is offered (to this layer, then).
  virtual bool absorb_following_pool(DeviceContext& ctx, const PoolSpec& pool) {
    (void)ctx;
    (void)pool;
    return false;
  }

  /// Whether the output is the input itself (flatten; a ReLU or dropout absorbed before it). The
  /// model then gives the output and its gradient the input's buffers, and forward/backward do
  /// nothing when handed the same memory for both.
  virtual bool is_view() const { return false; }

  /// Sizes scratch space (dropout masks, pooling indices, im2col columns) for up to max_batch
  /// samples. Called once before the first forward; may be called again with a larger batch.
  virtual void reserve(DeviceContext& ctx, int max_batch) {
    (void)ctx;
    (void)max_batch;
  }

  /// Chooses now how a batch of `batch` samples (at most the reserved batch) will be computed, in
  /// forward only or in both directions (on CUDA: each convolution's algorithms, timed or by
  /// heuristics, and the workspace they need), so that no choice is made, and no workspace grows,
  /// once steps are captured. Optional: a batch size not planned is planned when first seen.
  virtual void plan(DeviceContext& ctx, int batch, bool backward) {
    (void)ctx;
    (void)batch;
    (void)backward;
  }

  /// out = f(in). `out` has in.n samples of output_dims(). On CUDA, stochastic layers read the step
  /// from the context's device-resident StepState (DeviceContext::set_step), which must hold `step`.
  virtual void forward(DeviceContext& ctx, TensorView<const T> in, TensorView<T> out, Phase phase,
                       const StepInfo& step) = 0;

  /// From dout (dL/dout) computes the parameter gradients and, when din.data is not null, dL/din.
  /// `in` and `out` are the tensors of the last forward call. On CUDA the parameter gradients may
  /// still be queued on the context's side stream: DeviceContext::join_side_work() before reading
  /// them (Model::backward does, as do download() and synchronize()).
  virtual void backward(DeviceContext& ctx, TensorView<const T> in, TensorView<const T> out,
                        TensorView<const T> dout, TensorView<T> din) = 0;

  /// The model's last layer may compute the loss of its output together with its own backward (on
  /// CUDA: a linear layer of up to 32 outputs without a ReLU or dropout of its own, in one launch).
  /// Arguments as SoftmaxCrossEntropy::forward_backward and backward() (label_smoothing: the loss's
  /// e); `dout` receives dL/dlogits. Returns false, having queued nothing, where the layer does not
  /// serve the case: the model then runs the loss and backward() apart.
  virtual bool backward_with_loss(DeviceContext& ctx, TensorView<const T> in, TensorView<const T> out,
                                  const int32_t* labels, T grad_scale, T label_smoothing, double* sums,
                                  TensorView<T> dout, TensorView<T> din) {
    (void)ctx, (void)in, (void)out, (void)labels, (void)grad_scale, (void)label_smoothing, (void)sums, (void)dout,
        (void)din;
    return false;
  }

 protected:
  void set_output_dims(Dims d) { output_ = d; }
  std::vector<ParamView<T>>& params() { return params_; }
  std::vector<std::span<T>>& state() { return state_; }

 private:
  std::string name_;
  int index_;
  Dims input_;
  Dims output_{};
  std::vector<ParamView<T>> params_;
  std::vector<std::span<T>> state_;
};

}  // namespace dptrain
