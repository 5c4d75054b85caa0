#include "layers/cuda/conv_planner.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <type_traits>
#include <utility>

#include "core/buffer.h"
#include "core/cuda_check.h"
#include "core/cuda_context.h"
#include "layers/cuda/cudnn_algo_rules.h"
#include "layers/cuda/graph_timer.h"
#include "io/plan_cache.h"
#include "kernels/compare_kernels.h"
#include "kernels/conv_reference.h"
#include "kernels/layer_kernels.h"

namespace dptrain {

namespace {

template <typename Perf>
ConvAlgo cudnn_algo(const Perf& r) {
  return {ConvImpl::Cudnn, static_cast<int>(r.algo), r.memory, 0};
}

/// The allowed results of a Find or heuristic query, in its order (best first).
template <typename Perf>
std::vector<ConvAlgo> allowed_algos(const Perf* r, int count, AlgoRules rules) {
  std::vector<ConvAlgo> algos;
  for (int i = 0; i < count; ++i)
    if (allowed(r[i], rules)) algos.push_back(cudnn_algo(r[i]));
  return algos;
}

/// A cuDNN reference of a direction, for shapes past the reference kernels' cost: cuDNN's plainest
/// algorithms (implicit GEMM; for the gradients algorithm 1, then 0), whatever the run's rules,
/// since they only check the others.
template <typename AlgoEnum>
ConvAlgo reference(const ConvExecutor& exec, const ConvPlan& p, AlgoEnum algo, cudnnHandle_t h) {
  return {ConvImpl::Cudnn, static_cast<int>(algo), cudnn_workspace(exec, p.batch, algo, h).value_or(0), 0};
}

/// Largest relative difference (||candidate - reference|| / ||reference||) a candidate may show and
/// still be used: the shape sweep's tolerances for FFT and Winograd (float32) and TF32, with room.
/// Rounding differences between correct implementations are below it (float32 sums, FFT, Winograd
/// and 3xTF32: 1e-7 to 1e-5; TF32 products: about 1e-3), and a kernel that reads or writes the
/// wrong elements far above it.
double tolerance(bool tf32) { return tf32 ? 1e-2 : 1e-4; }

/// DPTRAIN_PLAN_TIMING=quick times each candidate once (under compute-sanitizer, where the usual
/// 90 runs of every candidate would take minutes); the choices are then noisier, not different in
/// kind. DPTRAIN_PLAN_TIMING=full is the search before issue 22, for A/B comparisons: cudnnFind
/// proposes, every allowed algorithm is timed, each for all 7 replays (no pruning, no early stop).
enum class PlanSearch { Pruned, Quick, Full };
PlanSearch plan_search() {
  static const PlanSearch search = [] {
    const char* v = std::getenv("DPTRAIN_PLAN_TIMING");
    const std::string s = v == nullptr ? "" : v;
    return s == "quick" ? PlanSearch::Quick : s == "full" ? PlanSearch::Full : PlanSearch::Pruned;
  }();
  return search;
}

constexpr double kNoBound = std::numeric_limits<double>::infinity();

GraphTiming plan_timing() {
  switch (plan_search()) {
    case PlanSearch::Quick: return GraphTiming{1, 0, 1, kNoBound, 0.02};
    case PlanSearch::Full: return GraphTiming{10, 2, 7, kNoBound, 0.0};
    case PlanSearch::Pruned: break;
  }
  return GraphTiming{};
}

const char* plan_search_name() {
  switch (plan_search()) {
    case PlanSearch::Quick: return "quick";
    case PlanSearch::Full: return "full";
    case PlanSearch::Pruned: break;
  }
  return "pruned";
}

/// cuDNN algorithms timed per direction under train.cudnn_benchmark, in its heuristic order: the
/// allowed ones past these rarely win (an H200's mnist_cnn shapes had 3 to 5 allowed per direction).
constexpr size_t kTimedCudnnCandidates = 4;
/// Timed: an algorithm over kMaxConvWorkspace is tried over at most this many equal sub-batches.
constexpr int kMaxChunkParts = 16;

/// A candidate whose first timed replay takes this many times the best so far cannot win: its
/// timing stops there (replay-to-replay noise in a graph is a few percent).
constexpr double kClearlySlower = 1.3;

/// A candidate this many times slower than the best at a nearby batch size of the same layer and
/// direction is not timed again (batch sizes within a factor of 2 rank implementations alike; the
/// short kernels that win small batches lose large ones by far more than 2x).
constexpr double kFarSlower = 2.0;

/// The same implementation (a chunked cuDNN algorithm is a different one).
bool same_algo(const ConvAlgo& a, const ConvAlgo& b) {
  return a.impl == b.impl && a.chunk == b.chunk && (a.impl != ConvImpl::Cudnn || a.cudnn == b.cudnn);
}

/// Implementation names in plan records (io/plan_cache.h's plan_implementations()).
const char* impl_name(ConvImpl i) {
  switch (i) {
    case ConvImpl::Cudnn: return "cudnn";
    case ConvImpl::Direct: return "direct";
    case ConvImpl::Tiled: return "tiled";
    case ConvImpl::Mma: return "mma";
    case ConvImpl::Small: return "small";
    case ConvImpl::Reference: return "reference";  // never chosen, so never recorded
  }
  return "?";
}

std::optional<ConvImpl> impl_from(const std::string& name) {
  for (ConvImpl i : {ConvImpl::Cudnn, ConvImpl::Direct, ConvImpl::Tiled, ConvImpl::Mma, ConvImpl::Small})
    if (name == impl_name(i)) return i;
  return std::nullopt;
}

PlanRecord record_of(const ConvAlgo& a) {
  return {impl_name(a.impl), a.impl == ConvImpl::Cudnn ? a.cudnn : 0, a.impl == ConvImpl::Cudnn ? a.chunk : 0};
}

}  // namespace

/// Tensors of one batch for checking and timing. Inputs (x, w, b, dy) hold values in [-1, 1)
/// (never zeros: some kernels skip them); y, dx, dw, db receive the directions' outputs;
/// `reference` the reference implementation's outputs, back to back.
struct ConvPlanner::Scratch {
  Buffer<float> x, w, b, dy, y, dx, dw, db, masked, partials, reference;
  Buffer<uint8_t> difference;
  Scratch(const ConvExecutor& exec, int n, cudaStream_t stream)
      : x(Device::Cuda, input_count(exec.geometry(n))),
        w(Device::Cuda, weight_count(exec.geometry(n))),
        b(Device::Cuda, static_cast<size_t>(exec.geometry(n).oc)),
        dy(Device::Cuda, output_count(exec.geometry(n))),
        y(Device::Cuda, dy.size()),
        dx(Device::Cuda, x.size()),
        dw(Device::Cuda, w.size()),
        db(Device::Cuda, b.size()),
        masked(Device::Cuda, exec.relu() ? y.size() : 0),
        partials(Device::Cuda, kernels::bias_grad_channels_scratch(n, exec.geometry(n).oc)),
        reference(Device::Cuda, std::max(y.size(), x.size()) + w.size() + b.size()),
        difference(Device::Cuda, sizeof(kernels::Difference)) {
    unsigned seed = 1;
    for (Buffer<float>* t : {&x, &w, &b, &dy}) kernels::fill_uniform(t->data(), t->size(), seed++, stream);
  }
  static size_t input_count(const kernels::ConvGeometry& g) { return size_t(g.n) * g.c * g.h * g.w; }
  static size_t output_count(const kernels::ConvGeometry& g) { return size_t(g.n) * g.oc * g.oh * g.ow; }
  static size_t weight_count(const kernels::ConvGeometry& g) { return size_t(g.oc) * g.c * g.k * g.k; }
};

ConvPlanner::ConvPlanner(const ConvExecutor& exec, std::string name, bool needs_input_grad)
    : exec_(exec), name_(std::move(name)), needs_input_grad_(needs_input_grad) {}

const ConvPlan& ConvPlanner::plan(DeviceContext& ctx, int n, bool backward) {
  auto found = std::find_if(plans_.begin(), plans_.end(), [n](const ConvPlan& p) { return p.batch.n == n; });
  if (found != plans_.end() && (found->backward || !backward)) return *found;  // every step: a lookup
  if (found == plans_.end()) {
    ConvPlan p;  // kept only once chosen: a failed choice leaves no half-made plan behind
    p.batch = exec_.batch(n);
    choose(ctx, p, true, backward);
    plans_.push_back(std::move(p));
    found = plans_.end() - 1;
  } else {
    choose(ctx, *found, false, true);
  }
  ConvPlan& p = *found;
  p.workspace = std::max({exec_.bytes(p.fwd, n), p.backward ? exec_.bytes(p.data, n) : size_t{0},
                          p.backward ? exec_.bytes(p.filter, n) : size_t{0}});
  ctx.cuda().workspace(p.workspace);  // grow both now, never inside a step
  ctx.cuda().side_workspace(p.workspace);
  return p;
}

/// Chooses the directions asked for. Each candidate is run once on random inputs and its outputs
/// compared with a reference implementation's (the reference kernels, or past their cost cuDNN's
/// plainest algorithm); one that disagrees, or fails to run, is dropped with a warning. With
/// train.cudnn_benchmark the survivors (dptrain's kernels and cuDNN's first kTimedCudnnCandidates
/// by its heuristics) are timed in a CUDA graph, as the step runs them, and the fastest is kept;
/// without it, the first survivor of dptrain's kernels, then cuDNN's heuristic order. A direction
/// the plan book holds is checked, not timed.
void ConvPlanner::choose(DeviceContext& ctx, ConvPlan& p, bool forward, bool backward) {
  Scratch m(exec_, p.batch.n, ctx.cuda().stream());
  cudnnHandle_t h = ctx.cuda().cudnn();
  cudaStream_t st = ctx.cuda().stream();
  const CudaOptions& o = ctx.cuda().options();
  const AlgoRules rules = algo_rules(o);
  const bool timed = o.cudnn_benchmark;
  PlanBook* book = ctx.plan_book();
  constexpr int kMax = 16;
  // cuDNN's allowed algorithms for a direction, in its heuristic order (best first). Timed, only
  // the first few are checked and timed (choose_direction): those that can win (cudnnFind, which
  // would run every one eagerly, is not called; the survivors are timed as the step runs them anyway).
  const bool find = timed && plan_search() == PlanSearch::Full;
  // cuDNN's heuristic answers (every algorithm, with its status and workspace at that batch).
  const auto fwd_perf = [&](cudnnTensorDescriptor_t x, cudnnTensorDescriptor_t y) {
    std::vector<cudnnConvolutionFwdAlgoPerf_t> r(kMax);
    int k = 0;
    CUDNN_CHECK(
        cudnnGetConvolutionForwardAlgorithm_v7(h, x, exec_.filter_desc(), exec_.conv_desc(), y, kMax, &k, r.data()));
    r.resize(static_cast<size_t>(k));
    return r;
  };
  const auto data_perf = [&](cudnnTensorDescriptor_t x, cudnnTensorDescriptor_t y) {
    std::vector<cudnnConvolutionBwdDataAlgoPerf_t> r(kMax);
    int k = 0;
    CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(h, exec_.filter_desc(), y, exec_.conv_desc(), x, kMax, &k,
                                                            r.data()));
    r.resize(static_cast<size_t>(k));
    return r;
  };
  const auto filter_perf = [&](cudnnTensorDescriptor_t x, cudnnTensorDescriptor_t y) {
    std::vector<cudnnConvolutionBwdFilterAlgoPerf_t> r(kMax);
    int k = 0;
    CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, x, y, exec_.conv_desc(), exec_.filter_desc(), kMax,
                                                              &k, r.data()));
    r.resize(static_cast<size_t>(k));
    return r;
  };
  const auto allowed_of = [&](const auto& perf) {
    return allowed_algos(perf.data(), static_cast<int>(perf.size()), rules);
  };
  const auto fwd_heuristic = [&](cudnnTensorDescriptor_t x, cudnnTensorDescriptor_t y) {
    return allowed_of(fwd_perf(x, y));
  };
  const auto data_heuristic = [&](cudnnTensorDescriptor_t x, cudnnTensorDescriptor_t y) {
    return allowed_of(data_perf(x, y));
  };
  const auto filter_heuristic = [&](cudnnTensorDescriptor_t x, cudnnTensorDescriptor_t y) {
    return allowed_of(filter_perf(x, y));
  };
  // Timed: cuDNN's heuristic order, where an algorithm that the rules allow but for its workspace
  // at the whole batch (FFT's grows with the batch) stands, in its place, over the largest equal
  // sub-batches on which it fits. Else a large batch is left to the slow algorithms that fit whole:
  // lenet5's conv2 at batch 8192 in float32 had cuDNN 1 alone, 22 ms a step against 0.9 at 2048.
  const auto timed_candidates = [&](const auto& perf) {
    std::vector<ConvAlgo> algos;
    const int n = p.batch.n;
    for (const auto& r : perf(p.batch.x.get(), p.batch.y.get())) {
      if (allowed(r, rules)) {
        algos.push_back(cudnn_algo(r));
        continue;
      }
      if (!eligible(r, rules)) continue;
      const size_t least = (r.memory + kMaxConvWorkspace - 1) / kMaxConvWorkspace;  // sub-batches, at least
      for (int parts = std::max(2, static_cast<int>(std::min<size_t>(least, kMaxChunkParts + 1)));
           parts <= std::min(n, kMaxChunkParts); ++parts) {
        if (n % parts != 0) continue;
        const int chunk = n / parts;
        const ConvBatch probe = exec_.batch(chunk);
        const auto sub = perf(probe.x.get(), probe.y.get());
        const auto same = std::find_if(sub.begin(), sub.end(), [&](const auto& q) { return q.algo == r.algo; });
        if (same == sub.end() || !allowed(*same, rules)) continue;
        ConvAlgo a = cudnn_algo(*same);
        a.chunk = chunk;
        exec_.add_chunk(p.batch, chunk);
        algos.push_back(a);
        break;
      }
    }
    return algos;
  };
  // DPTRAIN_PLAN_TIMING=full: cudnnFind proposes, as before issue 22.
  const auto fwd_find = [&] {
    cudnnConvolutionFwdAlgoPerf_t r[kMax];
    int k = 0;
    CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithm(h, p.batch.x, exec_.filter_desc(), exec_.conv_desc(), p.batch.y,
                                                     kMax, &k, r));
    return allowed_algos(r, k, rules);
  };
  const auto data_find = [&] {
    cudnnConvolutionBwdDataAlgoPerf_t r[kMax];
    int k = 0;
    CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithm(h, exec_.filter_desc(), p.batch.y, exec_.conv_desc(),
                                                          p.batch.x, kMax, &k, r));
    return allowed_algos(r, k, rules);
  };
  const auto filter_find = [&] {
    cudnnConvolutionBwdFilterAlgoPerf_t r[kMax];
    int k = 0;
    CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithm(h, p.batch.x, p.batch.y, exec_.conv_desc(),
                                                            exec_.filter_desc(), kMax, &k, r));
    return allowed_algos(r, k, rules);
  };
  // The yardstick of each direction's check: the reference kernels where their cost allows (no
  // cuDNN engine to load, so a warm plan book of dptrain's own kernels never touches cuDNN), else
  // cuDNN's plainest algorithms, the first that runs.
  const bool reference_kernels = kernels::reference_conv_fits(exec_.geometry(p.batch.n));
  const auto references = [&](auto... cudnn_algos) -> std::vector<ConvAlgo> {
    if (reference_kernels) return {ConvAlgo{ConvImpl::Reference}};
    return {reference(exec_, p, cudnn_algos, h)...};
  };
  const auto first_of = [](std::vector<ConvAlgo> algos) {
    return algos.empty() ? std::nullopt : std::optional<ConvAlgo>(algos.front());
  };
  // Records each choice made (or confirmed) in the book, once the directions are final.
  std::vector<std::pair<std::string, const ConvAlgo*>> records;
  if (forward) {
    const std::vector<ConvImpl> own = exec_.own_kernels(p.batch.n, o.exact_convolutions, ConvDirection::Forward);
    const std::string k = key(o, p.batch.n, "forward");
    const Choice c = choose_direction(
        ctx, p, "forward", own,
        [&] { return find ? fwd_find() : timed ? timed_candidates(fwd_perf) : fwd_heuristic(p.batch.x, p.batch.y); },
        recorded<cudnnConvolutionFwdAlgo_t>(ctx, p, k, "forward", own),
        references(CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM),
        {{m.y.data(), m.y.size()}},
        [&](int chunk) {
          return chunked(p, chunk, [&](cudnnTensorDescriptor_t x, cudnnTensorDescriptor_t y) {
            return first_of(fwd_heuristic(x, y));
          });
        },
        m, timed,
        [&](const ConvAlgo& a, void* ws) {
          exec_.forward(h, st, ws, p.batch, a, m.x.data(), m.w.data(), m.b.data(), m.y.data());
        });
    p.fwd = c.algo;
    records.emplace_back(k, &p.fwd);
  }
  if (backward) {
    std::optional<Choice> data;
    if (needs_input_grad_) {
      const std::vector<ConvImpl> own = exec_.own_kernels(p.batch.n, o.exact_convolutions, ConvDirection::Data);
      const std::string k = key(o, p.batch.n, "backward-data");
      data = choose_direction(
          ctx, p, "backward-data", own,
          [&] {
            return find ? data_find() : timed ? timed_candidates(data_perf) : data_heuristic(p.batch.x, p.batch.y);
          },
          recorded<cudnnConvolutionBwdDataAlgo_t>(ctx, p, k, "backward-data", own),
          references(CUDNN_CONVOLUTION_BWD_DATA_ALGO_1, CUDNN_CONVOLUTION_BWD_DATA_ALGO_0),
          {{m.dx.data(), m.dx.size()}},
          [&](int chunk) {
            return chunked(p, chunk, [&](cudnnTensorDescriptor_t x, cudnnTensorDescriptor_t y) {
              return first_of(data_heuristic(x, y));
            });
          },
          m, timed,
          [&](const ConvAlgo& a, void* ws) {
            exec_.backward_data(h, st, ws, p.batch, a, m.dy.data(), m.w.data(), m.dx.data());
          });
      p.data = data->algo;
      records.emplace_back(k, &p.data);
    }
    const std::vector<ConvImpl> own = exec_.own_kernels(p.batch.n, o.exact_convolutions, ConvDirection::Filter);
    const std::string k = key(o, p.batch.n, "backward-filter");
    const Choice filter = choose_direction(
        ctx, p, "backward-filter", own,
        [&] {
          return find ? filter_find() : timed ? timed_candidates(filter_perf) : filter_heuristic(p.batch.x, p.batch.y);
        },
        recorded<cudnnConvolutionBwdFilterAlgo_t>(ctx, p, k, "backward-filter", own),
        references(CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0),
        {{m.dw.data(), m.dw.size()}, {m.db.data(), m.db.size()}},
        [&](int chunk) {
          return chunked(p, chunk, [&](cudnnTensorDescriptor_t x, cudnnTensorDescriptor_t y) {
            return first_of(filter_heuristic(x, y));
          });
        },
        m, timed,
        [&](const ConvAlgo& a, void* ws) {
          const float* dy = exec_.masked_gradient(st, p.batch.n, a, m.dy.data(), m.dy.data(), m.masked.data(),
                                                  m.db.data(), m.partials.data());
          exec_.filter_grad(h, st, ws, p.batch, a, m.x.data(), dy, m.dw.data(), m.db.data());
        });
    p.filter = filter.algo;
    records.emplace_back(k, &p.filter);
    // A recorded choice stays as recorded (its pair was timed side by side when it was made): only
    // two fresh choices are timed in pairs.
    if (timed && data && !data->recorded && !filter.recorded) choose_side_by_side(ctx, p, m, *data, filter);
    p.backward = true;
  }
  if (book != nullptr)
    for (const auto& [k, algo] : records) book->put(k, record_of(*algo));
}

