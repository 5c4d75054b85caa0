// Conv2d on CUDA: forward, backward-data, backward-filter and the bias gradient. Each direction is
// computed by one implementation (Algo), chosen once per batch size:
// - cuDNN's algorithms, only deterministic ones (so a run repeats bit for bit) unless
//   train.deterministic is off. float32 forbids TF32 (CUDNN_FMA_MATH); tf32 allows it.
//   train.exact_convolutions forbids the FFT and Winograd algorithms (AlgoRules).
// - dptrain's direct kernels, for short reductions per output (a first layer on one-channel
//   images: kernels/conv_kernels.h says why), forward and filter gradient.
// - dptrain's 3x3 kernels: tensor-core ones (kernels/conv_mma.h: 3xTF32 in float32, TF32 under
//   train.precision tf32; not under exact_convolutions) and register-tiled FMA ones
//   (kernels/conv_tiled.h).
// - Where no allowed implementation serves the whole batch, cuDNN over sub-batches (a warning says so).
// Every candidate is first run once on random inputs and compared with cuDNN's plainest algorithm;
// one that disagrees or fails to run is dropped with a warning, so the planner never chooses a
// broken implementation. Under train.cudnn_benchmark the survivors are each timed inside a CUDA
// graph, as the step runs them (cuda/graph_timer.h; cudnnFind only proposes the candidates), and
// the fastest is kept; otherwise dptrain's kernels come first, then cuDNN's heuristic order.
// Batch sizes are planned before the first step (Layer::plan), so no workspace grows after a step
// was captured.
// A ReLU after the layer can be absorbed: the forward's epilogue applies it, and the backward masks
// the incoming gradient in the pass that sums the bias gradient (or in the direct kernel's staging).
// So can a max pooling after that (windows that tile the plane) and a dropout after the pooling:
// the convolution then runs without its bias, and one pass adds the bias, applies the ReLU, pools
// and drops out (kernels/pool_kernels.h: conv_pool_forward); backward, one pass spreads the pooled
// gradient over the windows, masked, and sums the bias gradient (conv_pool_backward).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <optional>
#include <utility>
#include <string>
#include <type_traits>
#include <vector>

#include "core/buffer.h"
#include "cuda/check.h"
#include "cuda/cuda_context.h"
#include "cuda/cuda_layers.h"
#include "cuda/cudnn_descriptors.h"
#include "cuda/fused_dropout.h"
#include "cuda/graph_timer.h"
#include "cuda/raii.h"
#include "kernels/compare_kernels.h"
#include "kernels/conv_kernels.h"
#include "kernels/conv_mma.h"
#include "kernels/conv_tiled.h"
#include "kernels/layer_kernels.h"
#include "kernels/pool_kernels.h"
#include "layers/conv2d.h"

namespace dptrain {

namespace {

constexpr float kOne = 1.0f, kZero = 0.0f;
constexpr size_t kMaxWorkspace = size_t{256} << 20;

/// Which cuDNN algorithms a run accepts. deterministic: only those that repeat bit for bit. exact
/// (train.exact_convolutions): no FFT or Winograd algorithm, whose transforms round differently from
/// a sum of products. Their error is about 1e-6 relative, harmless to training, but under Adadelta
/// it grows to 6e-4 of the parameters in 10 steps against the CPU reference (1e-7 without them).
struct AlgoRules {
  bool deterministic = true;
  bool exact = false;
};

AlgoRules algo_rules(const CudaOptions& o) { return {o.deterministic, o.exact_convolutions}; }

bool transforms(cudnnConvolutionFwdAlgo_t a) {
  return a == CUDNN_CONVOLUTION_FWD_ALGO_FFT || a == CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING ||
         a == CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD || a == CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED;
}
bool transforms(cudnnConvolutionBwdDataAlgo_t a) {
  return a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT || a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING ||
         a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD || a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED;
}
bool transforms(cudnnConvolutionBwdFilterAlgo_t a) {
  return a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT || a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING ||
         a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED;
}

template <typename Perf>
bool allowed(const Perf& r, AlgoRules rules) {
  return r.status == CUDNN_STATUS_SUCCESS && r.memory <= kMaxWorkspace &&
         (!rules.deterministic || r.determinism == CUDNN_DETERMINISTIC) && (!rules.exact || !transforms(r.algo));
}

/// Who computes one direction of a convolution: cuDNN, or one of dptrain's kernel families (the
/// direct kernels serve forward and the filter gradient, the 3x3 ones all three directions).
enum class Impl { Cudnn, Direct, Tiled, Mma };

/// One direction's algorithm: a cuDNN algorithm (its number and the workspace it asked for), or one
/// of dptrain's kernel families (whose scratch is the family's own size). chunk > 0: cuDNN over
/// sub-batches of `chunk` samples, the fallback where no allowed algorithm serves the whole batch.
struct Algo {
  Impl impl = Impl::Cudnn;
  int cudnn = 0;
  size_t memory = 0;
  int chunk = 0;
};

bool same(const Algo& a, const Algo& b) { return a.impl == b.impl && a.cudnn == b.cudnn && a.chunk == b.chunk; }

std::string label(const Algo& a) {
  switch (a.impl) {
    case Impl::Direct: return "direct";
    case Impl::Tiled: return "tiled";
    case Impl::Mma: return "mma";
    case Impl::Cudnn: break;
  }
  std::string s = "cuDNN " + std::to_string(a.cudnn);
  if (a.chunk > 0) s += " in chunks of " + std::to_string(a.chunk);
  return s;
}

template <typename Perf>
Algo cudnn_algo(const Perf& r) {
  return {Impl::Cudnn, static_cast<int>(r.algo), r.memory, 0};
}

/// Largest relative difference (||candidate - reference|| / ||reference||) a candidate may show and
/// still be used: the shape sweep's tolerances for FFT and Winograd (float32) and TF32, with room.
/// Rounding differences between correct implementations are below it (float32 sums, FFT, Winograd
/// and 3xTF32: 1e-7 to 1e-5; TF32 products: about 1e-3), and a kernel that reads or writes the
/// wrong elements far above it.
double tolerance(bool tf32) { return tf32 ? 1e-2 : 1e-4; }

/// DPTRAIN_PLAN_TIMING=quick times each candidate once (under compute-sanitizer, where the usual
/// 90 runs of every candidate would take minutes); the choices are then noisier, not different in kind.
GraphTiming plan_timing() {
  static const bool quick = [] {
    const char* v = std::getenv("DPTRAIN_PLAN_TIMING");
    return v != nullptr && std::string(v) == "quick";
  }();
  return quick ? GraphTiming{1, 0, 1} : GraphTiming{};
}

class Conv2dCuda final : public Conv2dLayer<float> {
 public:
  using Conv2dLayer<float>::Conv2dLayer;

