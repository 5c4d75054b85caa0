// Conv2d on CUDA: forward, backward-data, backward-filter and the bias gradient. Three families of
// kernels serve it:
// - cuDNN, with algorithms chosen once per batch size: by measurement (cudnnFind*) when
//   train.cudnn_benchmark is on, by its heuristics otherwise, and only among deterministic
//   algorithms (so a run repeats bit for bit) unless train.deterministic is off. float32 forbids
//   TF32 (CUDNN_FMA_MATH); tf32 allows it. train.exact_convolutions forbids the FFT and Winograd
//   algorithms (AlgoRules).
// - dptrain's direct kernels, for short reductions per output (a first layer on one-channel
//   images: kernels/conv_kernels.h says why); their input gradient, when needed, stays with cuDNN.
// - dptrain's 3x3 kernels, which replace cuDNN in each direction where they are faster, or
//   always under heuristics: tensor-core ones (kernels/conv_mma.h: 3xTF32 in float32, TF32 under
//   train.precision tf32; not under exact_convolutions) and register-tiled FMA ones
//   (kernels/conv_tiled.h).
// Under train.cudnn_benchmark every candidate of a direction is timed inside a CUDA graph, as the
// step runs it (cuda/graph_timer.h); cudnnFind only proposes the candidates.
// A ReLU after the layer can be absorbed: the forward's epilogue applies it, and the backward masks
// the incoming gradient in the pass that sums the bias gradient (or in the direct kernel's staging).
// So can a max pooling after that (windows that tile the plane) and a dropout after the pooling:
// the convolution then runs without its bias, and one pass adds the bias, applies the ReLU, pools
// and drops out (kernels/pool_kernels.h: conv_pool_forward); backward, one pass spreads the pooled
// gradient over the windows, masked, and sums the bias gradient (conv_pool_backward).
#include <algorithm>
#include <cstdio>
#include <limits>
#include <optional>
#include <utility>
#include <string>
#include <vector>

#include "core/buffer.h"
#include "cuda/check.h"
#include "cuda/cuda_context.h"
#include "cuda/cuda_layers.h"
#include "cuda/cudnn_descriptors.h"
#include "cuda/fused_dropout.h"
#include "cuda/graph_timer.h"
#include "cuda/raii.h"
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

/// The first allowed result of a Find or heuristic query (results come best first).
template <typename Perf>
Perf pick(const Perf* results, int count, AlgoRules rules, const char* what) {
  for (int i = 0; i < count; ++i)
    if (allowed(results[i], rules)) return results[i];
  throw CudaError(std::string("cuDNN offers no ") + (rules.deterministic ? "deterministic " : "") +
                  (rules.exact ? "exact (no FFT/Winograd) " : "") + what + " algorithm for this convolution");
}

/// Who computes one direction of a convolution.
enum class Impl { Cudnn, Tiled, Mma };

/// One direction's algorithm: a cuDNN algorithm (its number and the workspace it asked for), or one
/// of dptrain's kernel families (whose scratch is the family's own size).
struct Algo {
  Impl impl = Impl::Cudnn;
  int cudnn = 0;
  size_t memory = 0;
};

std::string label(const Algo& a) {
  switch (a.impl) {
    case Impl::Tiled: return "tiled";
    case Impl::Mma: return "mma";
    case Impl::Cudnn: break;
  }
  return "cuDNN " + std::to_string(a.cudnn);
}

template <typename Perf>
Algo cudnn_algo(const Perf& r) {
  return {Impl::Cudnn, static_cast<int>(r.algo), r.memory};
}

class Conv2dCuda final : public Conv2dLayer<float> {
 public:
  using Conv2dLayer<float>::Conv2dLayer;

  bool absorb_following_relu(DeviceContext& ctx) override {
    relu_ = ctx.cuda().options().fuse_elementwise;
    return relu_;
  }

  // Pooling after a direct (one-channel) convolution stays a layer of its own.
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
    plan(ctx, max_batch, false);
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

