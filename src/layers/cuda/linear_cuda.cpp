// Linear on CUDA. At training batch sizes (up to kSkinnyRows rows) in float32, dptrain's skinny GEMMs
// (kernels/skinny_gemm.h), whose forward also adds the bias and applies an absorbed ReLU and
// dropout; an evaluation batch of any size runs them over blocks of kSkinnyRows rows. At larger
// training batches, in TF32, and for a GEMM too large for their 32-bit indexing,
// cuBLAS GEMMs on the row-major tensors (read by cuBLAS as their column-major transposes); the
// forward's bias and ReLU in cuBLASLt's epilogue (layers/cuda/bias_gemm.h), or, with an absorbed
// dropout in training, in the bias kernel after cuBLAS's GEMM. As a classifier's last layer (up to
// 32 classes), its backward takes the loss in at any batch (one launch: kernels/classifier_kernels.h).
#include <algorithm>
#include <optional>

#include "core/buffer.h"
#include "core/cuda_check.h"
#include "core/cuda_context.h"
#include "layers/cuda/bias_gemm.h"
#include "layers/cuda/cuda_layers.h"
#include "layers/cuda/fused_dropout.h"
#include "kernels/classifier_kernels.h"
#include "kernels/layer_kernels.h"
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

  void reserve(DeviceContext& ctx, int max_batch) override {
    if (!bias_gemm_) bias_gemm_.emplace(out_features(), in_features(), relu_, ctx.cuda().options().tf32);
    const size_t need = relu_ || dropout_ ? static_cast<size_t>(max_batch) * out_features() : 0;
    if (masked_.size() < need) masked_ = Buffer<float>(Device::Cuda, need);
    const size_t partials =
        kernels::skinny_gemm_partials(std::min(max_batch, kSkinnyRows), out_features(), in_features());
    if (partials_.size() < partials) partials_ = Buffer<float>(Device::Cuda, partials);
    // As a classifier's last layer (backward_with_loss): past one tile of samples, the tiles' sums.
    const kernels::LinearLossScratchSize loss = kernels::linear_loss_backward_scratch(max_batch, out_features(), in_features());
    if (loss_partials_.size() < loss.floats) loss_partials_ = Buffer<float>(Device::Cuda, loss.floats);
    if (loss_sums_.size() < loss.doubles) loss_sums_ = Buffer<double>(Device::Cuda, loss.doubles);
    if (loss_arrivals_.size() < loss.counters) {
      loss_arrivals_ = Buffer<uint32_t>(Device::Cuda, loss.counters);
      loss_arrivals_.zero();
    }
  }

  // Where the forward of `batch` rows takes cuBLAS, cuBLASLt's algorithm for it is chosen now (the
  // activations are whole allocations, 256-byte aligned; the parameters are views that may not be).
  void plan(DeviceContext& ctx, int batch, bool backward) override {
    CudaContext& cu = ctx.cuda();
    const float* w = params()[0].value.data();
    const kernels::SkinnyGemm g{nullptr, false, w, true, nullptr, batch, out_features(), in_features()};
    const kernels::SkinnyGemm block{nullptr, false, w, true, nullptr, kSkinnyRows, out_features(), in_features()};
    if (!bias_gemm_ || skinny(cu, g, batch) || (!backward && kernels::skinny_gemm_fits(block))) return;
    const uint32_t alignment = std::min({BiasGemm::alignment_of(w), BiasGemm::alignment_of(params()[1].value.data()),
                                         BiasGemm::alignment_of(cu.cublas_workspace())});
    (void)bias_gemm_->prepare(cu.cublaslt(), batch, alignment, cu.cublas_workspace_size());
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
    // Evaluation batches that skinny() leaves out (over kSkinnyRows rows; in TF32, all): the float32 skinny
    // kernels over blocks of kSkinnyRows rows (no dropout here, the one epilogue that reads the row). A float32 run
    // whose training batch they serve then never calls cuBLAS: its first GEMM in a process costs 65 to 90 ms (H100,
    // CUDA 13: mnist_cnn's and mnist_fast's first test pass 70 to 83 ms at batch 1000 and 2000, 4.7 ms in blocks
    // of 256), more than every later test pass of a run together.
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
    // y^T[fo, n] = W[fo, fi] x^T[fi, n]  (W^T and x^T are what cuBLAS sees), the bias and ReLU in the epilogue
    CudaContext& cu = ctx.cuda();
    if (!drop.active() && bias_gemm_ &&
        bias_gemm_->run(cu.cublaslt(), in.data, params()[0].value.data(), params()[1].value.data(), out.data, n,
                        cu.cublas_workspace(), cu.cublas_workspace_size(), stream))
      return;
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
    // dW[fo, fi] = dy^T[fo, n] x[n, fi]  (cuBLAS: dW^T[fi, fo] = x^T[fi, n] dy[n, fo])
    cudaStream_t weights_stream = side ? cu.fork() : cu.stream();
    const kernels::SkinnyGemm dw{dy, true, in.data, false, params()[0].grad.data(), fo, fi, n};
    if (skinny(cu, dw, n))
      kernels::skinny_gemm(dw, {}, nullptr, weights_stream);
    else
      CUBLAS_CHECK(cublasSgemm(side ? cu.side_cublas() : cu.cublas(), CUBLAS_OP_N, CUBLAS_OP_T, fi, fo, n, &kOne,
                               in.data, fi, dy, fo, &kZero, params()[0].grad.data(), fi));
  }

  // The last layer of a classifier, without a ReLU or dropout of its own: one launch. A batch past the
  // reserved one has no scratch here; the model then runs the loss and backward() apart.
  bool backward_with_loss(DeviceContext& ctx, TensorView<const float> in, TensorView<const float> out,
                          const int32_t* labels, float grad_scale, float label_smoothing, double* sums,
                          TensorView<float> dout, TensorView<float> din) override {
    const int n = in.n, fi = in_features(), fo = out_features();
    if (relu_ || dropout_ || !kernels::linear_loss_backward_fits(n, fo, fi)) return false;
    const kernels::LinearLossScratchSize need = kernels::linear_loss_backward_scratch(n, fo, fi);
    if (need.floats > loss_partials_.size() || need.doubles > loss_sums_.size() || need.counters > loss_arrivals_.size())
      return false;
    kernels::linear_loss_backward({in.data, params()[0].value.data(), out.data, labels, n, fo, fi, grad_scale,
                                   label_smoothing, dout.data, sums, params()[0].grad.data(), params()[1].grad.data(),
                                   din.data, {loss_partials_.data(), loss_sums_.data(), loss_arrivals_.data()}},
                                  ctx.cuda().stream());
    return true;
  }

 private:
  bool relu_ = false;     // applies the ReLU that follows (absorb_following_relu)
  std::optional<DropoutSpec> dropout_;  // absorbed (absorb_following_dropout)
  Buffer<float> masked_;  // with relu_ or dropout_: the gradient after their masks
  Buffer<float> partials_;  // a split skinny forward's slice sums
  std::optional<BiasGemm> bias_gemm_;  // the cuBLAS forward with its bias (and ReLU) epilogue; from reserve()
  Buffer<float> loss_partials_;     // backward_with_loss: each tile's weight and bias sums
  Buffer<double> loss_sums_;        // ... each tile's loss and correct count
  Buffer<uint32_t> loss_arrivals_;  // ... blocks done in the running launch, per slice; the last resets it
};

}  // namespace

std::unique_ptr<Layer<float>> make_linear_cuda(const LayerConfig& c, int index, Dims in) {
  return std::make_unique<LinearCuda>(c, index, in);
}

}  // namespace dptrain
