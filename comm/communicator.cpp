// The default of Communicator::synchronize (host communicators have nothing of their own to watch).
#include "comm/communicator.h"

#if DPTRAIN_HAVE_CUDA
#include "core/cuda_check.h"
#endif

namespace dptrain {

#if DPTRAIN_HAVE_CUDA
void Communicator::synchronize(cudaStream_t stream) { CUDA_CHECK(cudaStreamSynchronize(stream)); }
#else
void Communicator::synchronize(cudaStream_t) {}  // a CPU-only build queues no device work
#endif

}  // namespace dptrain
