// Linear on CUDA. At training batch sizes (up to kSkinnyRows rows) in float32, dptrain's skinny GEMMs
// (kernels/skinny_gemm.h), whose forward also adds the bias and applies an absorbed ReLU and
// dropout; an evaluation batch of any size runs them over blocks of kSkinnyRows rows. At larger
// training batches, in TF32, and for a GEMM too large for their 32-bit indexing,
// cuBLAS GEMMs on the row-major tensors (read by cuBLAS as their column-major transposes) and the
// bias kernel. As the model's last layer, its backward may take the loss in (one launch:
// kernels/classifier_kernels.h); as the first of the linear layers that end a classifier, it may
// compute them all with the loss, two launches in all (kernels/linear_head.h).
#include <algorithm>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/buffer.h"
#include "core/cuda_check.h"
#include "core/cuda_context.h"
#include "layers/cuda/cuda_layers.h"
#include "layers/cuda/fused_dropout.h"
#include "kernels/classifier_kernels.h"
#include "kernels/layer_kernels.h"
#include "kernels/linear_head.h"
#include "kernels/skinny_gemm.h"
#include "layers/linear.h"

namespace dptrain {

namespace {

constexpr float kOne = 1.0f, kZero = 0.0f;
constexpr int kSkinnyRows = 256;

/// A training GEMM of a batch of at most kSkinnyRows samples that the skinny kernels serve, in
/// float32. With TF32 allowed, cuBLAS's tensor cores win at every batch (H100, same call: lenet5's
/// step at batch 64 0.0945 ms against 0.1036 on the skinny kernels, at 256 0.1293 against 0.1444;
/// mnist_cnn's 0.1868 against 0.2008 and 0.5330 against 0.5820).
bool skinny(const CudaContext& cu, const kernels::SkinnyGemm& g, int batch) {
  return !cu.options().tf32 && batch <= kSkinnyRows && kernels::skinny_gemm_fits(g);
}

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
    const size_t partials =
        kernels::skinny_gemm_partials(std::min(max_batch, kSkinnyRows), out_features(), in_features());
    if (partials_.size() < partials) partials_ = Buffer<float>(Device::Cuda, partials);
    const size_t head_partials = head_.empty() ? 0 : kernels::linear_head_loss_partials(max_batch);
    if (head_partials_.size() < head_partials) head_partials_ = Buffer<double>(Device::Cuda, head_partials);
    if (!head_.empty() && head_arrivals_.size() == 0) {
      head_arrivals_ = Buffer<uint32_t>(Device::Cuda, 1);
      head_arrivals_.zero();
    }
  }

  void forward(DeviceContext& ctx, TensorView<const float> in, TensorView<float> out, Phase phase,
               const StepInfo&) override {
    const int n = in.n, fi = in_features(), fo = out_features();
    const kernels::FusedDropout drop = make_fused_dropout(dropout_, phase, ctx, fo);
    cudaStream_t stream = ctx.cuda().stream();
    const kernels::RowEpilogue epilogue{params()[1].value.data(), relu_, drop};
    // y[n, fo] = x[n, fi] W[fo, fi]^T + b
    const kernels::SkinnyGemm g{in.data, false, params()[0].value.data(), true, out.data, n, fo, fi};
    if (skinny(ctx.cuda(), g, n)) return kernels::skinny_gemm(g, epilogue, partials_.data(), stream);
    // Evaluation batches over kSkinnyRows: the skinny kernels over blocks of kSkinnyRows rows (no
    // dropout here, the one epilogue that reads the row). A run whose training batch they serve then
    // never calls cuBLAS: its first GEMM in a process costs 65 to 90 ms (H100, CUDA 13: mnist_cnn's
    // and mnist_fast's first test pass 70 to 83 ms at batch 1000 and 2000, 4.7 ms in blocks of 256),
    // more than every later test pass of a run together.
    const kernels::SkinnyGemm block{in.data, false, params()[0].value.data(), true, out.data, kSkinnyRows, fo, fi};
    if (phase == Phase::Eval && kernels::skinny_gemm_fits(block)) {
      for (int first = 0; first < n; first += kSkinnyRows) {
        kernels::SkinnyGemm b = block;
        b.a = in.data + static_cast<size_t>(first) * fi;
        b.c = out.data + static_cast<size_t>(first) * fo;
        b.m = std::min(kSkinnyRows, n - first);
        kernels::skinny_gemm(b, epilogue, partials_.data(), stream);
      }
      return;
    }
    // y^T[fo, n] = W[fo, fi] x^T[fi, n]  (W^T and x^T are what cuBLAS sees)
    CUBLAS_CHECK(cublasSgemm(ctx.cuda().cublas(), CUBLAS_OP_T, CUBLAS_OP_N, fo, n, fi, &kOne, params()[0].value.data(),
                             fi, in.data, fi, &kZero, out.data, fo));
    kernels::add_bias_rows(out.data, params()[1].value.data(), n, fo, relu_, drop, stream);
  }

