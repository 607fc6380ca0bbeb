// Per-element math of Infinite Class Mixup, shared by the CPU and CUDA kernels
// so that both compute the same numbers (see shared/notes/icm.md, section 5).
//
// S[b, k] = h_b . W~_k + b~_k is the (B, B) score matrix: row b is output b,
// column k the mixed classifier of pair k, the positives on the diagonal.
// Per sample b the loss is the row term lse_k S[b, :] - S[b, b] plus the
// column term lse_i S[:, b] - S[b, b]; with g the incoming per-sample
// gradient, dL/dS[b, k] = g_b (P[b, k] - [b == k]) + g_k (Q[b, k] - [b == k]),
// P and Q the row- and column-softmax of S. All arguments are fp32.
#pragma once

#include <cmath>

#include "mixkernels/macros.h"

namespace mixkernels {

// torch.lerp(start, end, weight) as its vectorised CPU kernel computes it:
// base + coeff * (end - start) in one fused multiply-add, from the nearer end.
// Exact where it has to be: weight 0 gives start, weight 1 gives end, and
// start == end gives start for any weight.
MK_HOST_DEVICE float icm_lerp(float start, float end, float weight) {
  const bool small = ::fabsf(weight) < 0.5f;
  return ::fmaf(small ? weight : weight - 1.0f, end - start, small ? start : end);
}

// The weights with which pair k's gradient reaches its classes: lam_k to
// y_a_k and 1 - lam_k to y_b_k, or all of it to y_a_k when the two are one
// class (1 and 0: exact, where lam + (1 - lam) rounds away from 1 in fp32),
// so that a same-class pair's gradient does not depend on lam by a bit.
MK_HOST_DEVICE float icm_weight_a(float lam, bool same_class) { return same_class ? 1.0f : lam; }
MK_HOST_DEVICE float icm_weight_b(float lam, bool same_class) { return same_class ? 0.0f : 1.0f - lam; }

// The shift a log-sum-exp subtracts before exponentiating: the maximum, or 0
// when the maximum is infinite, as torch.logsumexp does (an all -inf row gives
// -inf, a row holding +inf gives +inf; NaN propagates).
MK_HOST_DEVICE float icm_lse_shift(float max_value) {
  return ::fabsf(max_value) == HUGE_VALF ? 0.0f : max_value;
}

// log-sum-exp from the maximum and sum(exp(x - icm_lse_shift(max))).
MK_HOST_DEVICE float icm_lse(float max_value, float sum_exp) {
  return icm_lse_shift(max_value) + ::logf(sum_exp);
}

// The larger of two values, NaN winning as in torch.amax.
MK_HOST_DEVICE float icm_nan_max(float a, float b) {
  if (a != a) return a;
  if (b != b) return b;
  return b > a ? b : a;
}

// sum * exp(delta), with an empty sum staying exactly 0 (never 0 * inf).
MK_HOST_DEVICE float icm_rescale(float sum_exp, float delta) {
  return sum_exp == 0.0f ? 0.0f : sum_exp * ::expf(delta);
}

// Merges the running (max, sum_exp) of a column with a block's (max, sum_exp),
// each sum taken relative to its own icm_lse_shift(max).
MK_HOST_DEVICE void icm_lse_merge(float& max_value, float& sum_exp, float block_max, float block_sum) {
  const float merged = icm_nan_max(max_value, block_max);
  const float shift = icm_lse_shift(merged);
  sum_exp = icm_rescale(sum_exp, icm_lse_shift(max_value) - shift) +
            icm_rescale(block_sum, icm_lse_shift(block_max) - shift);
  max_value = merged;
}

// dL/dS for one entry, per term: g * (softmax - [on the diagonal]).
MK_HOST_DEVICE float icm_term_grad(float score, float lse, float grad_loss, bool diagonal) {
  return grad_loss * (::expf(score - lse) - (diagonal ? 1.0f : 0.0f));
}

}  // namespace mixkernels