std::string ConvPlanner::key(const CudaOptions& o, int n, const char* direction) const {
  const kernels::ConvGeometry g = exec_.geometry(n);
  const auto s = [](auto v) { return std::to_string(v); };
  // Everything that decides the choice: the shape and what the layer absorbed, the batch, the
  // direction, and every setting that filters or ranks candidates.
  return plan_key({{"op", "conv2d"},
                   {"n", s(n)},
                   {"in", s(g.c) + "x" + s(g.h) + "x" + s(g.w)},
                   {"out", s(g.oc) + "x" + s(g.oh) + "x" + s(g.ow)},
                   {"kernel", s(g.k)},
                   {"stride", s(g.stride)},
                   {"pad", s(g.pad)},
                   {"relu", s(int(exec_.relu()))},
                   {"pooled", s(int(exec_.pooled()))},
                   {"input_grad", s(int(needs_input_grad_))},
                   {"precision", exec_.tf32() ? "tf32" : "float32"},
                   {"deterministic", s(int(o.deterministic))},
                   {"exact", s(int(o.exact_convolutions))},
                   {"timed", s(int(o.cudnn_benchmark))},
                   {"search", plan_search_name()},
                   {"direction", direction}});
}

template <typename AlgoEnum>
std::optional<ConvAlgo> ConvPlanner::recorded(DeviceContext& ctx, ConvPlan& p, const std::string& key,
                                              const char* direction, const std::vector<ConvImpl>& own) {
  PlanBook* book = ctx.plan_book();
  if (book == nullptr) return std::nullopt;
  CudaContext& cu = ctx.cuda();
  const std::string what = name_ + " batch " + std::to_string(p.batch.n) + " " + direction;
  const std::optional<PlanRecord> r = book->find(key);
  if (!r) {
    if (book->fixed) cu.warn(what + ": not in " + book->source + "; planned here");
    return std::nullopt;
  }
  const auto stale = [&](const std::string& why) -> std::optional<ConvAlgo> {
    cu.warn(what + ": the recorded plan (" + r->impl + " " + std::to_string(r->algo) + ", chunk " +
            std::to_string(r->chunk) + ") " + why + " (stale); planned afresh");
    book->erase(key);
    return std::nullopt;
  };
  const std::optional<ConvImpl> impl = impl_from(r->impl);
  if (!impl) return stale("names an unknown implementation");
  if (*impl != ConvImpl::Cudnn) {
    if (r->chunk != 0 || std::find(own.begin(), own.end(), *impl) == own.end())
      return stale("is not eligible for this shape and these settings");
    return ConvAlgo{*impl};
  }
  const int n = p.batch.n;
  if (r->chunk < 0 || r->chunk >= n || (r->chunk > 0 && n % r->chunk != 0)) return stale("has an impossible sub-batch");
  if (r->algo < 0 || r->algo >= algo_count(AlgoEnum{})) return stale("names no cuDNN algorithm");
  const auto algo = static_cast<AlgoEnum>(r->algo);
  if (!rules_allow(algo, algo_rules(cu.options()))) return stale("is not allowed under this run's rules");
  // Confirmed by the rules and one workspace query, not by cuDNN's heuristics, which finalise every
  // algorithm (cudnn_algo_rules.h). The workspace comes from cuDNN, never from the file: a too-small
  // one would be written past.
  const ConvBatch probe = exec_.batch(r->chunk > 0 ? r->chunk : n);
  const std::optional<size_t> memory = cudnn_workspace(exec_, probe, algo, cu.cudnn());
  if (!memory) return stale("is not supported by cuDNN for this shape");
  if (*memory > kMaxConvWorkspace) return stale("needs more workspace than a convolution may have");
  ConvAlgo a{ConvImpl::Cudnn, r->algo, *memory, 0};
  if (r->chunk > 0) {
    a.chunk = r->chunk;
    exec_.add_chunk(p.batch, r->chunk);
  }
  return a;
}

