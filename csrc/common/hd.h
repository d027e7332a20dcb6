// FG_HD marks small functions that both the host and the device call: index maths shared by
// the CUDA kernels and the CPU code that plans or checks them.
#pragma once

#if defined(__CUDACC__)
#define FG_HD __host__ __device__ __forceinline__
#else
#define FG_HD inline
#endif
