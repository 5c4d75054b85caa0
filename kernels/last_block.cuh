// The last block of a launch to arrive, by a ticket counter: for kernels whose blocks write partial
// sums that the last block adds in a fixed order within the same launch (the loss kernel, the fused
// classifier backward), so the order depends on the shape alone and no second launch is queued.
#pragma once

namespace dptrain::kernels {

/// Whether this block is the last of `blocks` to arrive at *arrivals. Every thread of the block calls
/// it after writing its partial sums; when it returns true, every other block's writes are visible to
/// this block (read them with __ldcg: this SM's L1 may hold stale lines). The counter is zero before
/// a launch's first arrival; the last block sets it back to zero when it is done, so the next launch
/// (a replayed graph) starts from zero.
__device__ __forceinline__ bool last_block_to_arrive(unsigned* arrivals, unsigned blocks) {
  __shared__ bool last;
  __threadfence();  // this block's partials are visible before its ticket says so
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(arrivals, 1u) == blocks - 1;
  __syncthreads();
  if (last) __threadfence();
  return last;
}

}  // namespace dptrain::kernels
