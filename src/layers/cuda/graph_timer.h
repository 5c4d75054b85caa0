// Times GPU work the way a training step runs it: captured into a CUDA graph and replayed, so the
// host's launch overhead (which the step never pays) is left out. Choosing a convolution algorithm
// by this time, rather than by cudnnFind's eager time, picks what is fastest inside the step.
#pragma once

#include <cuda_runtime.h>

#include <functional>
#include <limits>

namespace dptrain {

struct GraphTiming {
  int calls = 10;    // calls of op captured back to back into one graph
  int warmup = 2;    // replays before timing
  int replays = 7;   // timed replays at most; the median is reported
  /// A first timed replay above this (us per call) ends the timing there and is reported: the
  /// caller's candidate cannot win (ConvPlanner passes 1.3 x the best so far).
  double stop_above_us = std::numeric_limits<double>::infinity();
  /// Once three replays spread by at most this fraction of their median, timing stops: the time
  /// is clear, more replays would not change the choice.
  double settled = 0.02;
};

/// Median GPU microseconds per call of op (which queues work on stream) inside a CUDA graph. Throws
/// CudaError when op cannot be captured (the stream is left usable and the error cleared).
double graph_time_us(cudaStream_t stream, const std::function<void()>& op, GraphTiming timing = {});

}  // namespace dptrain
