#include "core/cuda_context.h"

#include <cstdio>

#include "core/cuda_check.h"
#include "core/cudnn_preload.h"
#include "core/step_state_kernels.h"

namespace dptrain {

CudaStream make_stream(int priority) {
  cudaStream_t s = nullptr;
  CUDA_CHECK(cudaStreamCreateWithPriority(&s, cudaStreamNonBlocking, priority));
  return CudaStream(s);
}

CudaEvent make_event(bool timing) {
  cudaEvent_t e = nullptr;
  CUDA_CHECK(cudaEventCreateWithFlags(&e, timing ? cudaEventDefault : cudaEventDisableTiming));
  return CudaEvent(e);
}

namespace {

/// Makes `options.device` current before any member allocates on it, and creates its context now
/// (cudaFree(nullptr): a no-op call that needs one), so the time it takes is measured as the
/// context's and not the first stream's; sets `ready` when done.
const CudaOptions& select_device(const CudaOptions& options, std::chrono::steady_clock::time_point& ready) {
  CUDA_CHECK(cudaSetDevice(options.device));
  CUDA_CHECK(cudaFree(nullptr));
  ready = std::chrono::steady_clock::now();
  return options;
}

/// The device's highest stream priority (the lowest is 0; greater priorities are more negative).
int highest_priority() {
  int lowest = 0, highest = 0;
  CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&lowest, &highest));
  return highest;
}

/// One step below the highest, where the device has one (else the highest).
int second_priority() {
  int lowest = 0, highest = 0;
  CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&lowest, &highest));
  return highest < lowest ? highest + 1 : highest;
}

CublasLtHandle make_cublaslt() {
  cublasLtHandle_t lt = nullptr;
  CUBLAS_CHECK(cublasLtCreate(&lt));
  return CublasLtHandle(lt);
}

}  // namespace

CudaContext::Lane::Lane(bool tf32, int priority) : stream(make_stream(priority)) {
  // cuDNN loads its parts itself on first need: never while the preload is still loading them (a
  // part's initialiser and cuDNN's own loader could each wait for the other's lock). Usually long
  // done: it ran beside the context's creation. Without resolve_device (a test), this starts it.
  (void)cudnn_preload_result();
  cudnnHandle_t dnn = nullptr;
  CUDNN_CHECK(cudnnCreate(&dnn));
  cudnn = CudnnHandle(dnn);
  CUDNN_CHECK(cudnnSetStream(cudnn, stream));
  cublasHandle_t blas = nullptr;
  CUBLAS_CHECK(cublasCreate(&blas));
  cublas = CublasHandle(blas);
  CUBLAS_CHECK(cublasSetStream(cublas, stream));
  cublas_workspace = Buffer<uint8_t>(Device::Cuda, size_t{32} << 20);
  CUBLAS_CHECK(cublasSetWorkspace(cublas, cublas_workspace.data(), cublas_workspace.size()));
  CUBLAS_CHECK(cublasSetMathMode(cublas, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
}

CudaContext::CudaContext(const CudaOptions& options)
    : options_(select_device(options, device_ready_)),
      main_(options.tf32, highest_priority()),
      side_(options.tf32, second_priority()),
      cublaslt_(make_cublaslt()),
      update_(make_stream(0)),
      forked_(make_event()),
      joined_(make_event()),
      updated_(make_event()) {
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, options.device));
  device_name_ = prop.name;
  step_state_ = Buffer<uint8_t>(Device::Cuda, sizeof(StepState));
  CUDA_CHECK(cudaMemsetAsync(step_state_.data(), 0, sizeof(StepState), main_.stream));
  built_ = std::chrono::steady_clock::now();
}

CudaContext::~CudaContext() {
  for (const Lane* lane : {&main_, &side_})
    if (lane->stream.get() != nullptr) (void)cudaStreamSynchronize(lane->stream);
  if (update_.get() != nullptr) (void)cudaStreamSynchronize(update_);
}

void CudaContext::set_step(const StepState& state) {
  kernels::write_step_state(reinterpret_cast<StepState*>(step_state_.data()), state, main_.stream);
}

cudaStream_t CudaContext::fork() {
  CUDA_CHECK(cudaEventRecord(forked_, main_.stream));
  CUDA_CHECK(cudaStreamWaitEvent(side_.stream, forked_, 0));
  side_forked_ = true;
  return side_.stream;
}

cudaStream_t CudaContext::queue_update() {
  order_after_queued(update_);
  updates_queued_ = true;
  return update_;
}

// A capture may not wait on a stream it never forked into: the side and update streams are waited
// on only where work was queued there since the last join.
void CudaContext::join() {
  if (side_forked_) {
    CUDA_CHECK(cudaEventRecord(joined_, side_.stream));
    CUDA_CHECK(cudaStreamWaitEvent(main_.stream, joined_, 0));
    side_forked_ = false;
  }
  if (!updates_queued_) return;
  CUDA_CHECK(cudaEventRecord(updated_, update_));
  CUDA_CHECK(cudaStreamWaitEvent(main_.stream, updated_, 0));
  updates_queued_ = false;
}

void CudaContext::order_after_queued(cudaStream_t other) {
  CUDA_CHECK(cudaEventRecord(forked_, main_.stream));
  CUDA_CHECK(cudaStreamWaitEvent(other, forked_, 0));
  if (!side_forked_) return;
  CUDA_CHECK(cudaEventRecord(joined_, side_.stream));
  CUDA_CHECK(cudaStreamWaitEvent(other, joined_, 0));
}

void* CudaContext::grow(Lane& lane, size_t bytes) {
  if (bytes > lane.workspace.size()) {
    CUDA_CHECK(cudaStreamSynchronize(lane.stream));
    lane.workspace = Buffer<uint8_t>(Device::Cuda, bytes);
    ++workspace_generation_;
  }
  return lane.workspace.data();
}

void CudaContext::warn(const std::string& line) {
  std::fprintf(stderr, "dptrain: warning: %s\n", line.c_str());
  warnings_.push_back(line);
}

void* CudaContext::workspace(size_t bytes) { return grow(main_, bytes); }
void* CudaContext::side_workspace(size_t bytes) { return grow(side_, bytes); }

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

}  // namespace dptrain
