// Input checks of the Infinite Class Mixup ops, for every device's
// implementation. The Python layer (mixkernels/functional.py) already raises
// clear errors naming the argument; these guard direct calls of
// torch.ops.mixkernels.infinite_class_mixup_loss* so that a kernel never reads
// out of bounds. Label values are checked by each device's implementation.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <string>
#include <tuple>

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

// What the backward of the ICM ops computes, from the gradients asked for
// (output_mask: hidden, weight, bias, lam), for every device's host code.
struct IcmBackwardPlan {
  bool hidden, weight, bias, lam;  // the gradients returned
  bool factorised;
  bool w_mixed_grad;  // dW~ = G^T H (factorised: for dW and d lam)
  bool logits_grad;   // dZ (through the logits: for dH and dW)
  bool grad_scores;   // blocks of G = dL/dS are written
  bool b_mixed_grad;  // db~, the row term's column sums (for db, and for d lam with a bias)
  bool class_entries; // the class lists of the scatters (dZ, dW from dW~, db)
  bool any() const { return hidden || weight || bias || lam; }
};

inline IcmBackwardPlan plan_icm_backward(IcmPath path, std::array<bool, 4> output_mask, bool has_bias) {
  IcmBackwardPlan p{};
  p.hidden = output_mask[0];
  p.weight = output_mask[1];
  p.bias = output_mask[2] && has_bias;
  p.lam = output_mask[3];
  p.factorised = path == IcmPath::Factorised;
  p.w_mixed_grad = p.factorised && (p.weight || p.lam);
  p.logits_grad = !p.factorised && (p.hidden || p.weight);
  p.grad_scores = p.hidden || p.w_mixed_grad || p.logits_grad;
  p.b_mixed_grad = p.bias || (p.factorised && p.lam && has_bias);
  p.class_entries = p.logits_grad || (p.factorised && p.weight) || p.bias;
  return p;
}

// A saved per-sample statistic: (B,) when its term is present, (0,) otherwise.
inline void check_icm_stat(const at::Tensor& t, const char* name, bool present, int64_t batch,
                           const at::Tensor& like) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == (present ? batch : 0), "mixkernels: ", name, " must have shape (",
              present ? batch : 0, ",) for these axes, got ", t.sizes());
  check_row_vector(t, name, t.size(0), at::kFloat, like);
}

// The backward's own inputs: the per-sample incoming gradient, the saved
// statistics and the kept matrix (S or Z, or empty).
inline void check_icm_backward_inputs(const at::Tensor& grad_loss, const at::Tensor& hidden, int64_t num_classes,
                                      const at::Tensor& row_lse, const at::Tensor& col_lse, const at::Tensor& cache,
                                      IcmAxes axes, IcmPath path) {
  const int64_t batch = hidden.size(0);
  check_row_vector(grad_loss, "grad_loss", batch, at::kFloat, hidden);
  check_icm_stat(row_lse, "row_lse", axes.row, batch, hidden);
  check_icm_stat(col_lse, "col_lse", axes.col, batch, hidden);
  if (cache.numel() > 0) {
    const int64_t width = path == IcmPath::Factorised ? batch : num_classes;
    TORCH_CHECK(cache.dim() == 2 && cache.size(0) == batch && cache.size(1) == width &&
                    cache.scalar_type() == at::kFloat && cache.is_contiguous() && cache.device() == hidden.device(),
                "mixkernels: cache must be a contiguous float32 (", batch, ", ", width,
                ") tensor for this path, or empty; got ", cache.scalar_type(), " ", cache.sizes());
  }
}

// The backward's outputs: a gradient not asked for is an empty (0,) tensor.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> icm_backward_outputs(
    const IcmBackwardPlan& plan, at::Tensor grad_hidden, at::Tensor grad_weight, at::Tensor grad_bias,
    at::Tensor grad_lam, const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& bias) {
  auto empty_unless = [](bool needed, at::Tensor& t, const at::TensorOptions& opts) {
    if (!needed) t = at::empty({0}, opts);
  };
  empty_unless(plan.hidden, grad_hidden, hidden.options());
  empty_unless(plan.weight, grad_weight, weight.options());
  empty_unless(plan.bias, grad_bias, bias.defined() ? bias.options() : weight.options());
  empty_unless(plan.lam, grad_lam, hidden.options().dtype(at::kFloat));
  return {grad_hidden, grad_weight, grad_bias, grad_lam};
}

}  // namespace mixkernels
