// The CUDA floor of a CPU-only build (DPTRAIN_HAVE_CUDA 0; core/cuda_support.h): compiled there
// instead of every other file of src/cuda and kernels/, never beside them. It defines the entry
// points that CUDA-free code calls into the CUDA backend: there are no CUDA devices, and a CUDA
// layer, loss or batch source is refused with the InputError of --device cuda. Nothing reaches the
// makers in practice (resolve_device refuses CUDA first); they answer the same way if a new path does.
#include <memory>

#include "core/cuda_support.h"
#include "core/error.h"
#include "cuda/cuda_layers.h"
#include "train/batch_source.h"

#if DPTRAIN_HAVE_CUDA
#error "cuda/cuda_absent.cpp belongs to the CPU-only build only (CMakeLists.txt)"
#endif

namespace dptrain {

void throw_built_without_cuda() {
  throw InputError("--device cuda", "this dptrain was built without CUDA (configure with the CUDA toolkit to use GPUs)");
}

int cuda_device_count() { return 0; }

std::unique_ptr<Layer<float>> make_cuda_layer(const LayerConfig&, int, Dims) { throw_built_without_cuda(); }

std::unique_ptr<SoftmaxCrossEntropy<float>> make_softmax_cross_entropy_cuda() { throw_built_without_cuda(); }

/// Declared where it is called (train/host_batch_source.cpp), as the CUDA build defines it.
std::unique_ptr<BatchSource> make_cuda_batch_source(const Dataset&, const DataConfig&, bool, DeviceContext&) {
  throw_built_without_cuda();
}

}  // namespace dptrain
