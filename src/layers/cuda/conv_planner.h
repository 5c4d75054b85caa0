// ConvPlanner: chooses, once per batch size, which implementation computes each direction of one
// convolution layer (ConvExecutor runs them), and keeps the choices.
// - Eligibility: cuDNN's algorithms that the run's rules allow (only deterministic ones unless
//   train.deterministic is off; no FFT or Winograd under train.exact_convolutions; never the
//   non-fused Winograd, whose 5x5 outputs err by up to 1.6e-3; at most kMaxConvWorkspace), and
//   dptrain's kernel families whose guards admit the shape. Timed, an algorithm over the workspace
//   cap at the whole batch is a candidate over the largest equal sub-batches on which it fits.
// - Safety: every candidate is run once on random inputs, its outputs poisoned first, and compared
//   on the device with the reference kernels (kernels/conv_reference.h: the definition, summed in
//   double) or, past their cost, cuDNN's plainest algorithm; one that disagrees (1e-4 in relative
//   norm, 1e-2 under tf32), leaves an output unwritten or fails to run is dropped with one warning
//   and never used. Where nothing serves the whole batch, cuDNN runs over equal sub-batches
//   (warned once).
// - Choice: with train.cudnn_benchmark the survivors are timed inside a CUDA graph, as the step
//   runs them (cudnnFind only proposes: its eager times include launch overhead that a replayed
//   step never pays), and the fastest is kept; where an input gradient follows, the two best of
//   each backward direction are also timed in pairs, side by side, as backward queues them.
//   Without it: dptrain's kernels first, then cuDNN's heuristic order, the first that passes.
// - Pruning (timed): only dptrain's eligible kernels and the first kTimedCudnnCandidates allowed
//   algorithms in cuDNN's heuristic order are checked and timed (cudnnFind, which runs every
//   algorithm eagerly, is not called; the others are checked, in order, only if none of those
//   passes, and the first that does is used); a candidate whose first timed replay is clearly slower than
//   the best so far stops there, and timing of the others ends once three replays agree.
//   A candidate that lost by more than 2x at a nearby batch size of the same layer and direction
//   (within a factor of 2) is checked but not timed, unless none of the others could be timed.
//   DPTRAIN_PLAN_TIMING=full restores the earlier search (cudnnFind, all allowed, 7 replays) for A/B.
// - Recorded plans: with a plan book on the context (DeviceContext::plan_book, io/plan_cache.h)
//   each direction's choice is looked up by a key of the layer's shape, the batch, the direction
//   and every setting that filters candidates, and recorded after it is made. A recorded choice is
//   used only if it is still eligible here (the family's guard admits the shape; the run's rules
//   allow the algorithm and cuDNN supports it, its workspace asked of cuDNN again, without the
//   heuristic query) and passes the same check against the reference, run once, untimed;
//   otherwise it is dropped with one warning and the direction is planned afresh.
// Planning allocates, synchronizes and grows the context's workspaces: it runs before a step is
// captured (Layer::plan), never inside one.
#pragma once

#include <cudnn.h>

#include <deque>
#include <optional>
#include <string>
#include <vector>

#include "core/cuda_context.h"
#include "core/device_context.h"
#include "layers/cuda/conv_executor.h"

namespace dptrain {

/// One batch size's choices, and the workspace they need.
struct ConvPlan {
  ConvBatch batch;
  ConvAlgo fwd, data, filter;
  bool backward = false;  ///< data and filter chosen (an evaluation batch needs only fwd)
  size_t workspace = 0;
};

class ConvPlanner {
 public:
  /// name: the layer's, for notes and warnings. needs_input_grad: false for the model's first layer,
  /// whose input gradient is never computed.
  ConvPlanner(const ConvExecutor& exec, std::string name, bool needs_input_grad);

  /// The plan for batch n, chosen the first time the batch is seen (with its backward directions
  /// when asked; an evaluation batch needs its forward only). The returned reference stays valid.
  const ConvPlan& plan(DeviceContext& ctx, int n, bool backward);

 private:
  struct Scratch;
  struct Output {
    float* data;
    size_t size;
  };
  struct Choice {
    ConvAlgo algo;
    double us = 0, cudnn_us = 0;     // the chosen one's graph time; the best cuDNN one's (0: untimed)
    std::optional<ConvAlgo> second;  // the runner-up among those timed
    bool recorded = false;           // taken from the plan book (checked, not timed)
  };

  void choose(DeviceContext& ctx, ConvPlan& p, bool forward, bool backward);
  template <typename Cudnn, typename Fallback, typename Op>
  Choice choose_direction(DeviceContext& ctx, ConvPlan& p, const char* direction, const std::vector<ConvImpl>& own,
                          Cudnn cudnn, const std::optional<ConvAlgo>& recorded,
                          const std::vector<ConvAlgo>& references, const std::vector<Output>& outs, Fallback fallback,
                          Scratch& m, bool timed, Op op);
  /// The key of one direction's choice at batch n in the plan book.
  std::string key(const CudaOptions& o, int n, const char* direction) const;
  /// The book's choice for `key` as a candidate, if it is still eligible here; nothing on a miss.
  /// AlgoEnum: the direction's cuDNN algorithm type (a recorded cuDNN algorithm is confirmed by the
  /// run's rules and cuDNN's workspace query for it: cudnn_algo_rules.h).
  template <typename AlgoEnum>
  std::optional<ConvAlgo> recorded(DeviceContext& ctx, ConvPlan& p, const std::string& key, const char* direction,
                                   const std::vector<ConvImpl>& own);
  template <typename Op>
  double check(cudaStream_t st, Scratch& m, const std::vector<Output>& outs, const ConvAlgo& a, void* ws, Op& op);
  template <typename Query>
  std::optional<ConvAlgo> chunked(ConvPlan& p, int below, Query query);
  void choose_side_by_side(DeviceContext& ctx, ConvPlan& p, Scratch& m, const Choice& data, const Choice& filter);
  void note(DeviceContext& ctx, const std::string& what, const Choice& c);

  const ConvExecutor& exec_;
  std::string name_;
  bool needs_input_grad_;
  std::deque<ConvPlan> plans_;  // a deque: references to earlier plans survive new ones
  /// What the timed planning of this layer measured, per direction and batch size: each timed
  /// candidate's time relative to the fastest. A nearby batch size times only the ones that came
  /// close (see nearby_losers).
  struct Measured {
    std::string direction;
    int n = 0;
    std::vector<std::pair<ConvAlgo, double>> relative;
  };
  std::vector<Measured> measured_;
  /// The candidates that lost by more than kFarSlower at the nearest earlier batch size of this
  /// direction within a factor of 2 of n (the epoch's short last batch after the full one).
  std::vector<ConvAlgo> nearby_losers(const std::string& direction, int n) const;
};

}  // namespace dptrain
