// Conv2d on CUDA: forward, backward-data, backward-filter and the bias gradient. Three families of
// kernels serve it:
// - cuDNN, with algorithms chosen once per batch size: by measurement (cudnnFind*) when
//   train.cudnn_benchmark is on, by its heuristics otherwise, and only among deterministic
//   algorithms (so a run repeats bit for bit) unless train.deterministic is off. float32 forbids
//   TF32 (CUDNN_FMA_MATH); tf32 allows it. train.exact_convolutions forbids the FFT and Winograd
//   algorithms (AlgoRules).
// - dptrain's direct kernels, for short reductions per output (a first layer on one-channel
//   images: kernels/conv_kernels.h says why); their input gradient, when needed, stays with cuDNN.
// - dptrain's register-tiled 3x3 kernels (kernels/conv_tiled.h), which replace cuDNN in each
//   direction where they are faster, or always under heuristics.
// Under train.cudnn_benchmark every candidate of a direction is timed inside a CUDA graph, as the
// step runs it (cuda/graph_timer.h); cudnnFind only proposes the candidates.
// A ReLU after the layer can be absorbed: the forward's epilogue applies it, and the backward masks
// the incoming gradient in the pass that sums the bias gradient (or in the direct kernel's staging).
#include <algorithm>
#include <cstdio>
#include <functional>
#include <limits>
#include <utility>
#include <string>
#include <vector>

#include "core/buffer.h"
#include "cuda/check.h"
#include "cuda/cuda_context.h"
#include "cuda/cuda_layers.h"
#include "cuda/cudnn_descriptors.h"
#include "cuda/graph_timer.h"
#include "cuda/raii.h"
#include "kernels/conv_kernels.h"
#include "kernels/conv_tiled.h"
#include "kernels/layer_kernels.h"
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

class Conv2dCuda final : public Conv2dLayer<float> {
 public:
  using Conv2dLayer<float>::Conv2dLayer;

  bool absorb_following_relu(DeviceContext& ctx) override {
    relu_ = ctx.cuda().options().fuse_elementwise;
    return relu_;
  }

  void reserve(DeviceContext& ctx, int max_batch) override {
    if (!filter_) create_descriptors(ctx.cuda().options().tf32);
    plan(ctx, max_batch);
    const size_t need = relu_ ? static_cast<size_t>(max_batch) * output_dims().count() : 0;
    if (masked_.size() < need) masked_ = Buffer<float>(Device::Cuda, need);
    const size_t partials = kernels::bias_grad_channels_scratch(max_batch, out_channels());
    if (bias_partials_.size() < partials) bias_partials_ = Buffer<float>(Device::Cuda, partials);
  }

  void forward(DeviceContext& ctx, TensorView<const float> in, TensorView<float> out, Phase, const StepInfo&) override {
    const Plan& p = plan(ctx, in.n);
    cudnnHandle_t h = ctx.cuda().cudnn();
    if (direct_) {
      kernels::conv_direct_forward(in.data, params()[0].value.data(), params()[1].value.data(), out.data, relu_,
                                   geometry(in.n), ctx.cuda().stream());
      return;
    }
    if (p.tiled_forward) {
      kernels::tiled_conv_forward(in.data, params()[0].value.data(), params()[1].value.data(), out.data, relu_,
                                  geometry(in.n), ctx.cuda().stream());
      return;
    }
    void* ws = ctx.cuda().workspace(p.workspace);
    CUDNN_CHECK(cudnnConvolutionForward(h, &kOne, p.x, in.data, filter_, params()[0].value.data(), conv_, p.fwd, ws,
                                        p.workspace, &kZero, p.y, out.data));
    const Dims od = output_dims();
    kernels::add_bias_channels(out.data, params()[1].value.data(), in.n, od.c, od.h * od.w, relu_, ctx.cuda().stream());
  }

