// The batch gathers' normalisation, (pixel / 255 - mean) / std, for every kernel that normalises
// dataset pixels (data_kernels.cu's gathers, LeNet-5's conv forward when it gathers its batch):
// each operation rounded alone (__f*_rn, never contracted into an FMA), in data/sampler.cpp's
// order, so the host and every kernel give the same bits.
#pragma once

namespace dptrain::kernels {

__device__ __forceinline__ float normalized_pixel(float raw, float mean, float std) {
  return __fdiv_rn(__fsub_rn(__fmul_rn(raw, 1.0f / 255.0f), mean), std);
}

}  // namespace dptrain::kernels
