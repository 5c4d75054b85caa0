// Linear on CUDA: cuBLAS GEMMs on the row-major tensors (read by cuBLAS as their column-major
// transposes) and the bias kernels, which also apply a following ReLU and dropout when the layer
// absorbed them.
#include <optional>

#include "core/buffer.h"
#include "cuda/check.h"
#include "cuda/cuda_context.h"
#include "cuda/cuda_layers.h"
#include "cuda/fused_dropout.h"
#include "kernels/layer_kernels.h"
#include "layers/linear.h"

namespace dptrain {

namespace {

constexpr float kOne = 1.0f, kZero = 0.0f;

class LinearCuda final : public LinearLayer<float> {
 public:
  using LinearLayer<float>::LinearLayer;

  bool absorb_following_relu(DeviceContext& ctx) override {
    relu_ = ctx.cuda().options().fuse_elementwise;
    return relu_;
  }

  bool absorb_following_dropout(DeviceContext& ctx, const DropoutSpec& dropout) override {
    if (!ctx.cuda().options().fuse_elementwise) return false;
    dropout_ = dropout;
    return true;
  }

  void reserve(DeviceContext&, int max_batch) override {
    const size_t need = relu_ || dropout_ ? static_cast<size_t>(max_batch) * out_features() : 0;
    if (masked_.size() < need) masked_ = Buffer<float>(Device::Cuda, need);
  }

  void forward(DeviceContext& ctx, TensorView<const float> in, TensorView<float> out, Phase phase,
               const StepInfo&) override {
    const int n = in.n, fi = in_features(), fo = out_features();
    // y^T[fo, n] = W[fo, fi] x^T[fi, n]  (W^T and x^T are what cuBLAS sees)
    CUBLAS_CHECK(cublasSgemm(ctx.cuda().cublas(), CUBLAS_OP_T, CUBLAS_OP_N, fo, n, fi, &kOne, params()[0].value.data(),
                             fi, in.data, fi, &kZero, out.data, fo));
    kernels::add_bias_rows(out.data, params()[1].value.data(), n, fo, relu_, make_fused_dropout(dropout_, phase, ctx, fo),
                           ctx.cuda().stream());
  }

  // With an absorbed ReLU, dout is dL/d(ReLU output); the bias-gradient pass masks it (out > 0).
  // With an absorbed dropout, dout is dL/d(dropout output), which that pass multiplies by the mask.
  // When an input gradient follows, the weight gradient goes to the side stream (cuda_context.h).
  void backward(DeviceContext& ctx, TensorView<const float> in, TensorView<const float> out,
                TensorView<const float> dout, TensorView<float> din) override {
    const int n = in.n, fi = in_features(), fo = out_features();
    CudaContext& cu = ctx.cuda();
    kernels::bias_grad_rows(dout.data, relu_ ? out.data : nullptr, masked_.data(), params()[1].grad.data(), n, fo,
                            make_fused_dropout(dropout_, Phase::Train, ctx, fo), cu.stream());
    const float* dy = relu_ || dropout_ ? masked_.data() : dout.data;
    const bool side = din.data != nullptr;
    if (side) cu.fork();
    // dW^T[fi, fo] = x^T[fi, n] dy[n, fo]
    CUBLAS_CHECK(cublasSgemm(side ? cu.side_cublas() : cu.cublas(), CUBLAS_OP_N, CUBLAS_OP_T, fi, fo, n, &kOne,
                             in.data, fi, dy, fo, &kZero, params()[0].grad.data(), fi));
    // dx^T[fi, n] = W^T[fi, fo] dy^T[fo, n]
    if (side)
      CUBLAS_CHECK(cublasSgemm(cu.cublas(), CUBLAS_OP_N, CUBLAS_OP_N, fi, n, fo, &kOne, params()[0].value.data(), fi,
                               dy, fo, &kZero, din.data, fi));
  }

 private:
  bool relu_ = false;     // applies the ReLU that follows (absorb_following_relu)
  std::optional<DropoutSpec> dropout_;  // absorbed (absorb_following_dropout)
  Buffer<float> masked_;  // with relu_ or dropout_: the gradient after their masks
};

}  // namespace

std::unique_ptr<Layer<float>> make_linear_cuda(const LayerConfig& c, int index, Dims in) {
  return std::make_unique<LinearCuda>(c, index, in);
}

}  // namespace dptrain
