// Check macros for every CUDA runtime, cuDNN, cuBLAS and NCCL call: on failure they throw
// CudaError with the call's text, file:line and the library's own error string. main() adds the
// rank and ends the job. Wrapped in do { } while (0) so they behave as one statement.
#pragma once

#include <stdexcept>
#include <string>

namespace dptrain {

class CudaError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

[[noreturn]] void throw_library_error(const char* library, const char* call, const char* file, int line,
                                      const std::string& what);

}  // namespace dptrain

#define DPTRAIN_CHECK_CALL(library, call, ok, errstr)                                        \
  do {                                                                                       \
    auto dptrain_status_ = (call);                                                           \
    if (dptrain_status_ != (ok))                                                             \
      ::dptrain::throw_library_error(library, #call, __FILE__, __LINE__, errstr(dptrain_status_)); \
  } while (0)

#define CUDA_CHECK(call) DPTRAIN_CHECK_CALL("CUDA", call, cudaSuccess, cudaGetErrorString)
#define CUDNN_CHECK(call) DPTRAIN_CHECK_CALL("cuDNN", call, CUDNN_STATUS_SUCCESS, cudnnGetErrorString)
#define CUBLAS_CHECK(call) DPTRAIN_CHECK_CALL("cuBLAS", call, CUBLAS_STATUS_SUCCESS, cublasGetStatusString)
#define NCCL_CHECK(call) DPTRAIN_CHECK_CALL("NCCL", call, ncclSuccess, ncclGetErrorString)
/// After a kernel launch: reports launch-configuration errors at the launch site.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())
