#include "core/cublas_loader.h"

#include <cublasLt.h>
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
  // cuBLASLt (libcublasLt, which libcublas loads as its dependency): the linear layers' bias epilogue.
  decltype(&cublasLtCreate) lt_create = nullptr;
  decltype(&cublasLtDestroy) lt_destroy = nullptr;
  decltype(&cublasLtMatmulDescCreate) lt_desc_create = nullptr;
  decltype(&cublasLtMatmulDescDestroy) lt_desc_destroy = nullptr;
  decltype(&cublasLtMatmulDescSetAttribute) lt_desc_set = nullptr;
  decltype(&cublasLtMatrixLayoutCreate) lt_layout_create = nullptr;
  decltype(&cublasLtMatrixLayoutDestroy) lt_layout_destroy = nullptr;
  decltype(&cublasLtMatmulPreferenceCreate) lt_pref_create = nullptr;
  decltype(&cublasLtMatmulPreferenceDestroy) lt_pref_destroy = nullptr;
  decltype(&cublasLtMatmulPreferenceSetAttribute) lt_pref_set = nullptr;
  decltype(&cublasLtMatmulAlgoGetHeuristic) lt_heuristic = nullptr;
  decltype(&cublasLtMatmul) lt_matmul = nullptr;
  double load_seconds = 0;
};

const std::string kSoname = "libcublas.so." + std::to_string(CUBLAS_VER_MAJOR);
const std::string kLtSoname = "libcublasLt.so." + std::to_string(CUBLAS_VER_MAJOR);

/// The library by its soname (the binary's run path, LD_LIBRARY_PATH, the loader's cache), else
/// from the toolkit folder the build found it in. Never closed: cuBLAS lives as long as the process.
void* open_library(const std::string& soname) {
  if (void* lib = dlopen(soname.c_str(), RTLD_NOW | RTLD_LOCAL)) return lib;
  const std::string by_name = dlerror();
  const std::string path = std::string(DPTRAIN_CUDA_LIBRARY_DIR) + "/" + soname;
  if (void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL)) return lib;
  throw CudaError("cannot load " + soname + ": " + by_name + "; " + dlerror());
}

template <typename Function>
void resolve_in(void* lib, const std::string& soname, const char* name, Function& function) {
  function = reinterpret_cast<Function>(dlsym(lib, name));
  if (function == nullptr) throw CudaError("cuBLAS (" + soname + ") has no function " + name);
}

CublasLibrary load() {
  const auto began = std::chrono::steady_clock::now();
  void* lib = open_library(kSoname);
  // libcublas loaded libcublasLt as its dependency: this finds that copy.
  void* lt = open_library(kLtSoname);
  const auto resolve = [&](const char* name, auto& function) { resolve_in(lib, kSoname, name, function); };
  const auto resolve_lt = [&](const char* name, auto& function) { resolve_in(lt, kLtSoname, name, function); };
  CublasLibrary f;
  resolve("cublasCreate_v2", f.create);
  resolve("cublasDestroy_v2", f.destroy);
  resolve("cublasSetStream_v2", f.set_stream);
  resolve("cublasSetWorkspace_v2", f.set_workspace);
  resolve("cublasSetMathMode", f.set_math_mode);
  resolve("cublasGetVersion_v2", f.get_version);
  resolve("cublasGetStatusString", f.get_status_string);
  resolve("cublasSgemm_v2", f.sgemm);
  resolve_lt("cublasLtCreate", f.lt_create);
  resolve_lt("cublasLtDestroy", f.lt_destroy);
  resolve_lt("cublasLtMatmulDescCreate", f.lt_desc_create);
  resolve_lt("cublasLtMatmulDescDestroy", f.lt_desc_destroy);
  resolve_lt("cublasLtMatmulDescSetAttribute", f.lt_desc_set);
  resolve_lt("cublasLtMatrixLayoutCreate", f.lt_layout_create);
  resolve_lt("cublasLtMatrixLayoutDestroy", f.lt_layout_destroy);
  resolve_lt("cublasLtMatmulPreferenceCreate", f.lt_pref_create);
  resolve_lt("cublasLtMatmulPreferenceDestroy", f.lt_pref_destroy);
  resolve_lt("cublasLtMatmulPreferenceSetAttribute", f.lt_pref_set);
  resolve_lt("cublasLtMatmulAlgoGetHeuristic", f.lt_heuristic);
  resolve_lt("cublasLtMatmul", f.lt_matmul);
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

cublasStatus_t CUBLASWINAPI cublasLtCreate(cublasLtHandle_t* handle) { return dptrain::cublas().lt_create(handle); }

cublasStatus_t CUBLASWINAPI cublasLtDestroy(cublasLtHandle_t handle) { return dptrain::cublas().lt_destroy(handle); }

cublasStatus_t CUBLASWINAPI cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, cublasComputeType_t compute,
                                                     cudaDataType_t scale) {
  return dptrain::cublas().lt_desc_create(desc, compute, scale);
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
  return dptrain::cublas().lt_desc_destroy(desc);
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr,
                                                           const void* buf, size_t bytes) {
  return dptrain::cublas().lt_desc_set(desc, attr, buf, bytes);
}

cublasStatus_t CUBLASWINAPI cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, cudaDataType type, uint64_t rows,
                                                       uint64_t cols, int64_t ld) {
  return dptrain::cublas().lt_layout_create(layout, type, rows, cols, ld);
}

cublasStatus_t CUBLASWINAPI cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
  return dptrain::cublas().lt_layout_destroy(layout);
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
  return dptrain::cublas().lt_pref_create(pref);
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
  return dptrain::cublas().lt_pref_destroy(pref);
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                                 cublasLtMatmulPreferenceAttributes_t attr,
                                                                 const void* buf, size_t bytes) {
  return dptrain::cublas().lt_pref_set(pref, attr, buf, bytes);
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                                                           cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                                           cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                                           cublasLtMatmulPreference_t pref, int requested,
                                                           cublasLtMatmulHeuristicResult_t results[], int* returned) {
  return dptrain::cublas().lt_heuristic(handle, desc, a, b, c, d, pref, requested, results, returned);
}

cublasStatus_t CUBLASWINAPI cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, const void* alpha,
                                           const void* a, cublasLtMatrixLayout_t a_layout, const void* b,
                                           cublasLtMatrixLayout_t b_layout, const void* beta, const void* c,
                                           cublasLtMatrixLayout_t c_layout, void* d, cublasLtMatrixLayout_t d_layout,
                                           const cublasLtMatmulAlgo_t* algo, void* workspace, size_t workspace_bytes,
                                           cudaStream_t stream) {
  return dptrain::cublas().lt_matmul(handle, desc, alpha, a, a_layout, b, b_layout, beta, c, c_layout, d, d_layout,
                                     algo, workspace, workspace_bytes, stream);
}

}  // extern "C"
