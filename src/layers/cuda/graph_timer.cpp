#include "layers/cuda/graph_timer.h"

#include <algorithm>
#include <vector>

#include "core/cuda_check.h"
#include "core/cuda_raii.h"

namespace dptrain {
namespace {

CudaGraphExec capture(cudaStream_t stream, const std::function<void()>& op, int calls) {
  CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  cudaGraph_t raw = nullptr;
  try {
    for (int i = 0; i < calls; ++i) op();
  } catch (...) {
    cudaStreamEndCapture(stream, &raw);  // leave the stream usable; op's error is the one reported
    if (raw) cudaGraphDestroy(raw);
    cudaGetLastError();
    throw;
  }
  const cudaError_t ended = cudaStreamEndCapture(stream, &raw);
  if (ended != cudaSuccess) cudaGetLastError();  // e.g. op synchronised: not capturable
  CUDA_CHECK(ended);
  CudaGraph graph(raw);
  cudaGraphExec_t exec = nullptr;
  CUDA_CHECK(cudaGraphInstantiate(&exec, graph, cudaGraphInstantiateFlagUseNodePriority));  // as StepGraph
  return CudaGraphExec(exec);
}

}  // namespace

double graph_time_us(cudaStream_t stream, const std::function<void()>& op, GraphTiming timing) {
  CudaGraphExec exec = capture(stream, op, timing.calls);
  for (int i = 0; i < timing.warmup; ++i) CUDA_CHECK(cudaGraphLaunch(exec, stream));
  CudaEvent start = make_event(true), stop = make_event(true);
  std::vector<double> us;
  for (int i = 0; i < timing.replays; ++i) {
    CUDA_CHECK(cudaEventRecord(start, stream));
    CUDA_CHECK(cudaGraphLaunch(exec, stream));
    CUDA_CHECK(cudaEventRecord(stop, stream));
    CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    us.push_back(1000.0 * ms / timing.calls);
    if (us.size() == 1 && us[0] > timing.stop_above_us) return us[0];  // cannot win: no more replays
    if (us.size() >= 3) {
      const auto [lo, hi] = std::minmax_element(us.begin(), us.end());
      std::vector<double> sorted = us;
      std::nth_element(sorted.begin(), sorted.begin() + sorted.size() / 2, sorted.end());
      if (*hi - *lo <= timing.settled * sorted[sorted.size() / 2]) break;
    }
  }
  std::nth_element(us.begin(), us.begin() + us.size() / 2, us.end());
  return us[us.size() / 2];
}

}  // namespace dptrain