  // With an absorbed ReLU, dout is dL/d(ReLU output): the gradient of the convolution is dout
  // where out > 0. The bias-gradient pass (or the direct kernel's staging) applies that mask.
  // When an input gradient follows, the filter gradient goes to the side stream (cuda_context.h).
  void backward(DeviceContext& ctx, TensorView<const float> in, TensorView<const float> out,
                TensorView<const float> dout, TensorView<float> din) override {
    const Plan& p = plan(ctx, in.n);
    CudaContext& cu = ctx.cuda();
    cudaStream_t stream = cu.stream();
    const float* dy = dout.data;
    if (direct_) {
      const float* relu_out = relu_ ? out.data : nullptr;
      if (relu_ && din.data != nullptr) {  // the input gradient needs the masked gradient itself
        kernels::relu_backward(dout.data, out.data, masked_.data(), out.size(), stream);
        dy = masked_.data();
        relu_out = nullptr;
      }
      kernels::conv_direct_filter_grad(in.data, dy, relu_out, params()[0].grad.data(), params()[1].grad.data(),
                                       cu.workspace(p.workspace), geometry(in.n), stream);
    } else {
      dy = masked_gradient(cu, p, dout, out);
      const bool side = din.data != nullptr;
      filter_gradient(side ? cu.side_cudnn() : cu.cudnn(), side ? cu.fork() : stream,
                      side ? cu.side_workspace(p.workspace) : cu.workspace(p.workspace), p, in, dy);
    }
    if (din.data == nullptr) return;
    void* ws = cu.workspace(p.workspace);
    if (p.tiled_data)
      kernels::tiled_conv_backward_data(dy, params()[0].value.data(), din.data, ws, geometry(in.n), stream);
    else
      CUDNN_CHECK(cudnnConvolutionBackwardData(cu.cudnn(), &kOne, filter_, params()[0].value.data(), p.y, dy, conv_,
                                               p.bwd_data, ws, p.workspace, &kZero, p.x, din.data));
  }

 private:
  struct Plan;
  struct MeasureScratch;
  struct Choice;

  /// The gradient of the convolution's output, masked by an absorbed ReLU (into masked_); on the
  /// cuDNN path this pass also sums the bias gradient (the tiled filter kernel sums it itself).
  const float* masked_gradient(CudaContext& cu, const Plan& p, TensorView<const float> dout,
                               TensorView<const float> out) {
    cudaStream_t stream = cu.stream();
    if (p.tiled_filter) {
      if (!relu_) return dout.data;
      kernels::relu_backward(dout.data, out.data, masked_.data(), out.size(), stream);
      return masked_.data();
    }
    const Dims od = output_dims();
    kernels::bias_grad_channels(dout.data, relu_ ? out.data : nullptr, masked_.data(), params()[1].grad.data(),
                                bias_partials_.data(), dout.n, od.c, od.h * od.w, stream);
    return relu_ ? masked_.data() : dout.data;
  }

  /// The filter gradient (and on the tiled path the bias gradient) on `stream`.
  void filter_gradient(cudnnHandle_t h, cudaStream_t stream, void* ws, const Plan& p, TensorView<const float> in,
                       const float* dy) {
    if (p.tiled_filter)
      kernels::tiled_conv_filter_grad(in.data, dy, params()[0].grad.data(), params()[1].grad.data(), ws,
                                      geometry(in.n), stream);
    else
      CUDNN_CHECK(cudnnConvolutionBackwardFilter(h, &kOne, p.x, in.data, p.y, dy, conv_, p.bwd_filter, ws, p.workspace,
                                                 &kZero, filter_, params()[0].grad.data()));
  }

  struct Plan {
    int n = 0;
    CudnnTensorDesc x, y;
    cudnnConvolutionFwdAlgo_t fwd{};
    cudnnConvolutionBwdDataAlgo_t bwd_data{};
    cudnnConvolutionBwdFilterAlgo_t bwd_filter{};
    bool tiled_forward = false, tiled_data = false, tiled_filter = false;  // kernels/conv_tiled.h instead
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
  }

  const Plan& plan(DeviceContext& ctx, int n) {
    for (const Plan& p : plans_)
      if (p.n == n) return p;
    const Dims in = input_dims(), out = output_dims();
    Plan p;
    p.n = n;
    p.x = make_tensor_desc(n, in.c, in.h, in.w);
    p.y = make_tensor_desc(n, out.c, out.h, out.w);
    if (ctx.cuda().options().cudnn_benchmark)
      measure_plan(ctx, p);
    else
      heuristic_plan(ctx, p);
    cudnnHandle_t h = ctx.cuda().cudnn();
    size_t a = 0, b = 0, c = 0;
    if (!direct_ && !p.tiled_forward)
      CUDNN_CHECK(cudnnGetConvolutionForwardWorkspaceSize(h, p.x, filter_, conv_, p.y, p.fwd, &a));
    if (!p.tiled_data)
      CUDNN_CHECK(cudnnGetConvolutionBackwardDataWorkspaceSize(h, filter_, p.y, conv_, p.x, p.bwd_data, &b));
    if (!direct_ && !p.tiled_filter)
      CUDNN_CHECK(cudnnGetConvolutionBackwardFilterWorkspaceSize(h, p.x, p.y, conv_, filter_, p.bwd_filter, &c));
    const bool tiled = p.tiled_forward || p.tiled_data || p.tiled_filter;
    p.workspace = std::max({a, b, c, direct_ ? kernels::conv_direct_filter_grad_scratch(geometry(n)) : size_t{0},
                            tiled ? kernels::tiled_conv_scratch(geometry(n)) : size_t{0}});
    ctx.cuda().workspace(p.workspace);  // grow both now, never inside a step
    ctx.cuda().side_workspace(p.workspace);
    plans_.push_back(std::move(p));
    return plans_.back();
  }

