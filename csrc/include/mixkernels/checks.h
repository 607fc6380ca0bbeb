// Input checks shared by the CPU and CUDA implementations of the
// cross-entropy ops. The Python layer (mixkernels/functional.py) already
// raises clear errors naming the argument; these guard direct calls of
// torch.ops.mixkernels.* so that a kernel never reads out of bounds.
#pragma once

#include <ATen/ATen.h>

namespace mixkernels {

inline void check_logits(const at::Tensor& logits) {
  TORCH_CHECK(logits.dim() == 2, "mixkernels: logits must be 2-D (B, C), got ", logits.dim(), "-D");
  TORCH_CHECK(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kBFloat16 ||
                  logits.scalar_type() == at::kHalf,
              "mixkernels: logits must be float32, bfloat16 or float16, got ", logits.scalar_type());
  TORCH_CHECK(logits.size(0) > 0 && logits.size(1) > 0, "mixkernels: logits must be non-empty");
  TORCH_CHECK(logits.stride(1) == 1, "mixkernels: logits must have unit stride along classes");
}

inline void check_row_vector(const at::Tensor& t, const char* name, int64_t batch,
                             at::ScalarType dtype, const at::Tensor& like) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == batch, "mixkernels: ", name, " must have shape (",
              batch, ",), got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, "mixkernels: ", name, " must be ", dtype, ", got ",
              t.scalar_type());
  TORCH_CHECK(t.device() == like.device(), "mixkernels: ", name, " is on ", t.device(),
              " but logits are on ", like.device());
  TORCH_CHECK(t.is_contiguous(), "mixkernels: ", name, " must be contiguous");
}

inline void check_mixup_ce_inputs(const at::Tensor& logits, const at::Tensor& y_a,
                                  const at::Tensor& y_b, const at::Tensor& lam) {
  check_logits(logits);
  const int64_t batch = logits.size(0);
  check_row_vector(y_a, "y_a", batch, at::kLong, logits);
  check_row_vector(y_b, "y_b", batch, at::kLong, logits);
  check_row_vector(lam, "lam", batch, at::kFloat, logits);
}

inline void check_soft_target_inputs(const at::Tensor& logits, const at::Tensor& target) {
  check_logits(logits);
  TORCH_CHECK(target.sizes() == logits.sizes(), "mixkernels: target must have the shape of logits ",
              logits.sizes(), ", got ", target.sizes());
  TORCH_CHECK(target.scalar_type() == at::kFloat || target.scalar_type() == logits.scalar_type(),
              "mixkernels: target must be float32 or logits' dtype, got ", target.scalar_type());
  TORCH_CHECK(target.device() == logits.device(), "mixkernels: target is on ", target.device(),
              " but logits are on ", logits.device());
  TORCH_CHECK(target.stride(1) == 1, "mixkernels: target must have unit stride along classes");
}

}  // namespace mixkernels
