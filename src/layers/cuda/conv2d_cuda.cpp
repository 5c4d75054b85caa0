// Conv2d on CUDA: the layer. Which implementation computes each direction at each batch size is
// ConvPlanner's choice (layers/cuda/conv_planner.h: cuDNN's algorithms, dptrain's direct and 3x3 kernels,
// each checked against a reference before use, timed or by heuristics); ConvExecutor runs them
// (layers/cuda/conv_executor.h). This file holds what the layer adds around them:
// A ReLU after the layer can be absorbed: the forward's epilogue applies it, and the backward masks
// the incoming gradient in the pass that sums the bias gradient (or in the direct kernel's staging).
// So can a max pooling after that (windows that tile the plane) and a dropout after the pooling:
// the convolution then runs without its bias, and one pass adds the bias, applies the ReLU, pools
// and drops out (kernels/pool_kernels.h: conv_pool_forward); backward, one pass spreads the pooled
// gradient over the windows, masked, and sums the bias gradient (conv_pool_backward).
// The model's first layer, where the direct kernels serve it, absorbs a max pooling of any geometry
// its own way: its forward kernel pools as it computes (conv_direct_pool_forward, when the planner
// chose the direct forward; otherwise the chosen forward, then maxpool_forward), and its filter
// gradient is taken from the pooled gradient at the windows' argmaxes (conv_direct_pool_filter_grad):
// no pass spreads the gradient, and a quarter of the positions are visited for 2 x 2 windows.
// Where a batch is past those kernels' guard, the pooling runs apart, as a layer would.
// Batch sizes are planned before the first step (Layer::plan), so no workspace grows after a step
// was captured.
#include <algorithm>
#include <memory>
#include <optional>
#include <utility>

#include "core/buffer.h"
#include "core/cuda_check.h"
#include "layers/cuda/conv_executor.h"
#include "layers/cuda/conv_planner.h"
#include "core/cuda_context.h"
#include "layers/cuda/cuda_layers.h"
#include "layers/cuda/fused_dropout.h"
#include "kernels/conv_kernels.h"
#include "kernels/layer_kernels.h"
#include "kernels/pool_kernels.h"
#include "layers/conv2d.h"

namespace dptrain {

namespace {

class Conv2dCuda final : public Conv2dLayer<float> {
 public:
  using Conv2dLayer<float>::Conv2dLayer;

  bool absorb_following_relu(DeviceContext& ctx) override {
    relu_ = ctx.cuda().options().fuse_elementwise;
    return relu_;
  }

  // Pooling after a convolution the direct kernels may serve: only the first layer absorbs it (its
  // input gradient is never computed); elsewhere it stays a layer of its own.
  bool absorb_following_pool(DeviceContext& ctx, const PoolSpec& pool) override {
    if (!ctx.cuda().options().fuse_elementwise) return false;
    if (kernels::direct_conv_fits(input_dims().c, kernel())) {
      if (!first_layer()) return false;
      direct_pool_ = pool;
      return true;
    }
    pool_ = pool;
    if (kernels::conv_pool_fits(pool_geometry(1))) return true;
    pool_.reset();
    return false;
  }

  // Only after an absorbed pooling (which fuse_elementwise already allowed).
  bool absorb_following_dropout(DeviceContext&, const DropoutSpec& dropout) override {
    if (!pool_) return false;
    dropout_ = dropout;
    return true;
  }

  void reserve(DeviceContext& ctx, int max_batch) override {
    set_up(ctx);
    const size_t full = static_cast<size_t>(max_batch) * output_dims().count();
    if (pool_ || direct_pool_) {
      const size_t pooled = static_cast<size_t>(pool_geometry(max_batch).planes) * pooled_plane();
      if (argmax_.size() < pooled) argmax_ = Buffer<int32_t>(Device::Cuda, pooled);
    }
    if (direct_pool_) {
      const size_t partials = kernels::conv_direct_pool_filter_grad_scratch(exec_->geometry(max_batch)) / sizeof(float);
      if (pool_partials_.size() < partials) pool_partials_ = Buffer<float>(Device::Cuda, partials);
      // The planner may give the forward to another family at some batch: its output is pooled apart.
      if (unpooled_.size() < full) unpooled_ = Buffer<float>(Device::Cuda, full);
      if (pooled_kernels_serve(max_batch)) return;  // then at every smaller batch too
      if (unpooled_grad_.size() < full) unpooled_grad_ = Buffer<float>(Device::Cuda, full);
    }
    if (masked_.size() < (relu_ || pool_ ? full : 0)) masked_ = Buffer<float>(Device::Cuda, full);
    const size_t partials =
        std::max(kernels::bias_grad_channels_scratch(max_batch, out_channels()),
                 pool_ ? kernels::conv_pool_backward_scratch(pool_geometry(max_batch), out_channels()) : size_t{0});
    if (bias_partials_.size() < partials) bias_partials_ = Buffer<float>(Device::Cuda, partials);
    if (pool_ && unpooled_.size() < full) unpooled_ = Buffer<float>(Device::Cuda, full);
  }

