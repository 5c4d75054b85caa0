// Max pooling kernels that reproduce the CPU backend bit for bit: forward keeps, per output, the
// input offset of the first maximum of its window (as the CPU does); backward gathers, for each
// input, the gradients of the windows that chose it, in output order (the CPU's order of
// accumulation), so overlapping windows need no atomics. cuDNN's deterministic max-pool backward
// took 28 us for mnist_cnn's pool at batch 64 (ncu, H200), several times its memory traffic.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/fused_dropout.h"

namespace dptrain::kernels {

/// Planes of h x w pooled into oh x ow by square windows of k with stride s and padding pad.
struct PoolGeometry {
  int planes, h, w, oh, ow, k, stride, pad;
};

/// y = max of each window, times the mask of an absorbed dropout (kernels/fused_dropout.h; inactive:
/// none); argmax = the window's first maximum as an offset into its plane.
void maxpool_forward(const float* x, float* y, int32_t* argmax, const PoolGeometry& g, const FusedDropout& drop,
                     cudaStream_t stream);
/// dx[i] = sum over the windows whose argmax is i (0 where none) of dy times the dropout's mask.
void maxpool_backward(const float* dy, const int32_t* argmax, float* dx, const PoolGeometry& g, const FusedDropout& drop,
                      cudaStream_t stream);

}  // namespace dptrain::kernels
