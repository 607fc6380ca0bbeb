// Input checks shared by the CPU and CUDA implementations of the row-mixing
// ops (mix_rows, mix_rows_, mix_rows_dots; schemas in csrc/ops.cpp).
//
// The Python layer (mixkernels/functional.py) already raises clear errors
// naming the argument and validates that `src` is a permutation; these checks
// guard direct calls of torch.ops.mixkernels.* so that a kernel never reads
// out of bounds because of a wrong shape, dtype, device or layout. The values
// of `src` are NOT checked here (that would need a host synchronisation on
// the GPU); kernels must treat an index outside [0, B) as a bad row, never
// read through it.
#pragma once

#include <ATen/ATen.h>

namespace mixkernels {

// A (B, N) batch with unit stride along N (any row stride) and B > 0.
inline void check_mix_matrix(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 2, "mixkernels: ", name, " must be 2-D (B, N), got ", t.dim(), "-D");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16 ||
                  t.scalar_type() == at::kHalf,
              "mixkernels: ", name, " must be float32, bfloat16 or float16, got ",
              t.scalar_type());
  TORCH_CHECK(t.size(0) > 0, "mixkernels: ", name, " must have a non-empty batch, got shape ",
              t.sizes());
  // A single column has no stride to speak of; otherwise the kernels walk a
  // row with unit stride.
  TORCH_CHECK(t.size(1) <= 1 || t.stride(1) == 1, "mixkernels: ", name,
              " must have unit stride along N, got strides ", t.strides());
}

// A contiguous (B,) vector of `dtype` on `like`'s device.
inline void check_mix_row_vector(const at::Tensor& t, const char* name, int64_t batch,
                                 at::ScalarType dtype, const at::Tensor& like,
                                 const char* like_name) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == batch, "mixkernels: ", name, " must have shape (",
              batch, ",), got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, "mixkernels: ", name, " must be ", dtype, ", got ",
              t.scalar_type());
  TORCH_CHECK(t.device() == like.device(), "mixkernels: ", name, " is on ", t.device(), " but ",
              like_name, " is on ", like.device());
  TORCH_CHECK(t.is_contiguous(), "mixkernels: ", name, " must be contiguous");
}

// mix_rows / mix_rows_: x (B, N) fp32/bf16/fp16 with unit column stride;
// src int64 (B,); w_self, w_src fp32 (B,); all on x's device.
inline void check_mix_rows_inputs(const at::Tensor& x, const at::Tensor& src,
                                  const at::Tensor& w_self, const at::Tensor& w_src) {
  check_mix_matrix(x, "x");
  const int64_t batch = x.size(0);
  check_mix_row_vector(src, "src", batch, at::kLong, x, "x");
  check_mix_row_vector(w_self, "w_self", batch, at::kFloat, x, "x");
  check_mix_row_vector(w_src, "w_src", batch, at::kFloat, x, "x");
}

// mix_rows_ additionally writes into x: its rows must not share memory (an
// expanded or otherwise self-overlapping x would make the result depend on
// the order of the writes).
inline void check_mix_rows_inplace_target(const at::Tensor& x) {
  TORCH_CHECK(x.size(0) <= 1 || x.size(1) == 0 || x.stride(0) >= x.size(1),
              "mixkernels: x must not have overlapping rows to be mixed in place, got shape ",
              x.sizes(), " and strides ", x.strides());
}

// mix_rows_dots: grad and x (B, N) of the same dtype, shape and device, unit
// column stride; src int64 (B,).
inline void check_mix_rows_dots_inputs(const at::Tensor& grad, const at::Tensor& x,
                                       const at::Tensor& src) {
  check_mix_matrix(grad, "grad");
  check_mix_matrix(x, "x");
  TORCH_CHECK(grad.sizes() == x.sizes(), "mixkernels: grad must have the shape of x ", x.sizes(),
              ", got ", grad.sizes());
  TORCH_CHECK(grad.scalar_type() == x.scalar_type(), "mixkernels: grad must have x's dtype ",
              x.scalar_type(), ", got ", grad.scalar_type());
  TORCH_CHECK(grad.device() == x.device(), "mixkernels: grad is on ", grad.device(),
              " but x is on ", x.device());
  check_mix_row_vector(src, "src", x.size(0), at::kLong, x, "x");
}

}  // namespace mixkernels
