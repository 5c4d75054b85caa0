// The default of Communicator::synchronize (host communicators have nothing of their own to watch).
#include "comm/communicator.h"

#include "cuda/check.h"

namespace dptrain {

void Communicator::synchronize(cudaStream_t stream) { CUDA_CHECK(cudaStreamSynchronize(stream)); }

}  // namespace dptrain