  void plan(DeviceContext& ctx, int batch, bool backward) override {
    set_up(ctx);
    plan_batch(ctx, batch, backward);
  }

  void forward(DeviceContext& ctx, TensorView<const float> in, TensorView<float> out, Phase phase,
               const StepInfo&) override {
    set_up(ctx);
    const ConvPlan& p = plan_batch(ctx, in.n, phase == Phase::Train);
    CudaContext& cu = ctx.cuda();
    const float* b = params()[1].value.data();
    if (direct_pool_) {
      if (p.fwd.impl == ConvImpl::Direct && pooled_kernels_serve(in.n))
        return kernels::conv_direct_pool_forward(in.data, params()[0].value.data(), b, relu_, out.data, argmax_.data(),
                                                 exec_->geometry(in.n), pool_geometry(in.n), cu.stream());
      exec_->forward(cu.cudnn(), cu.stream(), cu.workspace(p.workspace), p.batch, p.fwd, in.data,
                     params()[0].value.data(), b, unpooled_.data());
      return kernels::maxpool_forward(unpooled_.data(), out.data, argmax_.data(), pool_geometry(in.n), {}, cu.stream());
    }
    exec_->forward(cu.cudnn(), cu.stream(), cu.workspace(p.workspace), p.batch, p.fwd, in.data,
                   params()[0].value.data(), b, pool_ ? unpooled_.data() : out.data);
    if (pool_)
      kernels::conv_pool_forward(unpooled_.data(), b, relu_, out.data, argmax_.data(), pool_geometry(in.n),
                                 out_channels(), fused_dropout(ctx, phase), cu.stream());
  }

  // With an absorbed ReLU, dout is dL/d(ReLU output): the gradient of the convolution is dout
  // where out > 0 (ConvExecutor::masked_gradient). When an input gradient follows, the filter
  // gradient goes to the side stream (cuda_context.h).
  void backward(DeviceContext& ctx, TensorView<const float> in, TensorView<const float> out,
                TensorView<const float> dout, TensorView<float> din) override {
    set_up(ctx);
    const ConvPlan& p = plan_batch(ctx, in.n, true);
    CudaContext& cu = ctx.cuda();
    cudaStream_t stream = cu.stream();
    float* dw = params()[0].grad.data();
    float* db = params()[1].grad.data();
    if (direct_pool_ && pooled_kernels_serve(in.n))
      return kernels::conv_direct_pool_filter_grad(in.data, dout.data, out.data, argmax_.data(), relu_, dw, db,
                                                   pool_partials_.data(), exec_->geometry(in.n), pool_geometry(in.n),
                                                   stream);
    if (direct_pool_) {  // past the pooled kernels' guard: the pooling's backward, then as without it
      kernels::maxpool_backward(dout.data, argmax_.data(), unpooled_grad_.data(), pool_geometry(in.n), {}, stream);
      dout.data = unpooled_grad_.data();
      out.data = unpooled_.data();
    }
    if (p.filter.impl == ConvImpl::Direct && din.data == nullptr) {
      // The first layer: the direct filter gradient masks by the ReLU's output as it stages dout.
      return kernels::conv_direct_filter_grad(in.data, dout.data, relu_ ? out.data : nullptr, dw, db,
                                              cu.workspace(p.workspace), exec_->geometry(in.n), stream);
    }
    const float* dy = dout.data;
    if (pool_) {  // the pooled gradient spread over the windows; the bias gradient where cuDNN takes the filter's
      kernels::conv_pool_backward(dout.data, out.data, argmax_.data(), relu_, masked_.data(),
                                  p.filter.impl == ConvImpl::Cudnn ? db : nullptr, bias_partials_.data(),
                                  pool_geometry(in.n), out_channels(), fused_dropout(ctx, Phase::Train), stream);
      dy = masked_.data();
    } else {
      dy = exec_->masked_gradient(stream, in.n, p.filter, dout.data, out.data, masked_.data(), db,
                                  bias_partials_.data());
    }
    // Beside an input gradient the filter gradient runs on the side stream, forked here but queued
    // after the input gradient (the critical path), so that the graph launches that one's kernels
    // first: the other way round, cuDNN's FFT filter gradient (which starts with a pass over dy,
    // flip_filter) filled the GPU and held the input gradient back by 13 us.
    const bool side = din.data != nullptr;
    const cudaStream_t filter_stream = side ? cu.fork() : stream;
    if (side)
      exec_->backward_data(cu.cudnn(), stream, cu.workspace(p.workspace), p.batch, p.data, dy, params()[0].value.data(),
                           din.data);
    exec_->filter_grad(side ? cu.side_cudnn() : cu.cudnn(), filter_stream,
                       side ? cu.side_workspace(p.workspace) : cu.workspace(p.workspace), p.batch, p.filter, in.data,
                       dy, dw, db);
  }

