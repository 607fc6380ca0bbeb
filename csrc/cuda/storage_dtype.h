// The storage dtype of a tensor as the torch-free CUDA launchers see it
// (csrc/cuda/*_kernel.h); op_utils.h maps at::ScalarType onto it.
#pragma once

namespace mixkernels::gpu {

// Arithmetic is always fp32, whatever the storage.
enum class DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

}  // namespace mixkernels::gpu
