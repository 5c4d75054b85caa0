// ReLU through cuDNN; max pooling, dropout and flatten with custom kernels and copies.
#include <optional>
#include <stdexcept>
#include <string>

#include "core/buffer.h"
#include "core/cuda_check.h"
#include "core/cuda_context.h"
#include "layers/cuda/cuda_layers.h"
#include "layers/cuda/cudnn_descriptors.h"
#include "layers/cuda/fused_dropout.h"
#include "kernels/layer_kernels.h"
#include "kernels/pool_kernels.h"
#include "layers/elementwise.h"
#include "layers/maxpool2d.h"

namespace dptrain {

namespace {

constexpr float kOne = 1.0f, kZero = 0.0f;

class ReluCuda final : public ReluLayer<float> {
 public:
  ReluCuda(const LayerConfig& c, int index, Dims in) : ReluLayer<float>(c, index, in), descs_(in) {
    cudnnActivationDescriptor_t a = nullptr;
    CUDNN_CHECK(cudnnCreateActivationDescriptor(&a));
    act_ = CudnnActivationDesc(a);
    CUDNN_CHECK(cudnnSetActivationDescriptor(a, CUDNN_ACTIVATION_RELU, CUDNN_NOT_PROPAGATE_NAN, 0.0));
  }
  void reserve(DeviceContext&, int max_batch) override { descs_.get(max_batch); }
  void forward(DeviceContext& ctx, TensorView<const float> in, TensorView<float> out, Phase, const StepInfo&) override {
    if (absorbed()) return;  // the layer before applied it
    cudnnTensorDescriptor_t d = descs_.get(in.n);
    CUDNN_CHECK(cudnnActivationForward(ctx.cuda().cudnn(), act_, &kOne, d, in.data, &kZero, d, out.data));
  }
  void backward(DeviceContext& ctx, TensorView<const float> in, TensorView<const float> out, TensorView<const float> dout,
                TensorView<float> din) override {
    if (din.data == nullptr || absorbed()) return;
    cudnnTensorDescriptor_t d = descs_.get(in.n);
    CUDNN_CHECK(cudnnActivationBackward(ctx.cuda().cudnn(), act_, &kOne, d, out.data, d, dout.data, d, in.data, &kZero,
                                        d, din.data));
  }

 private:
  TensorDescCache descs_;
  CudnnActivationDesc act_;
};

// With an absorbed dropout, the output is the dropout's and dout is dL/d(dropout output).
class MaxPool2dCuda final : public MaxPool2dLayer<float> {
 public:
  using MaxPool2dLayer<float>::MaxPool2dLayer;
  bool absorb_following_dropout(DeviceContext& ctx, const DropoutSpec& dropout) override {
    if (!ctx.cuda().options().fuse_elementwise) return false;
    dropout_ = dropout;
    return true;
  }
  void reserve(DeviceContext&, int max_batch) override {
    if (absorbed()) return;  // no indices of its own
    const size_t need = static_cast<size_t>(max_batch) * output_dims().count();
    if (argmax_.size() < need) argmax_ = Buffer<int32_t>(Device::Cuda, need);
  }
  void forward(DeviceContext& ctx, TensorView<const float> in, TensorView<float> out, Phase phase,
               const StepInfo&) override {
    if (absorbed()) return;  // the convolution before applied it
    kernels::maxpool_forward(in.data, out.data, argmax_.data(), geometry(in.n), fused_dropout(ctx, phase),
                             ctx.cuda().stream());
  }
  void backward(DeviceContext& ctx, TensorView<const float> in, TensorView<const float>, TensorView<const float> dout,
                TensorView<float> din) override {
    if (din.data != nullptr && !absorbed())
      kernels::maxpool_backward(dout.data, argmax_.data(), din.data, geometry(in.n), fused_dropout(ctx, Phase::Train),
                                ctx.cuda().stream());
  }

 private:
  kernels::FusedDropout fused_dropout(DeviceContext& ctx, Phase phase) const {
    return make_fused_dropout(dropout_, phase, ctx, static_cast<long>(output_dims().count()));
  }

  kernels::PoolGeometry geometry(int n) const {
    const Dims in = input_dims(), out = output_dims();
    return {n * in.c, in.h, in.w, out.h, out.w, kernel(), stride(), padding()};
  }