  bool absorb_following_relu(DeviceContext& ctx) override {
    relu_ = ctx.cuda().options().fuse_elementwise;
    return relu_;
  }

  // Pooling after a convolution the direct kernels may serve stays a layer of its own.
  bool absorb_following_pool(DeviceContext& ctx, const PoolSpec& pool) override {
    if (!ctx.cuda().options().fuse_elementwise || kernels::direct_conv_fits(input_dims().c, kernel())) return false;
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
    if (!filter_) create_descriptors(ctx.cuda().options().tf32);
    const size_t full = static_cast<size_t>(max_batch) * output_dims().count();
    if (masked_.size() < (relu_ || pool_ ? full : 0)) masked_ = Buffer<float>(Device::Cuda, full);
    const size_t partials = std::max(kernels::bias_grad_channels_scratch(max_batch, out_channels()),
                                     pool_ ? kernels::conv_pool_backward_scratch(pool_geometry(max_batch), out_channels())
                                           : size_t{0});
    if (bias_partials_.size() < partials) bias_partials_ = Buffer<float>(Device::Cuda, partials);
    if (!pool_) return;
    if (unpooled_.size() < full) unpooled_ = Buffer<float>(Device::Cuda, full);
    const size_t pooled = static_cast<size_t>(pool_geometry(max_batch).planes) * pooled_plane();
    if (argmax_.size() < pooled) argmax_ = Buffer<int32_t>(Device::Cuda, pooled);
  }

  void plan(DeviceContext& ctx, int batch, bool backward) override {
    if (!filter_) create_descriptors(ctx.cuda().options().tf32);
    plan_for(ctx, batch, backward);
  }

  void forward(DeviceContext& ctx, TensorView<const float> in, TensorView<float> out, Phase phase,
               const StepInfo&) override {
    const Plan& p = plan_for(ctx, in.n, phase == Phase::Train);
    CudaContext& cu = ctx.cuda();
    const float* b = params()[1].value.data();
    run_forward(cu.cudnn(), cu.stream(), cu.workspace(p.workspace), p, p.fwd, in.data, params()[0].value.data(), b,
                pool_ ? unpooled_.data() : out.data);
    if (pool_)
      kernels::conv_pool_forward(unpooled_.data(), b, relu_, out.data, argmax_.data(), pool_geometry(in.n),
                                 out_channels(), fused_dropout(ctx, phase), cu.stream());
  }

  // With an absorbed ReLU, dout is dL/d(ReLU output): the gradient of the convolution is dout
  // where out > 0 (masked_gradient). When an input gradient follows, the filter gradient goes to
  // the side stream (cuda_context.h).
  void backward(DeviceContext& ctx, TensorView<const float> in, TensorView<const float> out,
                TensorView<const float> dout, TensorView<float> din) override {
    const Plan& p = plan_for(ctx, in.n, true);
    CudaContext& cu = ctx.cuda();
    cudaStream_t stream = cu.stream();
    float* dw = params()[0].grad.data();
    float* db = params()[1].grad.data();
    if (p.filter.impl == Impl::Direct && din.data == nullptr) {
      // The first layer: the direct filter gradient masks by the ReLU's output as it stages dout.
      return kernels::conv_direct_filter_grad(in.data, dout.data, relu_ ? out.data : nullptr, dw, db,
                                              cu.workspace(p.workspace), geometry(in.n), stream);
    }
    const float* dy = dout.data;
    if (pool_) {  // the pooled gradient spread over the windows; the bias gradient where cuDNN takes the filter's
      kernels::conv_pool_backward(dout.data, out.data, argmax_.data(), relu_, masked_.data(),
                                  p.filter.impl == Impl::Cudnn ? db : nullptr, bias_partials_.data(),
                                  pool_geometry(p.n), out_channels(), fused_dropout(ctx, Phase::Train), stream);
      dy = masked_.data();
    } else {
      dy = masked_gradient(stream, p.n, p.filter, dout.data, out.data, masked_.data(), db, bias_partials_.data());
    }
    // Beside an input gradient the filter gradient runs on the side stream, forked here but queued
    // after the input gradient (the critical path), so that the graph launches that one's kernels
    // first: the other way round, cuDNN's FFT filter gradient (which starts with a pass over dy,
    // flip_filter) filled the GPU and held the input gradient back by 13 us.
    const bool side = din.data != nullptr;
    const cudaStream_t filter_stream = side ? cu.fork() : stream;
    if (side)
      run_backward_data(cu.cudnn(), stream, cu.workspace(p.workspace), p, p.data, dy, params()[0].value.data(),
                        din.data);
    run_filter(side ? cu.side_cudnn() : cu.cudnn(), filter_stream,
               side ? cu.side_workspace(p.workspace) : cu.workspace(p.workspace), p, p.filter, in.data, dy, dw, db);
  }

