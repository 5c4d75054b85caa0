#include "core/cublas_loader.h"

#include <cublas_v2.h>
#include <dlfcn.h>

#include <chrono>
#include <string>

#include "core/cuda_check.h"
#include "core/once_in_background.h"

#ifndef DPTRAIN_CUDA_LIBRARY_DIR
#error "DPTRAIN_CUDA_LIBRARY_DIR (the CUDA toolkit's library folder) comes from CMakeLists.txt"
#endif

namespace dptrain {
namespace {

/// The cuBLAS functions dptrain calls, resolved in the loaded library.
struct CublasLibrary {
  decltype(&cublasCreate_v2) create = nullptr;
  decltype(&cublasDestroy_v2) destroy = nullptr;
  decltype(&cublasSetStream_v2) set_stream = nullptr;
  decltype(&cublasSetWorkspace_v2) set_workspace = nullptr;
  decltype(&cublasSetMathMode) set_math_mode = nullptr;
  decltype(&cublasGetVersion_v2) get_version = nullptr;
  decltype(&cublasGetStatusString) get_status_string = nullptr;
  decltype(&cublasSgemm_v2) sgemm = nullptr;
  double load_seconds = 0;
};

const std::string kSoname = "libcublas.so." + std::to_string(CUBLAS_VER_MAJOR);

/// The library by its soname (the binary's run path, LD_LIBRARY_PATH, the loader's cache), else
/// from the toolkit folder the build found it in. Never closed: cuBLAS lives as long as the process.
void* open_library() {
  if (void* lib = dlopen(kSoname.c_str(), RTLD_NOW | RTLD_LOCAL)) return lib;
  const std::string by_name = dlerror();
  const std::string path = std::string(DPTRAIN_CUDA_LIBRARY_DIR) + "/" + kSoname;
  if (void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL)) return lib;
  throw CudaError("cannot load cuBLAS: " + by_name + "; " + dlerror());
}

template <typename Function>
void resolve(void* lib, const char* name, Function& function) {
  function = reinterpret_cast<Function>(dlsym(lib, name));
  if (function == nullptr) throw CudaError("cuBLAS (" + kSoname + ") has no function " + name);
}

CublasLibrary load() {
  const auto began = std::chrono::steady_clock::now();
  void* lib = open_library();
  CublasLibrary f;
  resolve(lib, "cublasCreate_v2", f.create);
  resolve(lib, "cublasDestroy_v2", f.destroy);
  resolve(lib, "cublasSetStream_v2", f.set_stream);
  resolve(lib, "cublasSetWorkspace_v2", f.set_workspace);
  resolve(lib, "cublasSetMathMode", f.set_math_mode);
  resolve(lib, "cublasGetVersion_v2", f.get_version);
  resolve(lib, "cublasGetStatusString", f.get_status_string);
  resolve(lib, "cublasSgemm_v2", f.sgemm);
  f.load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
  return f;
}

/// Waits for the load; rethrows its error (every call, not only the first).
const CublasLibrary& cublas() { return once_in_background<load>().get(); }

}  // namespace

void start_loading_cublas() { (void)once_in_background<load>(); }

double cublas_load_seconds() { return cublas().load_seconds; }

}  // namespace dptrain

// The entry points, forwarded. Exceptions leave them as from any C++ function (only C++ calls them).
extern "C" {

cublasStatus_t CUBLASWINAPI cublasCreate_v2(cublasHandle_t* handle) { return dptrain::cublas().create(handle); }

cublasStatus_t CUBLASWINAPI cublasDestroy_v2(cublasHandle_t handle) { return dptrain::cublas().destroy(handle); }

cublasStatus_t CUBLASWINAPI cublasSetStream_v2(cublasHandle_t handle, cudaStream_t stream) {
  return dptrain::cublas().set_stream(handle, stream);
}

cublasStatus_t CUBLASWINAPI cublasSetWorkspace_v2(cublasHandle_t handle, void* workspace, size_t bytes) {
  return dptrain::cublas().set_workspace(handle, workspace, bytes);
}

cublasStatus_t CUBLASWINAPI cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
  return dptrain::cublas().set_math_mode(handle, mode);
}

cublasStatus_t CUBLASWINAPI cublasGetVersion_v2(cublasHandle_t handle, int* version) {
  return dptrain::cublas().get_version(handle, version);
}

const char* CUBLASWINAPI cublasGetStatusString(cublasStatus_t status) {
  return dptrain::cublas().get_status_string(status);
}

cublasStatus_t CUBLASWINAPI cublasSgemm_v2(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                           int m, int n, int k, const float* alpha, const float* A, int lda,
                                           const float* B, int ldb, const float* beta, float* C, int ldc) {
  return dptrain::cublas().sgemm(handle, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // extern "C"
