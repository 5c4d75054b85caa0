#include "cuda/cuda_context.h"

#include "cuda/check.h"
#include "kernels/step_kernels.h"

namespace dptrain {

CudaStream make_stream() {
  cudaStream_t s = nullptr;
  CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  return CudaStream(s);
}

CudaEvent make_event(bool timing) {
  cudaEvent_t e = nullptr;
  CUDA_CHECK(cudaEventCreateWithFlags(&e, timing ? cudaEventDefault : cudaEventDisableTiming));
  return CudaEvent(e);
}

CudaContext::CudaContext(const CudaOptions& options) : options_(options) {
  CUDA_CHECK(cudaSetDevice(options.device));
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, options.device));
  device_name_ = prop.name;
  stream_ = make_stream();
  cudnnHandle_t dnn = nullptr;
  CUDNN_CHECK(cudnnCreate(&dnn));
  cudnn_ = CudnnHandle(dnn);
  CUDNN_CHECK(cudnnSetStream(cudnn_, stream_));
  cublasHandle_t blas = nullptr;
  CUBLAS_CHECK(cublasCreate(&blas));
  cublas_ = CublasHandle(blas);
  CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
  cublas_workspace_ = Buffer<uint8_t>(Device::Cuda, size_t{32} << 20);
  CUBLAS_CHECK(cublasSetWorkspace(cublas_, cublas_workspace_.data(), cublas_workspace_.size()));
  step_state_ = Buffer<uint8_t>(Device::Cuda, sizeof(StepState));
  CUDA_CHECK(cudaMemsetAsync(step_state_.data(), 0, sizeof(StepState), stream_));
  CUBLAS_CHECK(cublasSetMathMode(cublas_, options.tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
}

CudaContext::~CudaContext() {
  if (stream_.get() != nullptr) (void)cudaStreamSynchronize(stream_);
}

void CudaContext::set_step(const StepState& state) {
  kernels::write_step_state(reinterpret_cast<StepState*>(step_state_.data()), state, stream_);
}

void* CudaContext::workspace(size_t bytes) {
  if (bytes > workspace_.size()) {
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    workspace_ = Buffer<uint8_t>(Device::Cuda, bytes);
  }
  return workspace_.data();
}

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

}  // namespace dptrain
