// The CUDA layers of a CPU-only build (DPTRAIN_HAVE_CUDA 0): compiled there instead of
// layers/cuda/, never beside it. A CUDA layer or loss is refused with the InputError of --device
// cuda (resolve_device refuses CUDA first; these answer the same way if a new path reaches them).
#include <memory>

#include "core/cuda_support.h"
#include "layers/cuda/cuda_layers.h"

#if DPTRAIN_HAVE_CUDA
#error "layers/cuda_absent.cpp belongs to the CPU-only build only (CMakeLists.txt)"
#endif

namespace dptrain {

std::unique_ptr<Layer<float>> make_cuda_layer(const LayerConfig&, int, Dims) { throw_built_without_cuda(); }

std::unique_ptr<SoftmaxCrossEntropy<float>> make_softmax_cross_entropy_cuda(float) { throw_built_without_cuda(); }

}  // namespace dptrain
