// Conv2d on CUDA through cuDNN: forward, backward-data, backward-filter and the bias gradient.
// Algorithms are chosen once per batch size: by measurement (cudnnFind*) when
// train.cudnn_benchmark is on, by cuDNN's heuristics otherwise, and only among deterministic
// algorithms (so a run repeats bit for bit) unless train.deterministic is off. float32 forbids TF32
// (CUDNN_FMA_MATH); tf32 allows it. Convolutions with a short reduction per output (a first layer
// on one-channel images) run forward and filter gradient on dptrain's direct kernels instead
// (kernels/conv_kernels.h says why); their input gradient, when needed, stays with cuDNN.
#include <algorithm>
#include <string>
#include <vector>

#include "cuda/check.h"
#include "cuda/cuda_context.h"
#include "cuda/cuda_layers.h"
#include "cuda/cudnn_descriptors.h"
#include "kernels/conv_kernels.h"
#include "kernels/layer_kernels.h"
#include "layers/conv2d.h"

namespace dptrain {

namespace {

constexpr float kOne = 1.0f, kZero = 0.0f;
constexpr size_t kMaxWorkspace = size_t{256} << 20;

/// The first acceptable result of a Find or heuristic query (results come best first).
template <typename Perf>
Perf pick(const Perf* results, int count, bool deterministic, const char* what) {
  for (int i = 0; i < count; ++i)
    if (results[i].status == CUDNN_STATUS_SUCCESS && results[i].memory <= kMaxWorkspace &&
        (!deterministic || results[i].determinism == CUDNN_DETERMINISTIC))
      return results[i];
  throw CudaError(std::string("cuDNN offers no ") + (deterministic ? "deterministic " : "") + what +
                  " algorithm for this convolution");
}

class Conv2dCuda final : public Conv2dLayer<float> {
 public:
  using Conv2dLayer<float>::Conv2dLayer;

  void reserve(DeviceContext& ctx, int max_batch) override {
    if (!filter_) create_descriptors(ctx.cuda().options().tf32);
    plan(ctx, max_batch);
  }

  void forward(DeviceContext& ctx, TensorView<const float> in, TensorView<float> out, Phase, const StepInfo&) override {
    const Plan& p = plan(ctx, in.n);
    cudnnHandle_t h = ctx.cuda().cudnn();
    if (direct_) {
      kernels::conv_direct_forward(in.data, params()[0].value.data(), params()[1].value.data(), out.data,
                                   geometry(in.n), ctx.cuda().stream());
      return;
    }
    void* ws = ctx.cuda().workspace(p.workspace);
    CUDNN_CHECK(cudnnConvolutionForward(h, &kOne, p.x, in.data, filter_, params()[0].value.data(), conv_, p.fwd, ws,
                                        p.workspace, &kZero, p.y, out.data));
    CUDNN_CHECK(cudnnAddTensor(h, &kOne, bias_, params()[1].value.data(), &kOne, p.y, out.data));
  }

  void backward(DeviceContext& ctx, TensorView<const float> in, TensorView<const float>, TensorView<const float> dout,
                TensorView<float> din) override {
    const Plan& p = plan(ctx, in.n);
    cudnnHandle_t h = ctx.cuda().cudnn();
    void* ws = ctx.cuda().workspace(p.workspace);
    if (direct_) {
      kernels::conv_direct_filter_grad(in.data, dout.data, params()[0].grad.data(), params()[1].grad.data(), ws,
                                       geometry(in.n), ctx.cuda().stream());
    } else {
      const Dims out = output_dims();
      kernels::bias_grad_channels(dout.data, params()[1].grad.data(), in.n, out.c, out.h * out.w, ctx.cuda().stream());
      CUDNN_CHECK(cudnnConvolutionBackwardFilter(h, &kOne, p.x, in.data, p.y, dout.data, conv_, p.bwd_filter, ws,
                                                 p.workspace, &kZero, filter_, params()[0].grad.data()));
    }
    if (din.data != nullptr)
      CUDNN_CHECK(cudnnConvolutionBackwardData(h, &kOne, filter_, params()[0].value.data(), p.y, dout.data, conv_,
                                               p.bwd_data, ws, p.workspace, &kZero, p.x, din.data));
  }

 private:
  struct Plan {
    int n = 0;
    CudnnTensorDesc x, y;
    cudnnConvolutionFwdAlgo_t fwd{};
    cudnnConvolutionBwdDataAlgo_t bwd_data{};
    cudnnConvolutionBwdFilterAlgo_t bwd_filter{};
    size_t workspace = 0;
  };