/// The fallback where no allowed implementation serves the whole batch (cuDNN may offer no
/// deterministic algorithm for a direction at a large batch): the largest sub-batch, a divisor of
/// n below `below`, for which cuDNN's heuristics offer an allowed algorithm. Returns it, with its
/// descriptors added to the plan, or nothing.
template <typename Query>
std::optional<ConvAlgo> ConvPlanner::chunked(ConvPlan& p, int below, Query query) {
  for (int parts = 2; parts <= p.batch.n; ++parts) {
    if (p.batch.n % parts != 0 || p.batch.n / parts >= below) continue;
    const int chunk = p.batch.n / parts;
    ConvBatch probe = exec_.batch(chunk);
    std::optional<ConvAlgo> a = query(probe.x.get(), probe.y.get());
    if (!a) continue;
    a->chunk = chunk;
    exec_.add_chunk(p.batch, chunk);
    return a;
  }
  return std::nullopt;
}

/// Where an input gradient follows, backward runs the two directions side by side (the filter
/// gradient on the side stream). Two algorithms that are fastest alone may contend for the same
/// resource together (FFT ones both for memory bandwidth), so the two best of each direction are
/// timed in pairs, as backward queues them, and the pair that finishes first is kept.
void ConvPlanner::choose_side_by_side(DeviceContext& ctx, ConvPlan& p, Scratch& m, const Choice& data,
                                      const Choice& filter) {
  std::vector<ConvAlgo> data_options{data.algo}, filter_options{filter.algo};
  if (data.second) data_options.push_back(*data.second);
  if (filter.second) filter_options.push_back(*filter.second);
  if (data_options.size() * filter_options.size() < 2) return;
  CudaContext& cu = ctx.cuda();
  size_t data_bytes = 1, filter_bytes = 1;
  for (const ConvAlgo& a : data_options) data_bytes = std::max(data_bytes, exec_.bytes(a, p.batch.n));
  for (const ConvAlgo& a : filter_options) filter_bytes = std::max(filter_bytes, exec_.bytes(a, p.batch.n));
  Buffer<uint8_t> data_ws(Device::Cuda, data_bytes), filter_ws(Device::Cuda, filter_bytes);
  cudaStream_t st = cu.stream();
  const auto pair = [&](const ConvAlgo& da, const ConvAlgo& fa) {
    const float* dy = exec_.masked_gradient(st, p.batch.n, fa, m.dy.data(), m.dy.data(), m.masked.data(), m.db.data(),
                                            m.partials.data());
    const cudaStream_t side = cu.fork();  // as backward queues them
    exec_.backward_data(cu.cudnn(), st, data_ws.data(), p.batch, da, dy, m.w.data(), m.dx.data());
    exec_.filter_grad(cu.side_cudnn(), side, filter_ws.data(), p.batch, fa, m.x.data(), dy, m.dw.data(), m.db.data());
    cu.join();
  };
  double best = std::numeric_limits<double>::infinity();
  for (const ConvAlgo& da : data_options)
    for (const ConvAlgo& fa : filter_options) {
      try {
        GraphTiming timing = plan_timing();
        if (plan_search() == PlanSearch::Pruned) timing.stop_above_us = best * kClearlySlower;
        const double us = graph_time_us(
            st, [&] { pair(da, fa); }, timing);
        if (us < best) best = us, p.data = da, p.filter = fa;
      } catch (const CudaError&) {  // not capturable: never chosen
      }
    }
  char line[200];
  std::snprintf(line, sizeof line, "%s batch %d backward side by side: data %s + filter %s %.1f us", name_.c_str(),
                p.batch.n, label(p.data).c_str(), label(p.filter).c_str(), best);
  cu.note_choice(line);
}