 private:
  /// The executor and planner, made once the absorbed ReLU and pooling are known (before reserve()).
  void set_up(DeviceContext& ctx) {
    if (exec_) return;
    exec_ = std::make_unique<ConvExecutor>(input_dims(), output_dims(), kernel(), stride(), padding(),
                                           ctx.cuda().options().tf32, relu_, pool_.has_value());
    planner_ = std::make_unique<ConvPlanner>(*exec_, name(), !first_layer());
  }

  /// The model's first layer: its input is the data, so the model never asks it for an input gradient.
  bool first_layer() const { return index() == 0; }

  /// The plan of batch n (ConvPlanner's). With direct_pool_ its filter gradient is planned only where
  /// the pooled kernels do not serve the batch: otherwise conv_direct_pool_filter_grad takes it.
  const ConvPlan& plan_batch(DeviceContext& ctx, int n, bool backward) {
    return planner_->plan(ctx, n, backward && !(direct_pool_ && pooled_kernels_serve(n)));
  }

  /// Whether conv_direct_pool_forward and conv_direct_pool_filter_grad serve batch n (with direct_pool_;
  /// monotone in n: a batch they serve, they serve at every smaller one).
  bool pooled_kernels_serve(int n) const { return kernels::direct_pool_fits(exec_->geometry(n), pool_geometry(n)); }

  /// The absorbed pooling over the convolution's output at batch n; its output plane's size.
  kernels::PoolGeometry pool_geometry(int n) const {
    const Dims out = output_dims();
    const PoolSpec& pool = pool_ ? *pool_ : *direct_pool_;
    return {n * out.c,   out.h,       out.w,        pool.pooled(out.h), pool.pooled(out.w),
            pool.kernel, pool.stride, pool.padding};
  }
  int pooled_plane() const {
    const kernels::PoolGeometry g = pool_geometry(1);
    return g.oh * g.ow;
  }

  kernels::FusedDropout fused_dropout(DeviceContext& ctx, Phase phase) const {
    return make_fused_dropout(dropout_, phase, ctx, static_cast<long>(out_channels()) * pooled_plane());
  }

  bool relu_ = false;     // applies the ReLU that follows (absorb_following_relu)
  Buffer<float> masked_;  // with relu_ or pool_: the gradient of the convolution's output, masked
  Buffer<float> bias_partials_;
  std::optional<PoolSpec> pool_;        // absorbed (absorb_following_pool)
  std::optional<DropoutSpec> dropout_;  // absorbed after the pooling (absorb_following_dropout)
  Buffer<int32_t> argmax_;              // with pool_ or direct_pool_: each window's first maximum
  std::optional<PoolSpec> direct_pool_;  // absorbed by the first layer on the direct kernels (absorb_following_pool)
  Buffer<float> pool_partials_;          // with direct_pool_: conv_direct_pool_filter_grad's scratch
  // With pool_: the convolution's output before bias and pooling. With direct_pool_, where the
  // pooling runs apart: that output (bias and ReLU applied), and its gradient.
  Buffer<float> unpooled_, unpooled_grad_;
  std::unique_ptr<ConvExecutor> exec_;
  std::unique_ptr<ConvPlanner> planner_;
};

}  // namespace

std::unique_ptr<Layer<float>> make_conv2d_cuda(const LayerConfig& c, int index, Dims in) {
  return std::make_unique<Conv2dCuda>(c, index, in);
}

}  // namespace dptrain
