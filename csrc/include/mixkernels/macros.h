// Portability macros for math shared by the CPU (C++) and CUDA kernels.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define MK_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define MK_HOST_DEVICE inline
#endif