 private:
  /// cuDNN descriptors of a sub-batch of `n` samples (Algo::chunk).
  struct ChunkDescs {
    int n = 0;
    CudnnTensorDesc x, y;
  };
  struct Plan {
    int n = 0;
    CudnnTensorDesc x, y;
    Algo fwd, data, filter;
    bool backward = false;  ///< data and filter chosen (an evaluation batch needs only fwd)
    size_t workspace = 0;
    std::vector<ChunkDescs> chunks;
  };
  struct Scratch;
  struct Choice;

  /// The absorbed pooling over the convolution's output at batch n; its output plane's size.
  kernels::PoolGeometry pool_geometry(int n) const {
    const Dims out = output_dims();
    return {n * out.c, out.h, out.w, pool_->pooled(out.h), pool_->pooled(out.w), pool_->kernel, pool_->stride,
            pool_->padding};
  }
  int pooled_plane() const {
    const kernels::PoolGeometry g = pool_geometry(1);
    return g.oh * g.ow;
  }

  kernels::FusedDropout fused_dropout(DeviceContext& ctx, Phase phase) const {
    return make_fused_dropout(dropout_, phase, ctx, static_cast<long>(out_channels()) * pooled_plane());
  }

  kernels::ConvGeometry geometry(int n) const {
    const Dims in = input_dims(), out = output_dims();
    return {n, in.c, in.h, in.w, out.c, out.h, out.w, kernel(), stride(), padding()};
  }

  /// The model never asks the first layer for an input gradient (its input is the data).
  bool needs_input_grad() const { return index() > 0; }

  const ChunkDescs& chunk_descs(const Plan& p, int chunk) const {
    for (const ChunkDescs& c : p.chunks)
      if (c.n == chunk) return c;
    throw CudaError(name() + ": no descriptors for chunks of " + std::to_string(chunk));
  }

  /// Calls f(x descriptor, y descriptor, first sample, count) for the whole batch, or for each
  /// chunk of a chunked algorithm, in order.
  template <typename F>
  void for_each_chunk(const Plan& p, const Algo& a, F f) const {
    if (a.chunk == 0) return f(p.x, p.y, 0, p.n);
    const ChunkDescs& c = chunk_descs(p, a.chunk);
    for (int first = 0; first < p.n; first += a.chunk) f(c.x, c.y, first, a.chunk);
  }

  // The three directions as the step runs them; plan measurement times the same calls. cuDNN runs
  // on handle h, which is bound to stream; dptrain's kernels are queued on stream.
  // With an absorbed pooling the bias and ReLU wait for the pooling pass (conv_pool_forward).
  void run_forward(cudnnHandle_t h, cudaStream_t stream, void* ws, const Plan& p, const Algo& a, const float* x,
                   const float* w, const float* b, float* y) {
    const kernels::ConvGeometry g = geometry(p.n);
    const bool relu = relu_ && !pool_;
    if (pool_) b = nullptr;
    if (a.impl == Impl::Direct) return kernels::conv_direct_forward(x, w, b, y, relu, g, stream);
    if (a.impl == Impl::Tiled) return kernels::tiled_conv_forward(x, w, b, y, relu, g, stream);
    if (a.impl == Impl::Mma) return kernels::mma_conv_forward(x, w, b, y, relu, ws, math_, g, stream);
    const size_t xs = input_dims().count(), ys = output_dims().count();
    for_each_chunk(p, a, [&](cudnnTensorDescriptor_t xd, cudnnTensorDescriptor_t yd, int first, int) {
      CUDNN_CHECK(cudnnConvolutionForward(h, &kOne, xd, x + first * xs, filter_, w, conv_,
                                          static_cast<cudnnConvolutionFwdAlgo_t>(a.cudnn), ws, a.memory, &kZero, yd,
                                          y + first * ys));
    });
    if (b != nullptr) kernels::add_bias_channels(y, b, p.n, g.oc, g.oh * g.ow, relu, stream);
  }

