// Linear on CUDA: cuBLAS GEMMs on the row-major tensors (read by cuBLAS as their column-major
// transposes) and the bias kernels.
#include "cuda/check.h"
#include "cuda/cuda_context.h"
#include "cuda/cuda_layers.h"
#include "kernels/layer_kernels.h"
#include "layers/linear.h"

namespace dptrain {

namespace {

constexpr float kOne = 1.0f, kZero = 0.0f;

class LinearCuda final : public LinearLayer<float> {
 public:
  using LinearLayer<float>::LinearLayer;

  void forward(DeviceContext& ctx, TensorView<const float> in, TensorView<float> out, Phase, const StepInfo&) override {
    const int n = in.n, fi = in_features(), fo = out_features();
    // y^T[fo, n] = W[fo, fi] x^T[fi, n]  (W^T and x^T are what cuBLAS sees)
    CUBLAS_CHECK(cublasSgemm(ctx.cuda().cublas(), CUBLAS_OP_T, CUBLAS_OP_N, fo, n, fi, &kOne, params()[0].value.data(),
                             fi, in.data, fi, &kZero, out.data, fo));
    kernels::add_bias_rows(out.data, params()[1].value.data(), n, fo, ctx.cuda().stream());
  }

  void backward(DeviceContext& ctx, TensorView<const float> in, TensorView<const float>, TensorView<const float> dout,
                TensorView<float> din) override {
    const int n = in.n, fi = in_features(), fo = out_features();
    cublasHandle_t h = ctx.cuda().cublas();
    // dW^T[fi, fo] = x^T[fi, n] dy[n, fo]
    CUBLAS_CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_T, fi, fo, n, &kOne, in.data, fi, dout.data, fo, &kZero,
                             params()[0].grad.data(), fi));
    kernels::bias_grad_rows(dout.data, params()[1].grad.data(), n, fo, ctx.cuda().stream());
    // dx^T[fi, n] = W^T[fi, fo] dy^T[fo, n]
    if (din.data != nullptr)
      CUBLAS_CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, fi, n, fo, &kOne, params()[0].value.data(), fi, dout.data,
                               fo, &kZero, din.data, fi));
  }
};

}  // namespace

std::unique_ptr<Layer<float>> make_linear_cuda(const LayerConfig& c, int index, Dims in) {
  return std::make_unique<LinearCuda>(c, index, in);
}

}  // namespace dptrain
