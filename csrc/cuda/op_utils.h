// Helpers for the CUDA op implementations (the ATen side of the torch-free
// kernels in csrc/cuda/*.cu): dtype mapping, device check, SM count.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>

#include "storage_dtype.h"

namespace mixkernels {

inline gpu::DType kernel_dtype(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return gpu::DType::kFloat32;
    case at::kBFloat16: return gpu::DType::kBFloat16;
    case at::kHalf: return gpu::DType::kFloat16;
    default: break;
  }
  TORCH_CHECK(false, "mixkernels: unsupported dtype ", type, " for the CUDA kernels");
}

inline void check_on_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), "mixkernels: the CUDA kernels need ", name, " on a CUDA device, got ", t.device());
}

inline int multiprocessor_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

}  // namespace mixkernels