  void run_backward_data(cudnnHandle_t h, cudaStream_t stream, void* ws, const Plan& p, const Algo& a,
                         const float* dy, const float* w, float* dx) {
    const kernels::ConvGeometry g = geometry(p.n);
    if (a.impl == Impl::Tiled) return kernels::tiled_conv_backward_data(dy, w, dx, ws, g, stream);
    if (a.impl == Impl::Mma) return kernels::mma_conv_backward_data(dy, w, dx, ws, math_, g, stream);
    if (a.impl == Impl::Direct) throw CudaError(name() + ": the direct kernels compute no input gradient");
    const size_t xs = input_dims().count(), ys = output_dims().count();
    for_each_chunk(p, a, [&](cudnnTensorDescriptor_t xd, cudnnTensorDescriptor_t yd, int first, int) {
      CUDNN_CHECK(cudnnConvolutionBackwardData(h, &kOne, filter_, w, yd, dy + first * ys, conv_,
                                               static_cast<cudnnConvolutionBwdDataAlgo_t>(a.cudnn), ws, a.memory,
                                               &kZero, xd, dx + first * xs));
    });
  }

  /// The gradient of the convolution's output: dout, masked into `masked` by an absorbed ReLU. Where
  /// cuDNN takes the filter gradient, this pass also sums the bias gradient (dptrain's kernels sum it
  /// themselves).
  const float* masked_gradient(cudaStream_t stream, int n, const Algo& filter, const float* dout, const float* out,
                               float* masked, float* db, float* partials) {
    const Dims od = output_dims();
    if (filter.impl != Impl::Cudnn) {
      if (!relu_) return dout;
      kernels::relu_backward(dout, out, masked, static_cast<size_t>(n) * od.count(), stream);
      return masked;
    }
    kernels::bias_grad_channels(dout, relu_ ? out : nullptr, relu_ ? masked : nullptr, db, partials, n, od.c,
                                od.h * od.w, stream);
    return relu_ ? masked : dout;
  }

  /// The filter gradient (and with dptrain's kernels the bias gradient). In chunks, each chunk after
  /// the first adds to dw (beta 1), in chunk order: deterministic.
  void run_filter(cudnnHandle_t h, cudaStream_t stream, void* ws, const Plan& p, const Algo& a, const float* x,
                  const float* dy, float* dw, float* db) {
    const kernels::ConvGeometry g = geometry(p.n);
    if (a.impl == Impl::Direct) return kernels::conv_direct_filter_grad(x, dy, nullptr, dw, db, ws, g, stream);
    if (a.impl == Impl::Tiled) return kernels::tiled_conv_filter_grad(x, dy, dw, db, ws, g, stream);
    if (a.impl == Impl::Mma) return kernels::mma_conv_filter_grad(x, dy, dw, db, ws, math_, g, stream);
    const size_t xs = input_dims().count(), ys = output_dims().count();
    for_each_chunk(p, a, [&](cudnnTensorDescriptor_t xd, cudnnTensorDescriptor_t yd, int first, int) {
      CUDNN_CHECK(cudnnConvolutionBackwardFilter(h, &kOne, xd, x + first * xs, yd, dy + first * ys, conv_,
                                                 static_cast<cudnnConvolutionBwdFilterAlgo_t>(a.cudnn), ws, a.memory,
                                                 first == 0 ? &kZero : &kOne, filter_, dw));
    });
  }

  enum class Direction { Forward, Data, Filter };

  /// dptrain's kernel families that may serve one direction at batch n, fastest expected first (the
  /// three directions of mnist_cnn's conv2 at batch 64 on an H200: tiled FMA 248 us, 3xTF32 277,
  /// TF32 170). The tensor-core ones round like FFT (kernels/conv_mma.h): not under
  /// exact_convolutions. The direct kernels compute no input gradient.
  /// The direct filter gradient's scratch grows with the batch and the plane (per-block partials):
  /// past kMaxWorkspace cuDNN serves that direction.
  std::vector<Impl> own_kernels(int n, bool exact, Direction direction) const {
    std::vector<Impl> impls;
    const kernels::ConvGeometry g = geometry(n);
    if (kernels::direct_conv_fits(g.c, g.k)) {
      if (kernels::direct_conv_fits(g) && direction != Direction::Data &&
          (direction == Direction::Forward || kernels::conv_direct_filter_grad_scratch(g) <= kMaxWorkspace))
        impls.push_back(Impl::Direct);
      return impls;
    }
    if (kernels::tiled_conv_fits(g)) impls.push_back(Impl::Tiled);
    if (!exact && kernels::mma_conv_fits(g))
      impls.insert(math_ == kernels::MmaMath::Tf32 ? impls.begin() : impls.end(), Impl::Mma);
    return impls;
  }

  /// Workspace bytes an algorithm needs at batch n.
  size_t bytes(const Algo& a, int n) const {
    if (a.impl == Impl::Direct) return kernels::conv_direct_filter_grad_scratch(geometry(n));
    if (a.impl == Impl::Tiled) return kernels::tiled_conv_scratch(geometry(n));
    if (a.impl == Impl::Mma) return kernels::mma_conv_scratch(geometry(n));
    return a.memory;
  }

  void create_descriptors(bool tf32) {
    const Dims in = input_dims();
    tf32_ = tf32;
    math_ = tf32 ? kernels::MmaMath::Tf32 : kernels::MmaMath::SplitTf32;
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
  }

