// Per-row and per-element math of the cross-entropy family, shared by the
// CPU and CUDA kernels so that both compute the same numbers.
//
// Every loss here is "log-sum-exp minus a dot with the target":
//   loss = sum(t) * lse(z) - sum_c t_c z_c,     d loss / d z = sum(t) * softmax(z) - t
// The mixup target is sparse: t = (1-s) * (lam e_a + (1-lam) e_b) + s/C,
// so its dot with z needs only z[y_a], z[y_b] and sum(z); no target is built.
// All arguments and results are fp32, whatever the storage dtype.
#pragma once

#include <cmath>
#include <cstdint>

#include "mixkernels/macros.h"

namespace mixkernels {

// Mixup cross-entropy of one row from its reductions. Written as a weighted
// sum of the non-negative terms (lse - z_y) so that no large terms cancel.
MK_HOST_DEVICE float mixup_ce_row_loss(float lse, float z_a, float z_b, float z_sum,
                                       float lam, float smoothing, int64_t num_classes) {
  const float hard = (1.0f - smoothing) * (lam * (lse - z_a) + (1.0f - lam) * (lse - z_b));
  const float smooth = smoothing * (lse - z_sum / static_cast<float>(num_classes));
  return smoothing == 0.0f ? hard : hard + smooth;
}

// The mixup target t_c at column c (y_a == y_b adds both shares).
MK_HOST_DEVICE float mixup_ce_target(int64_t c, int64_t y_a, int64_t y_b, float lam,
                                     float smoothing, float inv_num_classes) {
  float t = smoothing * inv_num_classes;
  if (c == y_a) t += (1.0f - smoothing) * lam;
  if (c == y_b) t += (1.0f - smoothing) * (1.0f - lam);
  return t;
}

// d loss / d lam for one row, times the row's incoming gradient.
MK_HOST_DEVICE float mixup_ce_grad_lam(float grad_loss, float z_a, float z_b, float smoothing) {
  return -grad_loss * (1.0f - smoothing) * (z_a - z_b);
}

// d loss / d z_c = g * (target_sum * softmax_c - t_c).
MK_HOST_DEVICE float cross_entropy_grad(float z, float lse, float grad_loss, float target_sum,
                                        float target) {
  return grad_loss * (target_sum * ::expf(z - lse) - target);
}

// Soft-target loss of one row: sum(t) * lse - sum(t * z).
MK_HOST_DEVICE float soft_target_row_loss(float lse, float target_sum, float target_dot) {
  return target_sum * lse - target_dot;
}

// d loss / d t_c = g * (lse - z_c) = -g * log_softmax(z)_c.
MK_HOST_DEVICE float soft_target_grad_target(float z, float lse, float grad_loss) {
  return grad_loss * (lse - z);
}

// Log-sum-exp from a row maximum and the sum of exp(z - max). A row that is
// all -inf has max = -inf: its lse is -inf, as torch.logsumexp gives.
MK_HOST_DEVICE float lse_from_max_sum(float row_max, float sum_exp) {
  return row_max == -HUGE_VALF ? row_max : row_max + ::logf(sum_exp);
}

}  // namespace mixkernels
