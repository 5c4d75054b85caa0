#include "layers/cuda/conv_executor.h"

#include "core/cuda_check.h"
#include "layers/cuda/cudnn_descriptors.h"
#include "kernels/conv_reference.h"
#include "kernels/conv_small.h"
#include "kernels/conv_tiled.h"
#include "kernels/layer_kernels.h"

namespace dptrain {

namespace {
constexpr float kOne = 1.0f, kZero = 0.0f;
}  // namespace

std::string label(const ConvAlgo& a) {
  switch (a.impl) {
    case ConvImpl::Direct:
      return "direct";
    case ConvImpl::Tiled:
      return "tiled";
    case ConvImpl::Mma:
      return "mma";
    case ConvImpl::Small:
      return "small";
    case ConvImpl::Reference:
      return "the reference kernels";
    case ConvImpl::Cudnn:
      break;
  }
  std::string s = "cuDNN " + std::to_string(a.cudnn);
  if (a.chunk > 0) s += " in chunks of " + std::to_string(a.chunk);
  return s;
}

const ConvBatch::Chunk& ConvBatch::chunk(int samples) const {
  for (const Chunk& c : chunks)
    if (c.n == samples) return c;
  throw CudaError("ConvBatch: no descriptors for chunks of " + std::to_string(samples));
}

ConvExecutor::ConvExecutor(Dims in, Dims out, int kernel, int stride, int padding, bool tf32, bool relu, bool pooled)
    : in_(in),
      out_(out),
      kernel_(kernel),
      stride_(stride),
      padding_(padding),
      tf32_(tf32),
      relu_(relu),
      pooled_(pooled),
      math_(tf32 ? kernels::MmaMath::Tf32 : kernels::MmaMath::SplitTf32) {
  cudnnFilterDescriptor_t f = nullptr;
  CUDNN_CHECK(cudnnCreateFilterDescriptor(&f));
  filter_ = CudnnFilterDesc(f);
  CUDNN_CHECK(cudnnSetFilter4dDescriptor(f, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, out.c, in.c, kernel, kernel));
  cudnnConvolutionDescriptor_t c = nullptr;
  CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&c));
  conv_ = CudnnConvDesc(c);
  CUDNN_CHECK(cudnnSetConvolution2dDescriptor(c, padding, padding, stride, stride, 1, 1, CUDNN_CROSS_CORRELATION,
                                              CUDNN_DATA_FLOAT));
  CUDNN_CHECK(cudnnSetConvolutionMathType(c, tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH));
}

kernels::ConvGeometry ConvExecutor::geometry(int n) const {
  return {n, in_.c, in_.h, in_.w, out_.c, out_.h, out_.w, kernel_, stride_, padding_};
}

ConvBatch ConvExecutor::batch(int n) const {
  ConvBatch b;
  b.n = n;
  b.x = make_tensor_desc(n, in_.c, in_.h, in_.w);
  b.y = make_tensor_desc(n, out_.c, out_.h, out_.w);
  return b;
}

void ConvExecutor::add_chunk(ConvBatch& b, int samples) const {
  for (const ConvBatch::Chunk& c : b.chunks)
    if (c.n == samples) return;
  b.chunks.push_back(
      {samples, make_tensor_desc(samples, in_.c, in_.h, in_.w), make_tensor_desc(samples, out_.c, out_.h, out_.w)});
}

size_t ConvExecutor::bytes(const ConvAlgo& a, int n) const {
  if (a.impl == ConvImpl::Direct) return kernels::conv_direct_filter_grad_scratch(geometry(n));
  if (a.impl == ConvImpl::Tiled) return kernels::tiled_conv_scratch(geometry(n));
  if (a.impl == ConvImpl::Mma) return kernels::mma_conv_scratch(geometry(n));
  if (a.impl == ConvImpl::Small) return kernels::small_conv_scratch(geometry(n));
  if (a.impl == ConvImpl::Reference) return 0;
  return a.memory;
}

std::vector<ConvImpl> ConvExecutor::own_kernels(int n, bool exact, ConvDirection d) const {
  std::vector<ConvImpl> impls;
  const kernels::ConvGeometry g = geometry(n);
  if (kernels::direct_conv_fits(g.c, g.k)) {
    if (kernels::direct_conv_fits(g) && d != ConvDirection::Data &&
        (d == ConvDirection::Forward || kernels::conv_direct_filter_grad_scratch(g) <= kMaxConvWorkspace))
      impls.push_back(ConvImpl::Direct);
    return impls;
  }
  if (kernels::tiled_conv_fits(g)) impls.push_back(ConvImpl::Tiled);
  if (!exact && kernels::mma_conv_fits(g))
    impls.insert(math_ == kernels::MmaMath::Tf32 ? impls.begin() : impls.end(), ConvImpl::Mma);
  if (kernels::small_conv_fits(g)) impls.push_back(ConvImpl::Small);
  return impls;
}

template <typename F>
void ConvExecutor::for_each_chunk(const ConvBatch& b, const ConvAlgo& a, F f) const {
  if (a.chunk == 0) return f(b.x.get(), b.y.get(), 0);
  const ConvBatch::Chunk& c = b.chunk(a.chunk);
  for (int first = 0; first < b.n; first += a.chunk) f(c.x.get(), c.y.get(), first);
}

