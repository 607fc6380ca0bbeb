// Input checks of the Infinite Class Mixup ops, for every device's
// implementation. The Python layer (mixkernels/functional.py) already raises
// clear errors naming the argument; these guard direct calls of
// torch.ops.mixkernels.infinite_class_mixup_loss* so that a kernel never reads
// out of bounds. Label values are checked by each device's implementation.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "mixkernels/checks.h"

namespace mixkernels {

struct IcmAxes {
  bool row, col;
};

inline IcmAxes parse_icm_axes(const std::string& axes) {
  TORCH_CHECK_VALUE(axes == "both" || axes == "row" || axes == "col",
                    "mixkernels: axes must be 'both', 'row' or 'col', got '", axes, "'");
  return {axes != "col", axes != "row"};
}

// The two exact ways to the scores (see mixkernels/ops/infinite_class_mixup.py).
enum class IcmPath { Factorised, Logits };

inline IcmPath parse_icm_path(const std::string& path) {
  TORCH_CHECK_VALUE(path == "factorised" || path == "logits",
                    "mixkernels: path must be 'factorised' or 'logits', got '", path, "'");
  return path == "factorised" ? IcmPath::Factorised : IcmPath::Logits;
}

inline void check_icm_inputs(const at::Tensor& hidden, const at::Tensor& weight,
                             const c10::optional<at::Tensor>& bias, const at::Tensor& y_a,
                             const at::Tensor& y_b, const at::Tensor& lam) {
  TORCH_CHECK(hidden.dim() == 2, "mixkernels: hidden must be 2-D (B, D), got ", hidden.dim(), "-D");
  TORCH_CHECK(hidden.scalar_type() == at::kFloat || hidden.scalar_type() == at::kBFloat16 ||
                  hidden.scalar_type() == at::kHalf,
              "mixkernels: hidden must be float32, bfloat16 or float16, got ", hidden.scalar_type());
  TORCH_CHECK(hidden.size(0) > 0 && hidden.size(1) > 0, "mixkernels: hidden must be non-empty, got shape ",
              hidden.sizes());
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) > 0 && weight.size(1) == hidden.size(1),
              "mixkernels: weight must have shape (C, ", hidden.size(1), ") with C >= 1, got ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == hidden.scalar_type(), "mixkernels: weight must have hidden's dtype ",
              hidden.scalar_type(), ", got ", weight.scalar_type());
  TORCH_CHECK(weight.device() == hidden.device(), "mixkernels: weight is on ", weight.device(),
              " but hidden is on ", hidden.device());
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "mixkernels: bias must have shape (",
                weight.size(0), ",), got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == weight.scalar_type(), "mixkernels: bias must have weight's dtype ",
                weight.scalar_type(), ", got ", bias->scalar_type());
    TORCH_CHECK(bias->device() == hidden.device(), "mixkernels: bias is on ", bias->device(),
                " but hidden is on ", hidden.device());
  }
  const int64_t batch = hidden.size(0);
  check_row_vector(y_a, "y_a", batch, at::kLong, hidden);
  check_row_vector(y_b, "y_b", batch, at::kLong, hidden);
  check_row_vector(lam, "lam", batch, at::kFloat, hidden);
}

// A saved per-sample statistic: (B,) when its term is present, (0,) otherwise.
inline void check_icm_stat(const at::Tensor& t, const char* name, bool present, int64_t batch,
                           const at::Tensor& like) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == (present ? batch : 0), "mixkernels: ", name, " must have shape (",
              present ? batch : 0, ",) for these axes, got ", t.sizes());
  check_row_vector(t, name, t.size(0), at::kFloat, like);
}

}  // namespace mixkernels