  void forward(DeviceContext& ctx, TensorView<const float> in, TensorView<float> out, Phase phase,
               const StepInfo&) override {
    const Plan& p = plan(ctx, in.n, phase == Phase::Train);
    CudaContext& cu = ctx.cuda();
    const float* w = params()[0].value.data();
    const float* b = params()[1].value.data();
    if (direct_)
      return kernels::conv_direct_forward(in.data, w, b, out.data, relu_, geometry(in.n), cu.stream());
    run_forward(cu.cudnn(), cu.stream(), cu.workspace(p.workspace), p, p.fwd, in.data, w, b,
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
    const Plan& p = plan(ctx, in.n, true);
    CudaContext& cu = ctx.cuda();
    cudaStream_t stream = cu.stream();
    float* dw = params()[0].grad.data();
    float* db = params()[1].grad.data();
    const float* dy = dout.data;
    if (direct_) {
      const float* relu_out = relu_ ? out.data : nullptr;
      if (relu_ && din.data != nullptr) {  // the input gradient needs the masked gradient itself
        kernels::relu_backward(dout.data, out.data, masked_.data(), out.size(), stream);
        dy = masked_.data();
        relu_out = nullptr;
      }
      kernels::conv_direct_filter_grad(in.data, dy, relu_out, dw, db, cu.workspace(p.workspace), geometry(in.n),
                                       stream);
    } else {
      if (pool_) {  // the pooled gradient spread over the windows; the bias gradient where cuDNN takes the filter's
        kernels::conv_pool_backward(dout.data, out.data, argmax_.data(), relu_, masked_.data(),
                                    p.filter.impl == Impl::Cudnn ? db : nullptr, bias_partials_.data(),
                                    pool_geometry(p.n), out_channels(), fused_dropout(ctx, Phase::Train), stream);
        dy = masked_.data();
      } else {
        dy = masked_gradient(stream, p.n, p.filter, dout.data, out.data, masked_.data(), db, bias_partials_.data());
      }
    }
    // Beside an input gradient the filter gradient runs on the side stream, forked here but queued
    // after the input gradient (the critical path), so that the graph launches that one's kernels
    // first: the other way round, cuDNN's FFT filter gradient (which starts with a pass over dy,
    // flip_filter) filled the GPU and held the input gradient back by 13 us.
    const bool side = !direct_ && din.data != nullptr;
    const cudaStream_t filter_stream = side ? cu.fork() : stream;
    if (din.data != nullptr)
      run_backward_data(cu.cudnn(), stream, cu.workspace(p.workspace), p, p.data, dy, params()[0].value.data(),
                        din.data);
    if (!direct_)
      run_filter(side ? cu.side_cudnn() : cu.cudnn(), filter_stream,
                 side ? cu.side_workspace(p.workspace) : cu.workspace(p.workspace), p, p.filter, in.data, dy, dw, db);
  }

 private:
  struct Plan {
    int n = 0;
    CudnnTensorDesc x, y;
    Algo fwd, data, filter;
    bool backward = false;  ///< data and filter chosen (an evaluation batch needs only fwd)
    size_t workspace = 0;
  };
  struct MeasureScratch;
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

  // The three directions as the step runs them; plan measurement times the same calls. cuDNN runs
  // on handle h, which is bound to stream; dptrain's kernels are queued on stream.
  // With an absorbed pooling the bias and ReLU wait for the pooling pass (conv_pool_forward).
  void run_forward(cudnnHandle_t h, cudaStream_t stream, void* ws, const Plan& p, const Algo& a, const float* x,
                   const float* w, const float* b, float* y) {
    const kernels::ConvGeometry g = geometry(p.n);
    const bool relu = relu_ && !pool_;
    if (pool_) b = nullptr;
    if (a.impl == Impl::Tiled) return kernels::tiled_conv_forward(x, w, b, y, relu, g, stream);
    if (a.impl == Impl::Mma) return kernels::mma_conv_forward(x, w, b, y, relu, ws, math_, g, stream);
    CUDNN_CHECK(cudnnConvolutionForward(h, &kOne, p.x, x, filter_, w, conv_,
                                        static_cast<cudnnConvolutionFwdAlgo_t>(a.cudnn), ws, a.memory, &kZero, p.y, y));
    if (b != nullptr) kernels::add_bias_channels(y, b, p.n, g.oc, g.oh * g.ow, relu, stream);
  }

  void run_backward_data(cudnnHandle_t h, cudaStream_t stream, void* ws, const Plan& p, const Algo& a,
                         const float* dy, const float* w, float* dx) {
    const kernels::ConvGeometry g = geometry(p.n);
    if (a.impl == Impl::Tiled) return kernels::tiled_conv_backward_data(dy, w, dx, ws, g, stream);
    if (a.impl == Impl::Mma) return kernels::mma_conv_backward_data(dy, w, dx, ws, math_, g, stream);
    CUDNN_CHECK(cudnnConvolutionBackwardData(h, &kOne, filter_, w, p.y, dy, conv_,
                                             static_cast<cudnnConvolutionBwdDataAlgo_t>(a.cudnn), ws, a.memory, &kZero,
                                             p.x, dx));
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

  /// The filter gradient (and with dptrain's kernels the bias gradient).
  void run_filter(cudnnHandle_t h, cudaStream_t stream, void* ws, const Plan& p, const Algo& a, const float* x,
                  const float* dy, float* dw, float* db) {
    const kernels::ConvGeometry g = geometry(p.n);
    if (a.impl == Impl::Tiled) return kernels::tiled_conv_filter_grad(x, dy, dw, db, ws, g, stream);
    if (a.impl == Impl::Mma) return kernels::mma_conv_filter_grad(x, dy, dw, db, ws, math_, g, stream);
    CUDNN_CHECK(cudnnConvolutionBackwardFilter(h, &kOne, p.x, x, p.y, dy, conv_,
                                               static_cast<cudnnConvolutionBwdFilterAlgo_t>(a.cudnn), ws, a.memory,
                                               &kZero, filter_, dw));
  }

  /// dptrain's kernel families that serve this layer at batch n, fastest expected first (the three
  /// directions of mnist_cnn's conv2 at batch 64 on an H200: tiled FMA 248 us, 3xTF32 277, TF32
  /// 170). The tensor-core ones round like FFT (kernels/conv_mma.h): not under exact_convolutions.
  std::vector<Impl> own_kernels(int n, bool exact) const {
    std::vector<Impl> impls;
    if (direct_) return impls;
    if (kernels::tiled_conv_fits(geometry(n))) impls.push_back(Impl::Tiled);
    if (!exact && kernels::mma_conv_fits(geometry(n)))
      impls.insert(math_ == kernels::MmaMath::Tf32 ? impls.begin() : impls.end(), Impl::Mma);
    return impls;
  }

  /// Workspace bytes an algorithm needs at batch n.
  size_t bytes(const Algo& a, int n) const {
    if (a.impl == Impl::Tiled) return kernels::tiled_conv_scratch(geometry(n));
    if (a.impl == Impl::Mma) return kernels::mma_conv_scratch(geometry(n));
    return a.memory;
  }

  void create_descriptors(bool tf32) {
    const Dims in = input_dims();
    direct_ = kernels::direct_conv_fits(in.c, kernel());
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

  /// The plan for batch n, chosen the first time the batch is seen: in a forward pass (a training
  /// forward also chooses the backward directions, so that no timing runs inside backward, where
  /// the side stream may hold work), or in reserve(). By measurement, an evaluation batch times its
  /// forward only.
  const Plan& plan(DeviceContext& ctx, int n, bool backward) {
    auto found = std::find_if(plans_.begin(), plans_.end(), [n](const Plan& p) { return p.n == n; });
    if (found != plans_.end() && (found->backward || !backward)) return *found;  // every step: a lookup
    if (found == plans_.end()) {
      const Dims in = input_dims(), out = output_dims();
      Plan p;
      p.n = n;
      p.x = make_tensor_desc(n, in.c, in.h, in.w);
      p.y = make_tensor_desc(n, out.c, out.h, out.w);
      if (ctx.cuda().options().cudnn_benchmark)
        measure_plan(ctx, p, true, backward);
      else
        heuristic_plan(ctx, p);
      plans_.push_back(std::move(p));
      found = plans_.end() - 1;
    } else {
      measure_plan(ctx, *found, false, true);
    }
    Plan& p = *found;
    p.workspace = std::max({bytes(p.fwd, n), bytes(p.data, n), bytes(p.filter, n),
                            direct_ ? kernels::conv_direct_filter_grad_scratch(geometry(n)) : size_t{0}});
    ctx.cuda().workspace(p.workspace);  // grow both now, never inside a step
    ctx.cuda().side_workspace(p.workspace);
    return p;
  }

  /// dptrain's fastest kernel family (by expectation) wherever one serves the shape; cuDNN's
  /// heuristics elsewhere.
  void heuristic_plan(DeviceContext& ctx, Plan& p) {
    cudnnHandle_t h = ctx.cuda().cudnn();
    constexpr int kMax = 16;
    int found = 0;
    const AlgoRules rules = algo_rules(ctx.cuda().options());
    cudnnConvolutionFwdAlgoPerf_t f[kMax];
    CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(h, p.x, filter_, conv_, p.y, kMax, &found, f));
    p.fwd = cudnn_algo(pick(f, found, rules, "forward"));
    cudnnConvolutionBwdDataAlgoPerf_t d[kMax];
    CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(h, filter_, p.y, conv_, p.x, kMax, &found, d));
    p.data = cudnn_algo(pick(d, found, rules, "backward-data"));
    cudnnConvolutionBwdFilterAlgoPerf_t w[kMax];
    CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, p.x, p.y, conv_, filter_, kMax, &found, w));
    p.filter = cudnn_algo(pick(w, found, rules, "backward-filter"));
    const std::vector<Impl> own = own_kernels(p.n, ctx.cuda().options().exact_convolutions);
    if (!own.empty()) p.fwd = p.data = p.filter = Algo{own.front()};
    p.backward = true;
  }

  /// By measurement: cudnnFind proposes algorithms (its eager times include launch overhead that a
  /// graph-replayed step never pays, which misranks the short kernels of small batches); the best
  /// few that are allowed, and dptrain's kernels where they serve, are each timed inside a CUDA
  /// graph with the bias and ReLU work that goes with them, and the fastest is kept.
  void measure_plan(DeviceContext& ctx, Plan& p, bool forward, bool backward) {
    MeasureScratch m(*this, p.n);
    cudnnHandle_t h = ctx.cuda().cudnn();
    cudaStream_t st = ctx.cuda().stream();
    const AlgoRules rules = algo_rules(ctx.cuda().options());
    const std::vector<Impl> own = own_kernels(p.n, ctx.cuda().options().exact_convolutions);
    constexpr int kMax = 16;
    int found = 0;
    if (forward && !direct_) {
      cudnnConvolutionFwdAlgoPerf_t f[kMax];
      CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithm(h, p.x, filter_, conv_, p.y, kMax, &found, f));
      const Choice best = fastest(f, found, rules, "forward", p.n, st, own, [&](const Algo& a, void* ws) {
        run_forward(h, st, ws, p, a, m.x.data(), m.w.data(), m.b.data(), m.y.data());
      });
      p.fwd = best.algo;
      note(ctx, p.n, "forward", best);
    }
    if (!backward) return;
    p.backward = true;
    cudnnConvolutionBwdDataAlgoPerf_t d[kMax];
    CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithm(h, filter_, p.y, conv_, p.x, kMax, &found, d));
    const Choice data = fastest(d, found, rules, "backward-data", p.n, st, own, [&](const Algo& a, void* ws) {
      run_backward_data(h, st, ws, p, a, m.y.data(), m.w.data(), m.x.data());
    });
    p.data = data.algo;
    note(ctx, p.n, "backward-data", data);
    if (direct_) return;
    cudnnConvolutionBwdFilterAlgoPerf_t w[kMax];
    CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithm(h, p.x, p.y, conv_, filter_, kMax, &found, w));
    const Choice filter = fastest(w, found, rules, "backward-filter", p.n, st, own, [&](const Algo& a, void* ws) {
      const float* dy = masked_gradient(st, p.n, a, m.y.data(), m.y.data(), m.masked.data(), m.b.data(),
                                        m.partials.data());
      run_filter(h, st, ws, p, a, m.x.data(), dy, m.w.data(), m.b.data());
    });
    p.filter = filter.algo;
    note(ctx, p.n, "backward-filter", filter);
    if (index() > 0) choose_side_by_side(ctx, p, m, data, filter);
  }

  /// Where an input gradient follows, backward runs the two directions side by side (the filter
  /// gradient on the side stream). Two algorithms that are fastest alone may contend for the same
  /// resource together (FFT ones both for memory bandwidth), so the two best of each direction are
  /// timed in pairs, as backward queues them, and the pair that finishes first is kept.
  void choose_side_by_side(DeviceContext& ctx, Plan& p, MeasureScratch& m, const Choice& data, const Choice& filter) {
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
      const float* dy = masked_gradient(st, p.n, fa, m.y.data(), m.y.data(), m.masked.data(), m.db.data(),
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
          const double us = graph_time_us(st, [&] { pair(da, fa); });
          if (us < best) best = us, p.data = da, p.filter = fa;
        } catch (const CudaError&) {  // not capturable: never chosen
        }
      }
    char line[200];
    std::snprintf(line, sizeof line, "%s batch %d backward side by side: data %s + filter %s %.1f us", name().c_str(),
                  p.n, label(p.data).c_str(), label(p.filter).c_str(), best);
    cu.note_choice(line);
  }

  /// Tensors of one batch for timing, filled with 0.0115 (never zeros: some kernels skip them).
  /// dx, dw, db: outputs of the two backward directions when they run side by side.
  struct MeasureScratch {
    Buffer<float> x, y, w, b, masked, partials, dx, dw, db;
    MeasureScratch(Conv2dCuda& layer, int n)
        : x(Device::Cuda, static_cast<size_t>(n) * layer.input_dims().count()),
          y(Device::Cuda, static_cast<size_t>(n) * layer.output_dims().count()),
          w(Device::Cuda, layer.params()[0].value.size()), b(Device::Cuda, layer.params()[1].value.size()),
          masked(Device::Cuda, layer.relu_ ? y.size() : 0),
          partials(Device::Cuda, kernels::bias_grad_channels_scratch(n, layer.out_channels())),
          dx(Device::Cuda, x.size()), dw(Device::Cuda, w.size()), db(Device::Cuda, b.size()) {
      for (Buffer<float>* t : {&x, &y, &w, &b}) CUDA_CHECK(cudaMemset(t->data(), 0x3c, t->size() * sizeof(float)));
    }
  };

  /// The fastest allowed algorithm of one direction in a graph: every allowed cuDNN result and each
  /// of dptrain's kernel families are timed. (Timing only cudnnFind's first four let its own noisy
  /// eager ranking decide: for conv2's forward at batch 64, Winograd, 40 us in a graph, was passed
  /// over, it seems, in some processes, which then ran FFT tiling, 44 us.) A cuDNN algorithm that
  /// cannot be captured is passed over (the first stays the answer if nothing else is left: an
  /// eager step, train.cuda_graph off, still runs).
  struct Choice {
    Algo algo;
    double us = 0, cudnn_us = 0;  // the chosen one's graph time; the best cuDNN one's
    std::optional<Algo> second;   // the runner-up, if another was timed
  };
  template <typename Perf, typename Op>
  Choice fastest(const Perf* results, int count, AlgoRules rules, const char* what, int n, cudaStream_t st,
                 const std::vector<Impl>& own, Op op) {
    std::vector<Algo> candidates;
    for (int i = 0; i < count; ++i)
      if (allowed(results[i], rules)) candidates.push_back(cudnn_algo(results[i]));
    if (candidates.empty() && own.empty()) pick(results, count, rules, what);  // throws: nothing allowed
    for (Impl impl : own) candidates.push_back(Algo{impl});
    size_t memory = 1;
    for (const Algo& a : candidates) memory = std::max(memory, bytes(a, n));
    Buffer<uint8_t> ws(Device::Cuda, memory);
    constexpr double kNever = std::numeric_limits<double>::infinity();
    Choice best{candidates.front(), kNever, kNever, std::nullopt};
    std::vector<std::pair<double, Algo>> timed;
    for (const Algo& a : candidates) {
      try {
        const double us = graph_time_us(st, [&] { op(a, ws.data()); });
        timed.emplace_back(us, a);
        if (a.impl == Impl::Cudnn) best.cudnn_us = std::min(best.cudnn_us, us);
      } catch (const CudaError&) {  // not capturable: never chosen, since the step is a graph
        if (a.impl != Impl::Cudnn) throw;
      }
    }
    std::stable_sort(timed.begin(), timed.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    if (!timed.empty()) best.algo = timed[0].second, best.us = timed[0].first;
    if (timed.size() > 1) best.second = timed[1].second;
    return best;
  }

  void note(DeviceContext& ctx, int n, const char* direction, const Choice& c) {
    char line[160];
    if (c.algo.impl != Impl::Cudnn)
      std::snprintf(line, sizeof line, "%s batch %d %s: %s kernels %.1f us (best cuDNN %.1f us)", name().c_str(), n,
                    direction, label(c.algo).c_str(), c.us, c.cudnn_us);
    else
      std::snprintf(line, sizeof line, "%s batch %d %s: cuDNN algorithm %d %.1f us", name().c_str(), n, direction,
                    c.algo.cudnn, c.us);
    ctx.cuda().note_choice(line);
  }

  bool direct_ = false;
  bool relu_ = false;     // applies the ReLU that follows (absorb_following_relu)
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
