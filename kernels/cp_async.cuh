// cp.async: copies from global to shared memory without a register round trip, so that the next
// tiles load while the current one is multiplied (the 3x3 convolutions, the skinny GEMMs).
#pragma once

namespace dptrain::kernels {

// A source size of 0 writes a zero: the convolution's padding and the edges of partial
// tiles cost no branches in the inner loops.
__device__ __forceinline__ void cp_async4(float* dst, const float* src, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s), "l"(src), "r"(valid ? 4 : 0));
}
/// Sixteen bytes, both addresses 16-byte aligned; through L2 only (.cg: the staged tile is read
/// from shared memory, not again from L1).
__device__ __forceinline__ void cp_async16(float* dst, const float* src, bool valid = true) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

}  // namespace dptrain::kernels