  /// The plan for batch n, chosen the first time the batch is seen (Layer::plan, or else the first
  /// forward: a training forward also chooses the backward directions, so that no choice is made
  /// inside backward, where the side stream may hold work). An evaluation batch chooses its forward
  /// only.
  const Plan& plan_for(DeviceContext& ctx, int n, bool backward) {
    auto found = std::find_if(plans_.begin(), plans_.end(), [n](const Plan& p) { return p.n == n; });
    if (found != plans_.end() && (found->backward || !backward)) return *found;  // every step: a lookup
    if (found == plans_.end()) {
      const Dims in = input_dims(), out = output_dims();
      Plan p;
      p.n = n;
      p.x = make_tensor_desc(n, in.c, in.h, in.w);
      p.y = make_tensor_desc(n, out.c, out.h, out.w);
      plans_.push_back(std::move(p));
      found = plans_.end() - 1;
      choose(ctx, *found, true, backward);
    } else {
      choose(ctx, *found, false, true);
    }
    Plan& p = *found;
    p.workspace = std::max({bytes(p.fwd, n), p.backward ? bytes(p.data, n) : size_t{0},
                            p.backward ? bytes(p.filter, n) : size_t{0}});
    ctx.cuda().workspace(p.workspace);  // grow both now, never inside a step
    ctx.cuda().side_workspace(p.workspace);
    return p;
  }

