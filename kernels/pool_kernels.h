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

// Pooling absorbed by the convolution before it (Layer::absorb_following_pool), for windows that
// tile the plane (conv_pool_fits). x is the convolution's output without its bias; the planes are
// samples x `channels`.

/// Whether conv_pool_forward and conv_pool_backward serve g: windows of 2 or 3 that tile the plane
/// (stride = kernel, no padding, h = oh k, w = ow k), oh, ow >= 1, h w <= INT_MAX (argmax holds
/// offsets in the plane), planes >= 1. Independent of the batch: any number of planes (int) is
/// served, so a check at batch 1 holds at every batch. Where rows of outputs are a multiple of 4
/// long a thread takes four outputs, with 16-byte accesses where the buffers are all 16-byte
/// aligned (else scalar ones: the same results); otherwise one. The functions also need planes =
/// samples x `channels`.
bool conv_pool_fits(const PoolGeometry& g);
/// maxpool_forward of x + bias[channel], after a ReLU when relu is set: the convolution's bias,
/// ReLU, pooling and dropout in one pass; the pre-pool values are never stored. Where the dropout
/// zeroed an output, argmax holds ~offset (for conv_pool_backward, which then needs no generator).
void conv_pool_forward(const float* x, const float* bias, bool relu, float* y, int32_t* argmax, const PoolGeometry& g,
                       int channels, const FusedDropout& drop, cudaStream_t stream);
/// The gradient of the convolution's output from that of the pooled output: dx = dy times the
/// dropout's scale (where conv_pool_forward's argmax says it kept the output) at each window's
/// argmax, 0 elsewhere, and 0 for the whole window where relu is set and its output y (the pooled
/// ReLU, times the mask) is not positive. When db is not null, db[c] = the sum of channel c's
/// gradients, in a fixed order (`scratch`: conv_pool_backward_scratch floats).
void conv_pool_backward(const float* dy, const float* y, const int32_t* argmax, bool relu, float* dx, float* db,
                        float* scratch, const PoolGeometry& g, int channels, const FusedDropout& drop,
                        cudaStream_t stream);
/// g: the geometry of the largest batch.
size_t conv_pool_backward_scratch(const PoolGeometry& g, int channels);

// Average pooling (layers/avgpool2d.h: avgpool2d and global_avgpool), the CPU backend's arithmetic
// in the CPU's order: a window summed row by row inside the plane (padding adds zeros), then divided
// by kh kw; backward gathers per input the dy of the windows that hold it, in output order, then
// divides. No atomics; any geometry the shape rule admits (a thread per output or input, grid-stride).

/// Planes of h x w averaged over windows of kh x kw (stride and padding on both axes) into oh x ow.
struct AvgPoolGeometry {
  int planes, h, w, oh, ow, kh, kw, stride, pad;
};

/// y = the sum of each window's elements inside the plane / (kh kw).
void avgpool_forward(const float* x, float* y, const AvgPoolGeometry& g, cudaStream_t stream);
/// dx[i] = (the sum of dy over the windows that hold i) / (kh kw).
void avgpool_backward(const float* dy, float* dx, const AvgPoolGeometry& g, cudaStream_t stream);

}  // namespace dptrain::kernels
