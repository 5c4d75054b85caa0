// The CUDA runtime of a CPU-only build (DPTRAIN_HAVE_CUDA 0; core/cuda_support.h): compiled there
// instead of core's CUDA sources, never beside them. There are no CUDA devices, and anything that
// would need one is refused with the InputError of --device cuda. The floors above define their
// own refusals (layers/cuda_absent.cpp, train/cuda_absent.cpp).
#include "core/cuda_support.h"
#include "core/error.h"

#if DPTRAIN_HAVE_CUDA
#error "core/cuda_absent.cpp belongs to the CPU-only build only (CMakeLists.txt)"
#endif

namespace dptrain {

void throw_built_without_cuda() {
  throw InputError("--device cuda", "this dptrain was built without CUDA (configure with the CUDA toolkit to use GPUs)");
}

int cuda_device_count() { return 0; }

}  // namespace dptrain