  // With an absorbed ReLU, dout is dL/d(ReLU output); the bias-gradient pass masks it (out > 0).
  // With an absorbed dropout, dout is dL/d(dropout output), which that pass multiplies by the mask.
  // When an input gradient follows, it runs first, alone: the layer below waits for it. The weight
  // gradient then goes to the side stream (cuda_context.h), beside the layer below's backward (side
  // by side, fc1's two GEMMs took 21.8 us for the input gradient instead of 14; H200).
  void backward(DeviceContext& ctx, TensorView<const float> in, TensorView<const float> out,
                TensorView<const float> dout, TensorView<float> din) override {
    const int n = in.n, fi = in_features(), fo = out_features();
    CudaContext& cu = ctx.cuda();
    kernels::bias_grad_rows(dout.data, relu_ ? out.data : nullptr, masked_.data(), params()[1].grad.data(), n, fo,
                            make_fused_dropout(dropout_, Phase::Train, ctx, fo), cu.stream());
    const float* dy = relu_ || dropout_ ? masked_.data() : dout.data;
    const bool side = din.data != nullptr;
    if (side) {
      // dx[n, fi] = dy[n, fo] W[fo, fi]  (cuBLAS: dx^T[fi, n] = W^T[fi, fo] dy^T[fo, n])
      const kernels::SkinnyGemm dx{dy, false, params()[0].value.data(), false, din.data, n, fi, fo};
      if (skinny(cu, dx, n))
        kernels::skinny_gemm(dx, {}, nullptr, cu.stream());
      else
        CUBLAS_CHECK(cublasSgemm(cu.cublas(), CUBLAS_OP_N, CUBLAS_OP_N, fi, n, fo, &kOne, params()[0].value.data(), fi,
                                 dy, fo, &kZero, din.data, fi));
    }
    weight_grad(cu, dy, in.data, n, side ? cu.fork() : cu.stream(), side ? cu.side_cublas() : cu.cublas());
  }

  // A classifier head: this layer and the linear layers after it, without dropouts, in two launches
  // (kernels/linear_head.h). Their weight and bias gradients follow on the side stream.
  bool absorb_head(DeviceContext& ctx, std::span<Layer<float>* const> rest) override {
    if (!ctx.cuda().options().fuse_elementwise || dropout_ || rest.size() + 1 > kernels::kHeadMaxLayers) return false;
    std::vector<LinearCuda*> layers{this};
    for (Layer<float>* layer : rest) {
      auto* linear = dynamic_cast<LinearCuda*>(layer);
      if (linear == nullptr || linear->dropout_) return false;
      layers.push_back(linear);
    }
    head_ = std::move(layers);
    if (!kernels::linear_head_fits(head())) {
      head_.clear();
      return false;
    }
    ctx.cuda().note_choice(name() + " to " + rest.back()->name() + ": one linear head of " + std::to_string(head_.size()) +
                           " layers (kernels/linear_head.h)");
    return true;
  }

  void forward_head(DeviceContext& ctx, TensorView<const float> in, std::span<const TensorView<float>> outs, Phase,
                    const StepInfo&) override {
    float* y[kernels::kHeadMaxLayers] = {};
    for (size_t l = 0; l < head_.size(); ++l) y[l] = outs[l].data;
    kernels::linear_head_forward(head(), in.data, y, in.n, ctx.cuda().stream());
  }