  /// Chooses the directions asked for. Each candidate is run once on random inputs and its outputs
  /// compared with a reference implementation's (cuDNN's plainest algorithm); one that disagrees, or
  /// fails to run, is dropped with a warning. With train.cudnn_benchmark the survivors are timed in
  /// a CUDA graph, as the step runs them, and the fastest is kept (cudnnFind only proposes: its
  /// eager times include launch overhead that a replayed step never pays); without it, the first
  /// survivor of dptrain's kernels, then cuDNN's heuristic order.
  void choose(DeviceContext& ctx, Plan& p, bool forward, bool backward) {
    Scratch m(*this, p.n, ctx.cuda().stream());
    cudnnHandle_t h = ctx.cuda().cudnn();
    cudaStream_t st = ctx.cuda().stream();
    const CudaOptions& o = ctx.cuda().options();
    const AlgoRules rules = algo_rules(o);
    const bool timed = o.cudnn_benchmark;
    constexpr int kMax = 16;
    int found = 0;
    if (forward) {
      std::vector<Algo> cudnn;
      cudnnConvolutionFwdAlgoPerf_t f[kMax];
      if (timed)
        CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithm(h, p.x, filter_, conv_, p.y, kMax, &found, f));
      else
        CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(h, p.x, filter_, conv_, p.y, kMax, &found, f));
      for (int i = 0; i < found; ++i)
        if (allowed(f[i], rules)) cudnn.push_back(cudnn_algo(f[i]));
      const Choice c = choose_direction(
          ctx, p, "forward", own_kernels(p.n, o.exact_convolutions, Direction::Forward), cudnn,
          {reference(p, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, h), reference(p, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, h)}, {{m.y.data(), m.y.size()}},
          [&](int chunk) { return chunked(p, chunk, rules, [&](cudnnTensorDescriptor_t x, cudnnTensorDescriptor_t y) {
            cudnnConvolutionFwdAlgoPerf_t r[kMax];
            int k = 0;
            CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(h, x, filter_, conv_, y, kMax, &k, r));
            return first_allowed(r, k, rules);
          }); },
          m, timed, [&](const Algo& a, void* ws) {
            run_forward(h, st, ws, p, a, m.x.data(), m.w.data(), m.b.data(), m.y.data());
          });
      p.fwd = c.algo;
    }
    if (!backward) return;
    p.backward = true;
    std::optional<Choice> data;
    if (needs_input_grad()) {
      std::vector<Algo> cudnn;
      cudnnConvolutionBwdDataAlgoPerf_t d[kMax];
      if (timed)
        CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithm(h, filter_, p.y, conv_, p.x, kMax, &found, d));
      else
        CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(h, filter_, p.y, conv_, p.x, kMax, &found, d));
      for (int i = 0; i < found; ++i)
        if (allowed(d[i], rules)) cudnn.push_back(cudnn_algo(d[i]));
      data = choose_direction(
          ctx, p, "backward-data", own_kernels(p.n, o.exact_convolutions, Direction::Data), cudnn,
          {reference(p, CUDNN_CONVOLUTION_BWD_DATA_ALGO_1, h), reference(p, CUDNN_CONVOLUTION_BWD_DATA_ALGO_0, h)}, {{m.dx.data(), m.dx.size()}},
          [&](int chunk) { return chunked(p, chunk, rules, [&](cudnnTensorDescriptor_t x, cudnnTensorDescriptor_t y) {
            cudnnConvolutionBwdDataAlgoPerf_t r[kMax];
            int k = 0;
            CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(h, filter_, y, conv_, x, kMax, &k, r));
            return first_allowed(r, k, rules);
          }); },
          m, timed, [&](const Algo& a, void* ws) {
            run_backward_data(h, st, ws, p, a, m.dy.data(), m.w.data(), m.dx.data());
          });
      p.data = data->algo;
    }
    std::vector<Algo> cudnn;
    cudnnConvolutionBwdFilterAlgoPerf_t w[kMax];
    if (timed)
      CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithm(h, p.x, p.y, conv_, filter_, kMax, &found, w));
    else
      CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, p.x, p.y, conv_, filter_, kMax, &found, w));
    for (int i = 0; i < found; ++i)
      if (allowed(w[i], rules)) cudnn.push_back(cudnn_algo(w[i]));
    const Choice filter = choose_direction(
        ctx, p, "backward-filter", own_kernels(p.n, o.exact_convolutions, Direction::Filter), cudnn,
        {reference(p, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1, h), reference(p, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0, h)}, {{m.dw.data(), m.dw.size()}, {m.db.data(), m.db.size()}},
        [&](int chunk) { return chunked(p, chunk, rules, [&](cudnnTensorDescriptor_t x, cudnnTensorDescriptor_t y) {
          cudnnConvolutionBwdFilterAlgoPerf_t r[kMax];
          int k = 0;
          CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, x, y, conv_, filter_, kMax, &k, r));
          return first_allowed(r, k, rules);
        }); },
        m, timed, [&](const Algo& a, void* ws) {
          const float* dy = masked_gradient(st, p.n, a, m.dy.data(), m.dy.data(), m.masked.data(), m.db.data(),
                                            m.partials.data());
          run_filter(h, st, ws, p, a, m.x.data(), dy, m.dw.data(), m.db.data());
        });
    p.filter = filter.algo;
    if (timed && data) choose_side_by_side(ctx, p, m, *data, filter);
  }

  /// A reference of a direction: cuDNN's plainest algorithms (implicit GEMM; for the gradients
  /// algorithm 1, then 0), whatever the run's rules, since they only check the others.
  template <typename AlgoEnum>
  Algo reference(const Plan& p, AlgoEnum algo, cudnnHandle_t h) const {
    size_t bytes = 0;
    cudnnStatus_t status;
    if constexpr (std::is_same_v<AlgoEnum, cudnnConvolutionFwdAlgo_t>)
      status = cudnnGetConvolutionForwardWorkspaceSize(h, p.x, filter_, conv_, p.y, algo, &bytes);
    else if constexpr (std::is_same_v<AlgoEnum, cudnnConvolutionBwdDataAlgo_t>)
      status = cudnnGetConvolutionBackwardDataWorkspaceSize(h, filter_, p.y, conv_, p.x, algo, &bytes);
    else
      status = cudnnGetConvolutionBackwardFilterWorkspaceSize(h, p.x, p.y, conv_, filter_, algo, &bytes);
    return {Impl::Cudnn, static_cast<int>(algo), status == CUDNN_STATUS_SUCCESS ? bytes : 0, 0};
  }

  template <typename Perf>
  static std::optional<Algo> first_allowed(const Perf* r, int count, AlgoRules rules) {
    for (int i = 0; i < count; ++i)
      if (allowed(r[i], rules)) return cudnn_algo(r[i]);
    return std::nullopt;
  }

  /// The fallback where no allowed implementation serves the whole batch (cuDNN may offer no
  /// deterministic algorithm for a direction at a large batch): the largest sub-batch, a divisor of
  /// n below `below`, for which cuDNN's heuristics offer an allowed algorithm. Returns it, with its
  /// descriptors added to the plan, or nothing.
  template <typename Query>
  std::optional<Algo> chunked(Plan& p, int below, AlgoRules, Query query) {
    const Dims in = input_dims(), out = output_dims();
    for (int parts = 2; parts <= p.n; ++parts) {
      if (p.n % parts != 0 || p.n / parts >= below) continue;
      const int chunk = p.n / parts;
      ChunkDescs c{chunk, make_tensor_desc(chunk, in.c, in.h, in.w), make_tensor_desc(chunk, out.c, out.h, out.w)};
      std::optional<Algo> a = query(c.x, c.y);
      if (!a) continue;
      a->chunk = chunk;
      if (std::none_of(p.chunks.begin(), p.chunks.end(), [&](const ChunkDescs& d) { return d.n == chunk; }))
        p.chunks.push_back(std::move(c));
      return a;
    }
    return std::nullopt;
  }

  /// Where an input gradient follows, backward runs the two directions side by side (the filter
  /// gradient on the side stream). Two algorithms that are fastest alone may contend for the same
  /// resource together (FFT ones both for memory bandwidth), so the two best of each direction are
  /// timed in pairs, as backward queues them, and the pair that finishes first is kept.
  void choose_side_by_side(DeviceContext& ctx, Plan& p, Scratch& m, const Choice& data, const Choice& filter) {
    std::vector<Algo> data_options{data.algo}, filter_options{filter.algo};
    if (data.second) data_options.push_back(*data.second);
    if (filter.second) filter_options.push_back(*filter.second);
    if (data_options.size() * filter_options.size() < 2) return;
    CudaContext& cu = ctx.cuda();
    size_t data_bytes = 1, filter_bytes = 1;
    for (const Algo& a : data_options) data_bytes = std::max(data_bytes, bytes(a, p.n));
    for (const Algo& a : filter_options) filter_bytes = std::max(filter_bytes, bytes(a, p.n));
    Buffer<uint8_t> data_ws(Device::Cuda, data_bytes), filter_ws(Device::Cuda, filter_bytes);
    cudaStream_t st = cu.stream();
    const auto pair = [&](const Algo& da, const Algo& fa) {
      const float* dy = masked_gradient(st, p.n, fa, m.dy.data(), m.dy.data(), m.masked.data(), m.db.data(),
                                        m.partials.data());
      const cudaStream_t side = cu.fork();  // as backward queues them
      run_backward_data(cu.cudnn(), st, data_ws.data(), p, da, dy, m.w.data(), m.dx.data());
      run_filter(cu.side_cudnn(), side, filter_ws.data(), p, fa, m.x.data(), dy, m.dw.data(), m.db.data());
      cu.join();
    };
    double best = std::numeric_limits<double>::infinity();
    for (const Algo& da : data_options)
      for (const Algo& fa : filter_options) {
        try {
          const double us = graph_time_us(st, [&] { pair(da, fa); }, plan_timing());
          if (us < best) best = us, p.data = da, p.filter = fa;
        } catch (const CudaError&) {  // not capturable: never chosen
        }
      }
    char line[200];
    std::snprintf(line, sizeof line, "%s batch %d backward side by side: data %s + filter %s %.1f us", name().c_str(),
                  p.n, label(p.data).c_str(), label(p.filter).c_str(), best);
    cu.note_choice(line);
  }

  /// Tensors of one batch for checking and timing. Inputs (x, w, b, dy) hold values in [-1, 1)
  /// (never zeros: some kernels skip them); y, dx, dw, db receive the directions' outputs;
  /// `reference` the reference implementation's outputs, back to back.
  struct Scratch {
    Buffer<float> x, w, b, dy, y, dx, dw, db, masked, partials, reference;
    Buffer<uint8_t> difference;
    Scratch(Conv2dCuda& layer, int n, cudaStream_t stream)
        : x(Device::Cuda, static_cast<size_t>(n) * layer.input_dims().count()),
          w(Device::Cuda, layer.params()[0].value.size()), b(Device::Cuda, layer.params()[1].value.size()),
          dy(Device::Cuda, static_cast<size_t>(n) * layer.output_dims().count()),
          y(Device::Cuda, dy.size()), dx(Device::Cuda, x.size()), dw(Device::Cuda, w.size()),
          db(Device::Cuda, b.size()), masked(Device::Cuda, layer.relu_ ? y.size() : 0),
          partials(Device::Cuda, kernels::bias_grad_channels_scratch(n, layer.out_channels())),
          reference(Device::Cuda, std::max(y.size(), x.size()) + w.size() + b.size()),
          difference(Device::Cuda, sizeof(kernels::Difference)) {
      unsigned seed = 1;
      for (Buffer<float>* t : {&x, &w, &b, &dy}) kernels::fill_uniform(t->data(), t->size(), seed++, stream);
    }
  };

  struct Output {
    float* data;
    size_t size;
  };

  /// One direction's choice, and the runner-up among those timed (for choose_side_by_side).
  struct Choice {
    Algo algo;
    double us = 0, cudnn_us = 0;  // the chosen one's graph time; the best cuDNN one's
    std::optional<Algo> second;
  };

  /// Runs `a` once (op) and compares its outputs with the reference's: the relative difference, or
  /// +inf where an output was left unwritten (poisoned with NaN first) or is not finite. Throws
  /// what running `a` throws.
  template <typename Op>
  double check(cudaStream_t st, Scratch& m, const std::vector<Output>& outs, const Algo& a, void* ws, Op& op) {
    for (const Output& o : outs) CUDA_CHECK(cudaMemsetAsync(o.data, 0xff, o.size * sizeof(float), st));
    op(a, ws);
    auto* diff = reinterpret_cast<kernels::Difference*>(m.difference.data());
    CUDA_CHECK(cudaMemsetAsync(diff, 0, sizeof(kernels::Difference), st));
    size_t offset = 0;
    for (const Output& o : outs) {
      kernels::compare_outputs(o.data, m.reference.data() + offset, o.size, diff, st);
      offset += o.size;
    }
    kernels::Difference host;
    CUDA_CHECK(cudaMemcpyAsync(&host, diff, sizeof host, cudaMemcpyDeviceToHost, st));
    CUDA_CHECK(cudaStreamSynchronize(st));
    return host.relative();
  }

  /// Checks and (timed) times the candidates of one direction: dptrain's kernel families `own` and
  /// cuDNN's allowed algorithms `cudnn` (best first). `fallback(below)` finds a chunked cuDNN
  /// algorithm for sub-batches smaller than `below` (used when no candidate survives).
  template <typename Fallback, typename Op>
  Choice choose_direction(DeviceContext& ctx, Plan& p, const char* direction, const std::vector<Impl>& own,
                          const std::vector<Algo>& cudnn, const std::vector<Algo>& references,
                          const std::vector<Output>& outs,
                          Fallback fallback, Scratch& m, bool timed, Op op) {
    CudaContext& cu = ctx.cuda();
    cudaStream_t st = cu.stream();
    std::vector<Algo> candidates;
    for (Impl impl : own) candidates.push_back(Algo{impl});
    candidates.insert(candidates.end(), cudnn.begin(), cudnn.end());
    size_t memory = 1;
    for (const Algo& a : references) memory = std::max(memory, a.memory);
    for (const Algo& a : candidates) memory = std::max(memory, bytes(a, p.n));
    Buffer<uint8_t> ws(Device::Cuda, memory);
    const std::string what = name() + " batch " + std::to_string(p.n) + " " + direction;

    // The first reference that runs; its outputs are kept for the comparisons.
    std::optional<Algo> reference;
    std::string reference_error;
    for (const Algo& r : references) {
      try {
        op(r, ws.data());
        size_t offset = 0;
        for (const Output& o : outs) {
          CUDA_CHECK(cudaMemcpyAsync(m.reference.data() + offset, o.data, o.size * sizeof(float),
                                     cudaMemcpyDeviceToDevice, st));
          offset += o.size;
        }
        CUDA_CHECK(cudaStreamSynchronize(st));
        reference = r;
        break;
      } catch (const CudaError& e) {
        reference_error = e.what();
      }
    }
    const bool have_reference = reference.has_value();
    if (!have_reference)
      cu.warn(what + ": no reference algorithm runs (" + reference_error +
              "); candidates are checked for unwritten and non-finite outputs only");
    const double tol = tolerance(tf32_);
    std::vector<Algo> usable;
    const auto try_candidate = [&](const Algo& a, void* scratch) {
      try {
        double err = check(st, m, outs, a, scratch, op);
        if (!have_reference && std::isfinite(err)) err = 0;  // compared with stale data: only finiteness counts
        if (err <= tol) return true;
        char line[240];
        std::snprintf(line, sizeof line, "%s: %s disagrees with %s (relative difference %.3g, tolerance %.3g); not used",
                      what.c_str(), label(a).c_str(), reference ? label(*reference).c_str() : "finite outputs",
                      err, tol);
        cu.warn(line);
      } catch (const CudaError& e) {
        cu.warn(what + ": " + label(a) + " failed to run (" + e.what() + "); not used");
      }
      return false;
    };
    for (const Algo& a : candidates) {
      if (!timed && !usable.empty()) break;  // heuristics: the first that passes
      if (try_candidate(a, ws.data())) usable.push_back(a);
    }
    if (usable.empty()) {
      // Nothing serves the whole batch: cuDNN over sub-batches, each size checked like the others.
      for (int below = p.n; usable.empty();) {
        std::optional<Algo> a = fallback(below);
        if (!a) break;
        below = a->chunk;
        Buffer<uint8_t> chunk_ws(Device::Cuda, std::max<size_t>(1, a->memory));
        if (try_candidate(*a, chunk_ws.data())) usable.push_back(*a);
      }
      if (usable.empty())
        throw CudaError(what + ": no implementation serves this convolution (cuDNN offers no " +
                        std::string(algo_rules(cu.options()).deterministic ? "deterministic " : "") +
                        "algorithm that passes the check, even on sub-batches)");
      cu.warn(what + ": no allowed algorithm serves the whole batch; using " + label(usable.front()));
    }

    Choice best{usable.front(), 0, 0, std::nullopt};
    if (!timed || usable.size() == 1) {
      note(ctx, what, best);
      return best;
    }
    // Timed: the fastest in a CUDA graph. One that cannot be captured is passed over (the first
    // stays the answer if nothing else is left: an eager step, train.cuda_graph off, still runs).
    constexpr double kNever = std::numeric_limits<double>::infinity();
    best.us = best.cudnn_us = kNever;
    std::vector<std::pair<double, Algo>> times;
    for (const Algo& a : usable) {
      try {
        const double us = graph_time_us(st, [&] { op(a, ws.data()); }, plan_timing());
        times.emplace_back(us, a);
        if (a.impl == Impl::Cudnn) best.cudnn_us = std::min(best.cudnn_us, us);
      } catch (const CudaError&) {  // not capturable: never chosen, since the step is a graph
      }
    }
    std::stable_sort(times.begin(), times.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    if (!times.empty()) best.algo = times[0].second, best.us = times[0].first;
    if (times.size() > 1) best.second = times[1].second;
    note(ctx, what, best);
    return best;
  }

  void note(DeviceContext& ctx, const std::string& what, const Choice& c) {
    char line[200];
    if (c.us == 0)
      std::snprintf(line, sizeof line, "%s: %s", what.c_str(), label(c.algo).c_str());
    else if (c.algo.impl != Impl::Cudnn)
      std::snprintf(line, sizeof line, "%s: %s kernels %.1f us (best cuDNN %.1f us)", what.c_str(),
                    label(c.algo).c_str(), c.us, c.cudnn_us);
    else
      std::snprintf(line, sizeof line, "%s: %s %.1f us", what.c_str(), label(c.algo).c_str(), c.us);
    ctx.cuda().note_choice(line);
  }

  bool relu_ = false;     // applies the ReLU that follows (absorb_following_relu)
  bool tf32_ = false;     // train.precision tf32: TF32 math allowed (wider check tolerance)
  kernels::MmaMath math_ = kernels::MmaMath::SplitTf32;  // float32: 3xTF32; precision tf32: TF32
  Buffer<float> masked_;  // with relu_ or pool_: the gradient of the convolution's output, masked
  Buffer<float> bias_partials_;
  std::optional<PoolSpec> pool_;         // absorbed (absorb_following_pool)
  std::optional<DropoutSpec> dropout_;   // absorbed after the pooling (absorb_following_dropout)
  Buffer<float> unpooled_;               // with pool_: the convolution's output before bias and pooling
  Buffer<int32_t> argmax_;               // with pool_: each window's first maximum
  CudnnFilterDesc filter_;
  CudnnConvDesc conv_;
  std::vector<Plan> plans_;
};

}  // namespace

std::unique_ptr<Layer<float>> make_conv2d_cuda(const LayerConfig& c, int index, Dims in) {
  return std::make_unique<Conv2dCuda>(c, index, in);
}

}  // namespace dptrain