/// Runs `a` once (op) and compares its outputs with the reference's: the relative difference, or
/// +inf where an output was left unwritten (poisoned with NaN first) or is not finite. Throws
/// what running `a` throws.
template <typename Op>
double ConvPlanner::check(cudaStream_t st, Scratch& m, const std::vector<Output>& outs, const ConvAlgo& a, void* ws,
                          Op& op) {
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
/// cuDNN's allowed algorithms `cudnn()` (best first; asked only when needed). `recorded`: the plan
/// book's choice, used if it passes the check (untimed). `fallback(below)` finds a chunked cuDNN
/// algorithm for sub-batches smaller than `below` (used when no candidate survives).
template <typename Cudnn, typename Fallback, typename Op>
ConvPlanner::Choice ConvPlanner::choose_direction(DeviceContext& ctx, ConvPlan& p, const char* direction,
                                                  const std::vector<ConvImpl>& own, Cudnn cudnn,
                                                  const std::optional<ConvAlgo>& recorded,
                                                  const std::vector<ConvAlgo>& references,
                                                  const std::vector<Output>& outs, Fallback fallback, Scratch& m,
                                                  bool timed, Op op) {
  CudaContext& cu = ctx.cuda();
  cudaStream_t st = cu.stream();
  size_t memory = 1;
  for (const ConvAlgo& a : references) memory = std::max(memory, a.memory);
  if (recorded) memory = std::max(memory, exec_.bytes(*recorded, p.batch.n));
  Buffer<uint8_t> ws(Device::Cuda, memory);
  const std::string what = name_ + " batch " + std::to_string(p.batch.n) + " " + direction;

  // The first reference that runs; its outputs are kept for the comparisons.
  std::optional<ConvAlgo> reference;
  std::string reference_error;
  for (const ConvAlgo& r : references) {
    try {
      op(r, ws.data());
      size_t offset = 0;
      for (const Output& o : outs) {
        CUDA_CHECK(
            cudaMemcpyAsync(m.reference.data() + offset, o.data, o.size * sizeof(float), cudaMemcpyDeviceToDevice, st));
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
  const double tol = tolerance(exec_.tf32());
  const auto try_candidate = [&](const ConvAlgo& a, void* scratch) {
    try {
      double err = check(st, m, outs, a, scratch, op);
      if (!have_reference && std::isfinite(err)) err = 0;  // compared with stale data: only finiteness counts
      if (err <= tol) return true;
      char line[240];
      std::snprintf(line, sizeof line, "%s: %s disagrees with %s (relative difference %.3g, tolerance %.3g); not used",
                    what.c_str(), label(a).c_str(), reference ? label(*reference).c_str() : "finite outputs", err, tol);
      cu.warn(line);
    } catch (const CudaError& e) {
      cu.warn(what + ": " + label(a) + " failed to run (" + e.what() + "); not used");
    }
    return false;
  };
  // A recorded choice is checked like any candidate, once and untimed; one that fails is planned afresh.
  if (recorded) {
    if (try_candidate(*recorded, ws.data())) {
      Choice c{*recorded, 0, 0, std::nullopt, true};
      note(ctx, what, c);
      return c;
    }
    cu.warn(what + ": the recorded " + label(*recorded) + " failed its check; planned afresh");
  }

  std::vector<ConvAlgo> candidates, spare;
  for (ConvImpl impl : own) candidates.push_back(ConvAlgo{impl});
  for (const ConvAlgo& a : cudnn()) candidates.push_back(a);
  // Timed (unless DPTRAIN_PLAN_TIMING=full): only cuDNN's first kTimedCudnnCandidates are checked
  // and timed. The rest are spares, checked in order only if none before them passes, so that the
  // cut never sends a batch that an allowed algorithm serves whole to sub-batches (or to an error).
  if (timed && plan_search() != PlanSearch::Full && candidates.size() > own.size() + kTimedCudnnCandidates) {
    spare.assign(candidates.begin() + static_cast<std::ptrdiff_t>(own.size() + kTimedCudnnCandidates),
                 candidates.end());
    candidates.resize(own.size() + kTimedCudnnCandidates);
  }
  for (const ConvAlgo& a : candidates) memory = std::max(memory, exec_.bytes(a, p.batch.n));
  if (memory > ws.size()) ws = Buffer<uint8_t>(Device::Cuda, memory);
  std::vector<ConvAlgo> usable;
  for (const ConvAlgo& a : candidates) {
    if (!timed && !usable.empty()) break;  // heuristics: the first that passes
    if (try_candidate(a, ws.data())) usable.push_back(a);
  }
  for (const ConvAlgo& a : spare) {
    if (!usable.empty()) break;
    if (exec_.bytes(a, p.batch.n) > ws.size()) ws = Buffer<uint8_t>(Device::Cuda, exec_.bytes(a, p.batch.n));
    if (try_candidate(a, ws.data())) usable.push_back(a);
  }
  if (usable.empty()) {
    // Nothing serves the whole batch: cuDNN over sub-batches, each size checked like the others.
    for (int below = p.batch.n; usable.empty();) {
      std::optional<ConvAlgo> a = fallback(below);
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
  // A candidate clearly slower than the best so far stops after its first timed replay.
  constexpr double kNever = std::numeric_limits<double>::infinity();
  best.us = best.cudnn_us = kNever;
  std::vector<std::pair<double, ConvAlgo>> times;
  double fastest = kNever;
  std::vector<ConvAlgo> losers;
  if (plan_search() == PlanSearch::Pruned) losers = nearby_losers(direction, p.batch.n);
  const auto lost_nearby = [&](const ConvAlgo& a) {
    return std::any_of(losers.begin(), losers.end(), [&](const ConvAlgo& l) { return same_algo(a, l); });
  };
  // Never all of them: if every one lost nearby, all are timed.
  const bool prune = !std::all_of(usable.begin(), usable.end(), lost_nearby);
  const auto time_candidate = [&](const ConvAlgo& a) {
    try {
      GraphTiming timing = plan_timing();
      if (plan_search() == PlanSearch::Pruned) timing.stop_above_us = fastest * kClearlySlower;
      const double us = graph_time_us(
          st, [&] { op(a, ws.data()); }, timing);
      times.emplace_back(us, a);
      fastest = std::min(fastest, us);
      if (a.impl == ConvImpl::Cudnn) best.cudnn_us = std::min(best.cudnn_us, us);
    } catch (const CudaError&) {  // not capturable: never chosen, since the step is a graph
    }
  };
  for (const ConvAlgo& a : usable)
    if (!(prune && lost_nearby(a))) time_candidate(a);
  // None of those could be captured: the ones passed over for losing nearby are the only ones left
  // that may run inside the step's graph, so they are timed too rather than left untried.
  if (times.empty() && prune)
    for (const ConvAlgo& a : usable)
      if (lost_nearby(a)) time_candidate(a);
  std::stable_sort(times.begin(), times.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  if (!times.empty()) best.algo = times[0].second, best.us = times[0].first;
  if (times.size() > 1) best.second = times[1].second;
  if (!times.empty() && times[0].first > 0) {
    Measured record{direction, p.batch.n, {}};
    for (const auto& [us, a] : times) record.relative.emplace_back(a, us / times[0].first);
    measured_.push_back(std::move(record));
  }
  note(ctx, what, best);
  return best;
}

std::vector<ConvAlgo> ConvPlanner::nearby_losers(const std::string& direction, int n) const {
  const Measured* nearest = nullptr;
  for (const Measured& m : measured_) {
    if (m.direction != direction || m.n == n || m.n > 2 * n || 2 * m.n < n) continue;
    if (nearest == nullptr || std::abs(m.n - n) < std::abs(nearest->n - n)) nearest = &m;
  }
  std::vector<ConvAlgo> losers;
  if (nearest != nullptr)
    for (const auto& [a, relative] : nearest->relative)
      if (relative > kFarSlower) losers.push_back(a);
  return losers;
}

void ConvPlanner::note(DeviceContext& ctx, const std::string& what, const Choice& c) {
  char line[200];
  if (c.recorded)
    std::snprintf(line, sizeof line, "%s: %s (recorded plan, checked)", what.c_str(), label(c.algo).c_str());
  else if (c.us == 0)
    std::snprintf(line, sizeof line, "%s: %s", what.c_str(), label(c.algo).c_str());
  else if (c.algo.impl != ConvImpl::Cudnn)
    std::snprintf(line, sizeof line, "%s: %s kernels %.1f us (best cuDNN %.1f us)", what.c_str(), label(c.algo).c_str(),
                  c.us, c.cudnn_us);
  else
    std::snprintf(line, sizeof line, "%s: %s %.1f us", what.c_str(), label(c.algo).c_str(), c.us);
  ctx.cuda().note_choice(line);
}

}  // namespace dptrain