  void backward_head_with_loss(DeviceContext& ctx, TensorView<const float> in, std::span<const TensorView<float>> outs,
                               const int32_t* labels, float grad_scale, float label_smoothing, double* sums,
                               std::span<const TensorView<float>> douts, TensorView<float> din) override {
    CudaContext& cu = ctx.cuda();
    const int n = in.n;
    const float* y[kernels::kHeadMaxLayers] = {};
    float* g[kernels::kHeadMaxLayers] = {};
    for (size_t l = 0; l < head_.size(); ++l) y[l] = outs[l].data, g[l] = douts[l].data;
    if (kernels::linear_head_loss_partials(n) > head_partials_.size())
      throw std::logic_error("LinearCuda: a head batch of " + std::to_string(n) + " needs reserve() for at least that batch");
    const kernels::HeadLoss loss{labels, grad_scale, label_smoothing, sums, {head_partials_.data(), head_arrivals_.data()}};
    kernels::linear_head_backward(head(), y, n, loss, g, din.data, cu.stream());
    // Each layer's dW = g^T x and db = the column sums of g, beside the layers below.
    cudaStream_t side = cu.fork();
    for (size_t l = 0; l < head_.size(); ++l) {
      LinearCuda& layer = *head_[l];
      const int fo = layer.out_features();
      const float* x = l == 0 ? in.data : y[l - 1];
      kernels::bias_grad_rows(g[l], nullptr, nullptr, layer.params()[1].grad.data(), n, fo, {}, side);
      layer.weight_grad(cu, g[l], x, n, side, cu.side_cublas());
    }
  }

  // The last layer of a classifier, without a ReLU or dropout of its own: one launch.
  bool backward_with_loss(DeviceContext& ctx, TensorView<const float> in, TensorView<const float> out,
                          const int32_t* labels, float grad_scale, float label_smoothing, double* sums,
                          TensorView<float> dout, TensorView<float> din) override {
    const int n = in.n, fi = in_features(), fo = out_features();
    if (relu_ || dropout_ || !kernels::linear_loss_backward_fits(n, fo, fi)) return false;
    kernels::linear_loss_backward({in.data, params()[0].value.data(), out.data, labels, n, fo, fi, grad_scale,
                                   label_smoothing, dout.data, sums, params()[0].grad.data(), params()[1].grad.data(), din.data},
                                  ctx.cuda().stream());
    return true;
  }

 private:
  /// dW[fo, fi] = dy^T[fo, n] x[n, fi] on `stream` (cuBLAS: dW^T[fi, fo] = x^T[fi, n] dy[n, fo], on
  /// `blas`, the handle bound to that stream).
  void weight_grad(const CudaContext& cu, const float* dy, const float* x, int n, cudaStream_t stream,
                   cublasHandle_t blas) {
    const int fi = in_features(), fo = out_features();
    const kernels::SkinnyGemm dw{dy, true, x, false, params()[0].grad.data(), fo, fi, n};
    if (skinny(cu, dw, n))
      kernels::skinny_gemm(dw, {}, nullptr, stream);
    else
      CUBLAS_CHECK(cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_T, fi, fo, n, &kOne, x, fi, dy, fo, &kZero,
                               params()[0].grad.data(), fi));
  }

  /// The head this layer leads (absorb_head), with the parameters bound now.
  kernels::LinearHead head() {
    kernels::LinearHead h;
    h.layers = static_cast<int>(head_.size());
    h.width[0] = in_features();
    for (size_t l = 0; l < head_.size(); ++l) {
      LinearCuda& layer = *head_[l];
      h.width[l + 1] = layer.out_features();
      h.relu[l] = layer.relu_;
      h.w[l] = layer.params().empty() ? nullptr : layer.params()[0].value.data();
      h.b[l] = layer.params().empty() ? nullptr : layer.params()[1].value.data();
    }
    return h;
  }

  bool relu_ = false;     // applies the ReLU that follows (absorb_following_relu)
  std::optional<DropoutSpec> dropout_;  // absorbed (absorb_following_dropout)
  Buffer<float> masked_;  // with relu_ or dropout_: the gradient after their masks
  Buffer<float> partials_;  // a split skinny forward's slice sums
  std::vector<LinearCuda*> head_;  // with absorb_head: this layer and the rest of the head, in order
  Buffer<double> head_partials_;    // the head's loss: block sums (kernels::HeadLoss)
  Buffer<uint32_t> head_arrivals_;  // and their ticket, zero between launches
};

}  // namespace

std::unique_ptr<Layer<float>> make_linear_cuda(const LayerConfig& c, int index, Dims in) {
  return std::make_unique<LinearCuda>(c, index, in);
}

}  // namespace dptrain