void ConvExecutor::forward(cudnnHandle_t h, cudaStream_t stream, void* ws, const ConvBatch& b, const ConvAlgo& a,
                           const float* x, const float* w, const float* bias, float* y) const {
  const kernels::ConvGeometry g = geometry(b.n);
  const bool relu = relu_ && !pooled_;
  if (pooled_) bias = nullptr;
  if (a.impl == ConvImpl::Direct) return kernels::conv_direct_forward(x, w, bias, y, relu, g, stream);
  if (a.impl == ConvImpl::Tiled) return kernels::tiled_conv_forward(x, w, bias, y, relu, g, stream);
  if (a.impl == ConvImpl::Mma) return kernels::mma_conv_forward(x, w, bias, y, relu, ws, math_, g, stream);
  if (a.impl == ConvImpl::Small) return kernels::small_conv_forward(x, w, bias, y, relu, g, stream);
  if (a.impl == ConvImpl::Reference) return kernels::reference_conv_forward(x, w, bias, y, relu, g, stream);
  const size_t xs = in_.count(), ys = out_.count();
  for_each_chunk(b, a, [&](cudnnTensorDescriptor_t xd, cudnnTensorDescriptor_t yd, int first) {
    CUDNN_CHECK(cudnnConvolutionForward(h, &kOne, xd, x + first * xs, filter_, w, conv_,
                                        static_cast<cudnnConvolutionFwdAlgo_t>(a.cudnn), ws, a.memory, &kZero, yd,
                                        y + first * ys));
  });
  if (bias != nullptr) kernels::add_bias_channels(y, bias, b.n, g.oc, g.oh * g.ow, relu, stream);
}

void ConvExecutor::backward_data(cudnnHandle_t h, cudaStream_t stream, void* ws, const ConvBatch& b, const ConvAlgo& a,
                                 const float* dy, const float* w, float* dx) const {
  const kernels::ConvGeometry g = geometry(b.n);
  if (a.impl == ConvImpl::Tiled) return kernels::tiled_conv_backward_data(dy, w, dx, ws, g, stream);
  if (a.impl == ConvImpl::Mma) return kernels::mma_conv_backward_data(dy, w, dx, ws, math_, g, stream);
  if (a.impl == ConvImpl::Small) return kernels::small_conv_backward_data(dy, w, dx, g, stream);
  if (a.impl == ConvImpl::Reference) return kernels::reference_conv_backward_data(dy, w, dx, g, stream);
  if (a.impl == ConvImpl::Direct) throw CudaError("the direct convolution kernels compute no input gradient");
  const size_t xs = in_.count(), ys = out_.count();
  for_each_chunk(b, a, [&](cudnnTensorDescriptor_t xd, cudnnTensorDescriptor_t yd, int first) {
    CUDNN_CHECK(cudnnConvolutionBackwardData(h, &kOne, filter_, w, yd, dy + first * ys, conv_,
                                             static_cast<cudnnConvolutionBwdDataAlgo_t>(a.cudnn), ws, a.memory, &kZero,
                                             xd, dx + first * xs));
  });
}

const float* ConvExecutor::masked_gradient(cudaStream_t stream, int n, const ConvAlgo& filter, const float* dout,
                                           const float* out, float* masked, float* db, float* partials) const {
  if (filter.impl != ConvImpl::Cudnn) {
    if (!relu_) return dout;
    kernels::relu_backward(dout, out, masked, static_cast<size_t>(n) * out_.count(), stream);
    return masked;
  }
  kernels::bias_grad_channels(dout, relu_ ? out : nullptr, relu_ ? masked : nullptr, db, partials, n, out_.c,
                              out_.h * out_.w, stream);
  return relu_ ? masked : dout;
}

void ConvExecutor::filter_grad(cudnnHandle_t h, cudaStream_t stream, void* ws, const ConvBatch& b, const ConvAlgo& a,
                               const float* x, const float* dy, float* dw, float* db) const {
  const kernels::ConvGeometry g = geometry(b.n);
  if (a.impl == ConvImpl::Direct) return kernels::conv_direct_filter_grad(x, dy, nullptr, dw, db, ws, g, stream);
  if (a.impl == ConvImpl::Tiled) return kernels::tiled_conv_filter_grad(x, dy, dw, db, ws, g, stream);
  if (a.impl == ConvImpl::Mma) return kernels::mma_conv_filter_grad(x, dy, dw, db, ws, math_, g, stream);
  if (a.impl == ConvImpl::Small) return kernels::small_conv_filter_grad(x, dy, dw, db, ws, g, stream);
  if (a.impl == ConvImpl::Reference) return kernels::reference_conv_filter_grad(x, dy, dw, db, g, stream);
  const size_t xs = in_.count(), ys = out_.count();
  for_each_chunk(b, a, [&](cudnnTensorDescriptor_t xd, cudnnTensorDescriptor_t yd, int first) {
    CUDNN_CHECK(cudnnConvolutionBackwardFilter(h, &kOne, xd, x + first * xs, yd, dy + first * ys, conv_,
                                               static_cast<cudnnConvolutionBwdFilterAlgo_t>(a.cudnn), ws, a.memory,
                                               first == 0 ? &kZero : &kOne, filter_, dw));
  });
}

}  // namespace dptrain
