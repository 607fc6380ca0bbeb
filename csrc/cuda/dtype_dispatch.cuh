// Host-side dtype dispatch of the CUDA launchers (torch-free): a DType
// becomes the storage type of a kernel template (and an extent its index
// type), passed as tags.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "storage_dtype.h"

namespace mixkernels::gpu {

template <typename T>
struct TypeTag {
  using type = T;
};

// f(TypeTag<storage type of dtype>{}); cudaErrorInvalidValue for an unknown dtype.
template <typename F>
cudaError_t dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: return f(TypeTag<float>{});
    case DType::kBFloat16: return f(TypeTag<__nv_bfloat16>{});
    case DType::kFloat16: return f(TypeTag<__half>{});
  }
  return cudaErrorInvalidValue;
}

inline int64_t element_size(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

// Extents (elements of an image) below this use 32-bit index arithmetic.
constexpr int64_t kNarrowIndexLimit = int64_t{1} << 31;

// f(storage tag, index tag): the storage type of `dtype`, and uint32_t as the
// index type when `extent` < 2^31, else uint64_t.
template <typename F>
cudaError_t dispatch_dtype_and_index(DType dtype, int64_t extent, F&& f) {
  const bool narrow = extent < kNarrowIndexLimit;
  return dispatch_dtype(dtype, [&](auto storage) -> cudaError_t {
    return narrow ? f(storage, TypeTag<uint32_t>{}) : f(storage, TypeTag<uint64_t>{});
  });
}

}  // namespace mixkernels::gpu