  kernels::ConvGeometry geometry(int n) const {
    const Dims in = input_dims(), out = output_dims();
    return {n, in.c, in.h, in.w, out.c, out.h, out.w, kernel(), stride(), padding()};
  }

  void create_descriptors(bool tf32) {
    const Dims in = input_dims();
    direct_ = kernels::direct_conv_fits(in.c, kernel());
    cudnnFilterDescriptor_t f = nullptr;
    CUDNN_CHECK(cudnnCreateFilterDescriptor(&f));
    filter_ = CudnnFilterDesc(f);
    CUDNN_CHECK(cudnnSetFilter4dDescriptor(f, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, out_channels(), in.c, kernel(), kernel()));
    cudnnConvolutionDescriptor_t c = nullptr;
    CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&c));
    conv_ = CudnnConvDesc(c);
    CUDNN_CHECK(cudnnSetConvolution2dDescriptor(c, padding(), padding(), stride(), stride(), 1, 1,
                                                CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    CUDNN_CHECK(cudnnSetConvolutionMathType(c, tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH));
    bias_ = make_tensor_desc(1, out_channels(), 1, 1);
  }

  const Plan& plan(DeviceContext& ctx, int n) {
    for (const Plan& p : plans_)
      if (p.n == n) return p;
    const Dims in = input_dims(), out = output_dims();
    Plan p;
    p.n = n;
    p.x = make_tensor_desc(n, in.c, in.h, in.w);
    p.y = make_tensor_desc(n, out.c, out.h, out.w);
    cudnnHandle_t h = ctx.cuda().cudnn();
    constexpr int kMax = 16;
    int found = 0;
    const bool det = ctx.cuda().options().deterministic;
    if (ctx.cuda().options().cudnn_benchmark) {
      cudnnConvolutionFwdAlgoPerf_t f[kMax];
      CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithm(h, p.x, filter_, conv_, p.y, kMax, &found, f));
      p.fwd = pick(f, found, det, "forward").algo;
      cudnnConvolutionBwdDataAlgoPerf_t d[kMax];
      CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithm(h, filter_, p.y, conv_, p.x, kMax, &found, d));
      p.bwd_data = pick(d, found, det, "backward-data").algo;
      cudnnConvolutionBwdFilterAlgoPerf_t w[kMax];
      CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithm(h, p.x, p.y, conv_, filter_, kMax, &found, w));
      p.bwd_filter = pick(w, found, det, "backward-filter").algo;
    } else {
      cudnnConvolutionFwdAlgoPerf_t f[kMax];
      CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(h, p.x, filter_, conv_, p.y, kMax, &found, f));
      p.fwd = pick(f, found, det, "forward").algo;
      cudnnConvolutionBwdDataAlgoPerf_t d[kMax];
      CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(h, filter_, p.y, conv_, p.x, kMax, &found, d));
      p.bwd_data = pick(d, found, det, "backward-data").algo;
      cudnnConvolutionBwdFilterAlgoPerf_t w[kMax];
      CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, p.x, p.y, conv_, filter_, kMax, &found, w));
      p.bwd_filter = pick(w, found, det, "backward-filter").algo;
    }
    size_t a = 0, b = 0, c = 0;
    CUDNN_CHECK(cudnnGetConvolutionForwardWorkspaceSize(h, p.x, filter_, conv_, p.y, p.fwd, &a));
    CUDNN_CHECK(cudnnGetConvolutionBackwardDataWorkspaceSize(h, filter_, p.y, conv_, p.x, p.bwd_data, &b));
    CUDNN_CHECK(cudnnGetConvolutionBackwardFilterWorkspaceSize(h, p.x, p.y, conv_, filter_, p.bwd_filter, &c));
    p.workspace = std::max({a, b, c, direct_ ? kernels::conv_direct_filter_grad_scratch(geometry(n)) : size_t{0}});
    ctx.cuda().workspace(p.workspace);  // grow now, never inside a step
    plans_.push_back(std::move(p));
    return plans_.back();
  }

  bool direct_ = false;
  CudnnFilterDesc filter_;
  CudnnConvDesc conv_;
  CudnnTensorDesc bias_;
  std::vector<Plan> plans_;
};

}  // namespace

std::unique_ptr<Layer<float>> make_conv2d_cuda(const LayerConfig& c, int index, Dims in) {
  return std::make_unique<Conv2dCuda>(c, index, in);
}

}  // namespace dptrain
