// DPTRAIN_HD marks functions that must compile, identically, for the host and the device, so that
// CPU and GPU backends draw the same random numbers and apply the same formulas.
#pragma once

#if defined(__CUDACC__)
#define DPTRAIN_HD __host__ __device__ __forceinline__
#else
#define DPTRAIN_HD inline
#endif