  Buffer<int32_t> argmax_;
  std::optional<DropoutSpec> dropout_;  // absorbed (absorb_following_dropout)
};

class DropoutCuda final : public DropoutLayer<float> {
 public:
  using DropoutLayer<float>::DropoutLayer;
  void reserve(DeviceContext&, int max_batch) override {
    if (absorbed()) return;  // no mask of its own
    if (mask_.size() < static_cast<size_t>(max_batch) * input_dims().count())
      mask_ = Buffer<float>(Device::Cuda, static_cast<size_t>(max_batch) * input_dims().count());
  }
  void forward(DeviceContext& ctx, TensorView<const float> in, TensorView<float> out, Phase phase,
               const StepInfo&) override {
    if (absorbed()) return;  // the layer before applied it
    if (phase == Phase::Eval) {
      CUDA_CHECK(cudaMemcpyAsync(out.data, in.data, sizeof(float) * static_cast<size_t>(in.size()),
                                 cudaMemcpyDeviceToDevice, ctx.cuda().stream()));
      return;
    }
    kernels::dropout_forward(in.data, out.data, mask_.data(), in.n, static_cast<int>(in.sample_size()),
                             static_cast<float>(p()), scale(), static_cast<uint32_t>(index()), ctx.step(),
                             ctx.cuda().stream());
  }
  void backward(DeviceContext& ctx, TensorView<const float> in, TensorView<const float>, TensorView<const float> dout,
                TensorView<float> din) override {
    if (din.data != nullptr && !absorbed()) kernels::dropout_backward(dout.data, mask_.data(), din.data, in.size(), ctx.cuda().stream());
  }

 private:
  Buffer<float> mask_;
};

class FlattenCuda final : public FlattenLayer<float> {
 public:
  using FlattenLayer<float>::FlattenLayer;
  void forward(DeviceContext& ctx, TensorView<const float> in, TensorView<float> out, Phase, const StepInfo&) override {
    if (out.data == in.data) return;  // the model's view: nothing to move
    CUDA_CHECK(cudaMemcpyAsync(out.data, in.data, sizeof(float) * static_cast<size_t>(in.size()),
                               cudaMemcpyDeviceToDevice, ctx.cuda().stream()));
  }
  void backward(DeviceContext& ctx, TensorView<const float> in, TensorView<const float>, TensorView<const float> dout,
                TensorView<float> din) override {
    if (din.data != nullptr && din.data != dout.data)
      CUDA_CHECK(cudaMemcpyAsync(din.data, dout.data, sizeof(float) * static_cast<size_t>(in.size()),
                                 cudaMemcpyDeviceToDevice, ctx.cuda().stream()));
  }
};

class SoftmaxCrossEntropyCuda final : public SoftmaxCrossEntropy<float> {
 public:
  explicit SoftmaxCrossEntropyCuda(float label_smoothing) : label_smoothing_(label_smoothing) {}
  void reserve(DeviceContext& ctx, int max_batch, int classes) override {
    partials_ = Buffer<double>(ctx.device(), kernels::softmax_cross_entropy_partials(max_batch, classes));
    arrivals_ = Buffer<uint32_t>(ctx.device(), 1);
    arrivals_.zero();
  }
  void forward_backward(DeviceContext& ctx, TensorView<const float> logits, const int32_t* labels, float grad_scale,
                        TensorView<float> dlogits, double* sums) override {
    const int classes = static_cast<int>(logits.sample_size());
    if (kernels::softmax_cross_entropy_partials(logits.n, classes) > partials_.size())
      throw std::logic_error("SoftmaxCrossEntropy: a batch of " + std::to_string(logits.n) + " x " +
                             std::to_string(classes) + " classes needs reserve() for at least that batch");
    kernels::softmax_cross_entropy(logits.data, labels, logits.n, classes, grad_scale, label_smoothing_, dlogits.data,
                                   sums, {partials_.data(), arrivals_.data()}, ctx.cuda().stream());
  }

 private:
  float label_smoothing_;
  Buffer<double> partials_;   ///< each block's loss and correct count
  Buffer<uint32_t> arrivals_;  ///< blocks done in the running launch; the last resets it to 0
};

}  // namespace

std::unique_ptr<Layer<float>> make_relu_cuda(const LayerConfig& c, int index, Dims in) {
  return std::make_unique<ReluCuda>(c, index, in);
}
std::unique_ptr<Layer<float>> make_maxpool2d_cuda(const LayerConfig& c, int index, Dims in) {
  return std::make_unique<MaxPool2dCuda>(c, index, in);
}
std::unique_ptr<Layer<float>> make_dropout_cuda(const LayerConfig& c, int index, Dims in) {
  return std::make_unique<DropoutCuda>(c, index, in);
}
std::unique_ptr<Layer<float>> make_flatten_cuda(const LayerConfig& c, int index, Dims in) {
  return std::make_unique<FlattenCuda>(c, index, in);
}

std::unique_ptr<SoftmaxCrossEntropy<float>> make_softmax_cross_entropy_cuda(float label_smoothing) {
  return std::make_unique<SoftmaxCrossEntropyCuda>(label_smoothing);
}

}  // namespace dptrain