  /// cuDNN's heuristics for each direction; the tiled kernels wherever they serve the shape.
  void heuristic_plan(DeviceContext& ctx, Plan& p) {
    cudnnHandle_t h = ctx.cuda().cudnn();
    constexpr int kMax = 16;
    int found = 0;
    const AlgoRules rules = algo_rules(ctx.cuda().options());
    cudnnConvolutionFwdAlgoPerf_t f[kMax];
    CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(h, p.x, filter_, conv_, p.y, kMax, &found, f));
    p.fwd = pick(f, found, rules, "forward").algo;
    cudnnConvolutionBwdDataAlgoPerf_t d[kMax];
    CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(h, filter_, p.y, conv_, p.x, kMax, &found, d));
    p.bwd_data = pick(d, found, rules, "backward-data").algo;
    cudnnConvolutionBwdFilterAlgoPerf_t w[kMax];
    CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, p.x, p.y, conv_, filter_, kMax, &found, w));
    p.bwd_filter = pick(w, found, rules, "backward-filter").algo;
    p.tiled_forward = p.tiled_data = p.tiled_filter = !direct_ && kernels::tiled_conv_fits(geometry(p.n));
  }

  /// By measurement: cudnnFind proposes algorithms (its eager times include launch overhead that a
  /// graph-replayed step never pays, which misranks the short kernels of small batches); the best
  /// few that are allowed, and the tiled kernels where they serve, are each timed inside a CUDA
  /// graph with the bias and ReLU work that goes with them, and the fastest is kept.
  void measure_plan(DeviceContext& ctx, Plan& p) {
    MeasureScratch m(*this, p.n);
    cudnnHandle_t h = ctx.cuda().cudnn();
    cudaStream_t st = ctx.cuda().stream();
    const AlgoRules rules = algo_rules(ctx.cuda().options());
    const kernels::ConvGeometry g = geometry(p.n);
    const kernels::ConvGeometry* tiled = !direct_ && kernels::tiled_conv_fits(g) ? &g : nullptr;
    const Dims od = output_dims();
    constexpr int kMax = 16;
    int found = 0;
    if (!direct_) {
      cudnnConvolutionFwdAlgoPerf_t f[kMax];
      CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithm(h, p.x, filter_, conv_, p.y, kMax, &found, f));
      const Choice best = fastest(f, found, rules, "forward", st, [&](const auto& r, void* ws) {
        CUDNN_CHECK(cudnnConvolutionForward(h, &kOne, p.x, m.x.data(), filter_, m.w.data(), conv_, r.algo, ws,
                                            r.memory, &kZero, p.y, m.y.data()));
        kernels::add_bias_channels(m.y.data(), m.b.data(), p.n, od.c, od.h * od.w, relu_, st);
      }, tiled, [&](void*) { kernels::tiled_conv_forward(m.x.data(), m.w.data(), m.b.data(), m.y.data(), relu_, g, st); });
      p.tiled_forward = best.index < 0;
      p.fwd = best.index < 0 ? p.fwd : f[best.index].algo;
      note(ctx, p.n, "forward", best, f);
    }
    cudnnConvolutionBwdDataAlgoPerf_t d[kMax];
    CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithm(h, filter_, p.y, conv_, p.x, kMax, &found, d));
    const Choice best_data = fastest(d, found, rules, "backward-data", st, [&](const auto& r, void* ws) {
      CUDNN_CHECK(cudnnConvolutionBackwardData(h, &kOne, filter_, m.w.data(), p.y, m.y.data(), conv_, r.algo, ws,
                                               r.memory, &kZero, p.x, m.x.data()));
    }, tiled, [&](void* ws) { kernels::tiled_conv_backward_data(m.y.data(), m.w.data(), m.x.data(), ws, g, st); });
    p.tiled_data = best_data.index < 0;
    p.bwd_data = best_data.index < 0 ? p.bwd_data : d[best_data.index].algo;
    note(ctx, p.n, "backward-data", best_data, d);
    if (direct_) return;
    cudnnConvolutionBwdFilterAlgoPerf_t w[kMax];
    CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithm(h, p.x, p.y, conv_, filter_, kMax, &found, w));
    float* masked = relu_ ? m.masked.data() : nullptr;
    const Choice best_filter = fastest(w, found, rules, "backward-filter", st, [&](const auto& r, void* ws) {
      kernels::bias_grad_channels(m.y.data(), relu_ ? m.y.data() : nullptr, masked, m.b.data(), m.partials.data(),
                                  p.n, od.c, od.h * od.w, st);
      CUDNN_CHECK(cudnnConvolutionBackwardFilter(h, &kOne, p.x, m.x.data(), p.y, relu_ ? masked : m.y.data(), conv_,
                                                 r.algo, ws, r.memory, &kZero, filter_, m.w.data()));
    }, tiled, [&](void* ws) {
      if (relu_) kernels::relu_backward(m.y.data(), m.y.data(), masked, m.y.size(), st);
      kernels::tiled_conv_filter_grad(m.x.data(), relu_ ? masked : m.y.data(), m.w.data(), m.b.data(), ws, g, st);
    });
    p.tiled_filter = best_filter.index < 0;
    p.bwd_filter = best_filter.index < 0 ? p.bwd_filter : w[best_filter.index].algo;
    note(ctx, p.n, "backward-filter", best_filter, w);
    if (index() > 0) choose_side_by_side(ctx, p, m, d, best_data, w, best_filter);
  }

  /// Where an input gradient follows, backward runs the two directions side by side (the filter
  /// gradient on the side stream). Two algorithms that are fastest alone may contend for the same
  /// resource together (FFT ones both for memory bandwidth), so the two best of each direction are
  /// timed in pairs, as backward queues them, and the pair that finishes first is kept.
  template <typename DataPerf, typename FilterPerf>
  void choose_side_by_side(DeviceContext& ctx, Plan& p, MeasureScratch& m, const DataPerf* d, const Choice& data,
                           const FilterPerf* w, const Choice& filter) {
    std::vector<int> data_options{data.index}, filter_options{filter.index};
    if (data.second != Choice::kNone) data_options.push_back(data.second);
    if (filter.second != Choice::kNone) filter_options.push_back(filter.second);
    if (data_options.size() * filter_options.size() < 2) return;
    CudaContext& cu = ctx.cuda();
    const kernels::ConvGeometry g = geometry(p.n);
    const size_t tiled_bytes = kernels::tiled_conv_fits(g) ? kernels::tiled_conv_scratch(g) : 0;
    size_t data_bytes = tiled_bytes, filter_bytes = tiled_bytes;
    for (int i : data_options) data_bytes = std::max(data_bytes, i < 0 ? 0 : d[i].memory);
    for (int i : filter_options) filter_bytes = std::max(filter_bytes, i < 0 ? 0 : w[i].memory);
    Buffer<uint8_t> data_ws(Device::Cuda, std::max<size_t>(data_bytes, 1));
    Buffer<uint8_t> filter_ws(Device::Cuda, std::max<size_t>(filter_bytes, 1));
    const Dims od = output_dims();
    cudaStream_t st = cu.stream();
    float* masked = relu_ ? m.masked.data() : nullptr;
    const float* dy = relu_ ? masked : m.y.data();
    const auto pair = [&](int di, int fi) {
      if (fi < 0) {
        if (relu_) kernels::relu_backward(m.y.data(), m.y.data(), masked, m.y.size(), st);
      } else {
        kernels::bias_grad_channels(m.y.data(), relu_ ? m.y.data() : nullptr, masked, m.db.data(), m.partials.data(),
                                    p.n, od.c, od.h * od.w, st);
      }
      cudaStream_t side = cu.fork();
      if (fi < 0)
        kernels::tiled_conv_filter_grad(m.x.data(), dy, m.dw.data(), m.db.data(), filter_ws.data(), g, side);
      else
        CUDNN_CHECK(cudnnConvolutionBackwardFilter(cu.side_cudnn(), &kOne, p.x, m.x.data(), p.y, dy, conv_, w[fi].algo,
                                                   filter_ws.data(), w[fi].memory, &kZero, filter_, m.dw.data()));
      if (di < 0)
        kernels::tiled_conv_backward_data(dy, m.w.data(), m.dx.data(), data_ws.data(), g, st);
      else
        CUDNN_CHECK(cudnnConvolutionBackwardData(cu.cudnn(), &kOne, filter_, m.w.data(), p.y, dy, conv_, d[di].algo,
                                                 data_ws.data(), d[di].memory, &kZero, p.x, m.dx.data()));
      cu.join();
    };
    double best = std::numeric_limits<double>::infinity();
    int best_data = data.index, best_filter = filter.index;
    for (int di : data_options)
      for (int fi : filter_options) {
        try {
          const double us = graph_time_us(st, [&] { pair(di, fi); });
          if (us < best) best = us, best_data = di, best_filter = fi;
        } catch (const CudaError&) {  // not capturable: never chosen
        }
      }
    p.tiled_data = best_data < 0;
    if (best_data >= 0) p.bwd_data = d[best_data].algo;
    p.tiled_filter = best_filter < 0;
    if (best_filter >= 0) p.bwd_filter = w[best_filter].algo;
    const auto label = [](int i, auto algo) { return i < 0 ? std::string("tiled") : "cuDNN " + std::to_string(algo); };
    char line[200];
    std::snprintf(line, sizeof line, "%s batch %d backward side by side: data %s + filter %s %.1f us", name().c_str(),
                  p.n, label(best_data, p.bwd_data).c_str(), label(best_filter, p.bwd_filter).c_str(), best);
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

  /// The fastest allowed cuDNN result in a graph (index -1: the tiled kernels are faster). Only
  /// the first kCandidates allowed results are timed; one that cannot be captured is passed over
  /// (the first stays the answer if none can be: an eager step, train.cuda_graph off, still runs).
  struct Choice {
    static constexpr int kNone = -2;
    int index = -1;
    double us = 0, cudnn_us = 0;  // the chosen one's graph time; the best cuDNN one's
    int second = kNone;           // the runner-up (-1: the tiled kernels), if another was timed
  };
  template <typename Perf, typename CudnnOp>
  Choice fastest(const Perf* results, int count, AlgoRules rules, const char* what, cudaStream_t st, CudnnOp cudnn_op,
                 const kernels::ConvGeometry* tiled, const std::function<void(void*)>& tiled_op) {
    constexpr int kCandidates = 4;
    std::vector<int> candidates;
    size_t memory = tiled ? kernels::tiled_conv_scratch(*tiled) : 0;
    for (int i = 0; i < count && static_cast<int>(candidates.size()) < kCandidates; ++i)
      if (allowed(results[i], rules)) {
        candidates.push_back(i);
        memory = std::max(memory, results[i].memory);
      }
    if (candidates.empty() && !tiled) pick(results, count, rules, what);  // throws: nothing allowed
    Buffer<uint8_t> ws(Device::Cuda, std::max<size_t>(memory, 1));
    std::vector<std::pair<double, int>> timed;  // (us, index)
    for (int i : candidates) {
      try {
        timed.emplace_back(graph_time_us(st, [&] { cudnn_op(results[i], ws.data()); }), i);
      } catch (const CudaError&) {  // not capturable: never chosen, since the step is a graph
      }
    }
    constexpr double kNever = std::numeric_limits<double>::infinity();
    Choice best{candidates.empty() ? -1 : candidates.front(), kNever, kNever};
    if (!timed.empty()) best.cudnn_us = std::min_element(timed.begin(), timed.end())->first;
    if (tiled) timed.emplace_back(graph_time_us(st, [&] { tiled_op(ws.data()); }), -1);
    std::stable_sort(timed.begin(), timed.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    if (!timed.empty()) best.index = timed[0].second, best.us = timed[0].first;
    if (timed.size() > 1) best.second = timed[1].second;
    return best;
  }

  template <typename Perf>
  void note(DeviceContext& ctx, int n, const char* direction, const Choice& c, const Perf* results) {
    char line[160];
    if (c.index < 0)
      std::snprintf(line, sizeof line, "%s batch %d %s: tiled kernels %.1f us (best cuDNN %.1f us)", name().c_str(), n,
                    direction, c.us, c.cudnn_us);
    else
      std::snprintf(line, sizeof line, "%s batch %d %s: cuDNN algorithm %d %.1f us", name().c_str(), n, direction,
                    static_cast<int>(results[c.index].algo), c.us);
    ctx.cuda().note_choice(line);
  }

  bool direct_ = false;
  bool relu_ = false;     // applies the ReLU that follows (absorb_following_relu)
  Buffer<float> masked_;  // with relu_: the gradient after the ReLU's mask
  Buffer<float> bias_partials_;
  CudnnFilterDesc filter_;
  CudnnConvDesc conv_;
  std::vector<Plan> plans_;
};

}  // namespace

std::unique_ptr<Layer<float>> make_conv2d_cuda(const LayerConfig& c, int index, Dims in) {
  return std::make_unique<Conv2dCuda>(c, index, in);
}

}  // namespace dptrain
