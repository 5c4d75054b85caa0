#include "kernels/conv_shared.cuh"

#include <string>

#include "core/cuda_check.h"

namespace dptrain::kernels::conv_shared {

namespace {

constexpr int kFinishRows = 8;

__global__ void transpose_flip_kernel(const float* __restrict__ w, float* __restrict__ wt, int oc, int c) {
  const long wide = blockIdx.x * long{blockDim.x} + threadIdx.x;  // 9 oc c <= INT_MAX, but the last block runs past it
  if (wide >= static_cast<long>(oc) * c * kTaps) return;
  const int e = static_cast<int>(wide);
  const int tap = e % kTaps, o = e / kTaps % oc, ci = e / kTaps / oc;
  wt[e] = w[(o * c + ci) * kTaps + kTaps - 1 - tap];
}

// Block of 32 outputs x 8 rows: row r adds chunks r, r + 8, ... in order (coalesced over outputs), then row 0 adds
// the 8 rows in order.
__global__ void finish_kernel(const float* __restrict__ partial, int chunks, int taps, int total,
                              float* __restrict__ dw, float* __restrict__ db) {
  __shared__ float sums[kFinishRows][33];
  const long wide = blockIdx.x * 32L + threadIdx.x;  // total <= INT_MAX, but the last block runs past it
  const bool valid = wide < total;
  const int t = valid ? static_cast<int>(wide) : 0;
  float sum = 0.0f;
  if (valid) {
#pragma unroll 4
    for (int c = threadIdx.y; c < chunks; c += kFinishRows) sum += partial[static_cast<long long>(c) * total + t];
  }
  sums[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y != 0 || !valid) return;
  float total_sum = 0.0f;
  for (int r = 0; r < kFinishRows; ++r) total_sum += sums[r][threadIdx.x];
  const int o = t / (taps + 1), j = t % (taps + 1);
  if (j < taps)
    dw[o * taps + j] = total_sum;
  else
    db[o] = total_sum;
}

}  // namespace

bool plain_3x3(const ConvGeometry& g) {
  if (g.k != 3 || g.stride != 1 || g.pad < 0 || g.pad > 2 || g.n < 1 || g.h < 1 || g.w < 1) return false;
  if (g.oh != g.h + 2 * g.pad - 2 || g.ow != g.w + 2 * g.pad - 2 || g.oh < 1 || g.ow < 1) return false;
  if (g.c < 1 || g.oc < 1 || g.c > 65535 * 32 || g.oc > 65535 * 32) return false;  // grid.y and z: channels / 32
  const long long n = g.n;
  return fits_int(n * g.c * g.h * g.w) && fits_int(n * g.oc * g.oh * g.ow) && fits_int(n * g.oh) &&
         fits_int(static_cast<long long>(g.oc) * g.c * kTaps);
}

int multiprocessors() {
  int device = 0, sms = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return sms;
}

void set_smem(const void* kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

void refuse(const char* what, const char* family, const ConvGeometry& g) {
  const auto s = [](int v) { return std::to_string(v); };
  throw CudaError(std::string(what) + ": the " + family + " kernels do not serve a batch of " + s(g.n) + " x " +
                  s(g.c) + "x" + s(g.h) + "x" + s(g.w) + " -> " + s(g.oc) + "x" + s(g.oh) + "x" + s(g.ow) +
                  " (kernel " + s(g.k) + ", stride " + s(g.stride) + ", pad " + s(g.pad) + ")");
}

void transpose_flip(const float* w, float* wt, int oc, int c, cudaStream_t stream) {
  const int count = oc * c * kTaps;
  constexpr int kThreads = 256;
  const unsigned blocks = static_cast<unsigned>((count + long{kThreads} - 1) / kThreads);
  transpose_flip_kernel<<<blocks, kThreads, 0, stream>>>(w, wt, oc, c);
  CUDA_CHECK_LAUNCH();
}

void finish_filter_grad(const float* partial, int chunks, const ConvGeometry& g, float* dw, float* db,
                        cudaStream_t stream) {
  const int taps = g.c * kTaps, total = g.oc * (taps + 1);
  const unsigned blocks = static_cast<unsigned>((total + 31L) / 32);
  finish_kernel<<<blocks, dim3(32, kFinishRows), 0, stream>>>(partial, chunks, taps, total, dw, db);
  CUDA_CHECK_LAUNCH();
}

}  // namespace dptrain::kernels::conv_shared
