// The CUDA batch source of a CPU-only build (DPTRAIN_HAVE_CUDA 0): compiled there instead of
// train/cuda_batch_source.cpp, never beside it; refused with the InputError of --device cuda.
#include <memory>

#include "core/cuda_support.h"
#include "train/batch_source.h"

#if DPTRAIN_HAVE_CUDA
#error "train/cuda_absent.cpp belongs to the CPU-only build only (CMakeLists.txt)"
#endif

namespace dptrain {

/// Declared where it is called (train/host_batch_source.cpp), as the CUDA build defines it.
std::unique_ptr<BatchSource> make_cuda_batch_source(const Dataset&, const DataConfig&, bool, DeviceContext&, bool) {
  throw_built_without_cuda();
}

}  // namespace dptrain
