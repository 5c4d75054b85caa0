// batchnorm2d / batchnorm1d on CUDA (layers/batchnorm.h): dptrain's own deterministic kernels
// (kernels/batchnorm_kernels.h), separate launches rather than fused into the convolution's
// epilogue. Train forward: per-group sums, centred sums (sync: each exchanged between ranks),
// statistics, normalisation. Backward: per-group sums of dy and dy * xhat, the parameter
// gradients from this rank's sums, (sync: the sums exchanged), the input gradient. A ReLU that
// follows is absorbed (fuse_elementwise): the normalisation writes max(y, 0) and backward masks dy
// by the output, saving the ReLU's pass each way. The running
// statistics move in end_train_step. All scratch is sized in reserve(): nothing allocates or
// syncs the host in a step, which is captured as a CUDA graph.
#include <algorithm>
#include <string>

#include "core/buffer.h"
#include "core/cuda_check.h"
#include "core/cuda_context.h"
#include "kernels/batchnorm_kernels.h"
#include "layers/batchnorm.h"
#include "layers/cuda/cuda_layers.h"

namespace dptrain {

namespace {

class BatchNormCuda final : public BatchNormLayer<float> {
 public:
  using BatchNormLayer<float>::BatchNormLayer;

  bool absorb_following_relu(DeviceContext& ctx) override {
    relu_ = ctx.cuda().options().fuse_elementwise;
    return relu_;
  }

  void reserve(DeviceContext&, int max_batch) override {
    if (static_cast<long long>(max_batch) * input_dims().count() >= (1LL << 31))
      throw layer_error(index(), name(), "a batch of " + std::to_string(max_batch) + " makes a tensor of 2^31 elements "
                                         "or more, beyond the CUDA batchnorm kernels' 32-bit indexing");
    const size_t c = static_cast<size_t>(channels());
    const size_t groups = static_cast<size_t>(this->groups(std::max(max_batch, 1)));
    if (mean_.size() >= groups * c) return;
    mean_ = Buffer<float>(Device::Cuda, groups * c);
    invstd_ = Buffer<float>(Device::Cuda, groups * c);
    sums_ = Buffer<float>(Device::Cuda, groups * c + 1);
    sq_ = Buffer<float>(Device::Cuda, groups * c);
    bsums_ = Buffer<float>(Device::Cuda, groups * 2 * c);
    partial_ = Buffer<float>(Device::Cuda, 2 * c + 1);
    partial_.zero();
  }

  void forward(DeviceContext& ctx, TensorView<const float> in, TensorView<float> out, Phase phase,
               const StepInfo&) override {
    cudaStream_t stream = ctx.cuda().stream();
    const kernels::BatchNormShape s = shape(in.n);
    const float* w = params()[0].value.data();
    const float* b = params()[1].value.data();
    if (phase == Phase::Eval) {
      kernels::batchnorm_eval(in.data, s, state()[0].data(), state()[1].data(), static_cast<float>(eps()), w, b,
                              relu_, out.data, stream);
      return;
    }
    statistics(ctx, in.data, s);
    kernels::batchnorm_normalize(in.data, s, mean_.data(), invstd_.data(), w, b, relu_, out.data, stream);
  }

  void backward(DeviceContext& ctx, TensorView<const float> in, TensorView<const float> out,
                TensorView<const float> dout, TensorView<float> din) override {
    cudaStream_t stream = ctx.cuda().stream();
    const kernels::BatchNormShape s = shape(in.n);
    const float* relu_out = relu_ ? out.data : nullptr;  // the absorbed ReLU's mask
    kernels::batchnorm_backward_sums(in.data, dout.data, relu_out, s, mean_.data(), invstd_.data(), bsums_.data(),
                                     stream);
    // This rank's parameter gradients (the gradient exchange sums them), before sync's exchange.
    kernels::batchnorm_param_grads(bsums_.data(), s, params()[0].grad.data(), params()[1].grad.data(), stream);
    if (sync() && exchanges()) cross_->sum(ctx, bsums_.span().subspan(0, 2 * static_cast<size_t>(channels())));
    if (din.data != nullptr)
      kernels::batchnorm_input_grad(in.data, dout.data, relu_out, s, mean_.data(), invstd_.data(), bsums_.data(),
                                    sums_.data(), params()[0].value.data(), din.data, stream);
  }

  void idle_pass(DeviceContext& ctx, bool forward) override {
    cudaStream_t stream = ctx.cuda().stream();
    if (forward) {
      if (sync()) {
        statistics(ctx, nullptr, shape(0));
      } else {
        CUDA_CHECK(cudaMemsetAsync(partial_.data(), 0, partial_.size() * sizeof(float), stream));
      }
    } else if (sync() && exchanges()) {
      const size_t count = 2 * static_cast<size_t>(channels());
      CUDA_CHECK(cudaMemsetAsync(bsums_.data(), 0, count * sizeof(float), stream));
      cross_->sum(ctx, bsums_.span().subspan(0, count));
    }
  }

  void end_train_step(DeviceContext& ctx) override {
    // Ghost groups: every rank's groups together; sync's statistics are global already.
    if (!sync() && exchanges()) cross_->sum(ctx, partial_.span());
    kernels::batchnorm_running_update(partial_.data(), channels(), static_cast<float>(momentum()), state()[0].data(),
                                      state()[1].data(), state()[2].data(), ctx.cuda().stream());
  }

 private:
  kernels::BatchNormShape shape(int n) const { return {n, channels(), spatial(), group_size()}; }

  /// mean_, invstd_ per group and the running-stat partials; sync exchanges both sums.
  void statistics(DeviceContext& ctx, const float* x, const kernels::BatchNormShape& s) {
    cudaStream_t stream = ctx.cuda().stream();
    const size_t c = static_cast<size_t>(channels());
    if (s.n == 0) {  // an idle rank in sync mode: zero sums, joined exchanges
      CUDA_CHECK(cudaMemsetAsync(sums_.data(), 0, (c + 1) * sizeof(float), stream));
    } else {
      kernels::batchnorm_sums(x, s, sums_.data(), stream);
    }
    if (sync() && exchanges()) cross_->sum(ctx, sums_.span().subspan(0, c + 1));
    if (s.n == 0) {
      CUDA_CHECK(cudaMemsetAsync(sq_.data(), 0, c * sizeof(float), stream));
      kernels::batchnorm_centered(nullptr, s, sums_.data(), mean_.data(), sq_.data(), stream);
    } else {
      kernels::batchnorm_centered(x, s, sums_.data(), mean_.data(), sq_.data(), stream);
    }
    if (sync() && exchanges()) cross_->sum(ctx, sq_.span().subspan(0, c));
    kernels::batchnorm_finish_stats(s, sums_.data(), sq_.data(), mean_.data(), static_cast<float>(eps()),
                                    invstd_.data(), partial_.data(), stream);
  }

  Buffer<float> mean_, invstd_, sums_, sq_, bsums_, partial_;
  bool relu_ = false;  ///< absorbed the ReLU after it
};

}  // namespace

std::unique_ptr<Layer<float>> make_batchnorm2d_cuda(const LayerConfig& c, int index, Dims in) {
  return std::make_unique<BatchNormCuda>("batchnorm2d", c, index, in);
}
std::unique_ptr<Layer<float>> make_batchnorm1d_cuda(const LayerConfig& c, int index, Dims in) {
  return std::make_unique<BatchNormCuda>("batchnorm1d", c, index, in);
}

}  // namespace dptrain
