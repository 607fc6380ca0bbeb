// CPU kernels of the cross-entropy family, vectorised with at::vec.
//
// Compiled once per capability (setup.py passes -DCPU_CAPABILITY=<name> and
// that capability's ISA flags), so at::vec::Vectorized<float> is 8 lanes of
// AVX2 or 16 of AVX-512 here rather than the scalar fallback.
//
// Forward, per row: pass 1 reads the row for its maximum (and sum(z), or the
// target's sums); pass 2 sums exp(z - max) while the row is still in L2.
// Backward, per row: one pass writing g * (target_sum * exp(z - lse) - t).
// Rows are split over threads with at::parallel_for; each row is reduced by
// one thread in a fixed order, so results are deterministic.
#include "cpu/cross_entropy_kernel.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>

#include "cpu/vec_utils.h"
#include "mixkernels/cross_entropy_math.h"

namespace mixkernels::cpu::CPU_CAPABILITY {
namespace {

// Row maximum, plus sum(z) when `with_sum`.
template <typename T, bool with_sum>
inline void row_max_sum(const T* z, int64_t n, float& row_max, float& row_sum) {
  Vec vmax_lo(-std::numeric_limits<float>::infinity()), vmax_hi = vmax_lo;
  Vec vsum_lo(0.0f), vsum_hi(0.0f);
  int64_t c = 0;
  for (; c + kChunk <= n; c += kChunk) {
    Vec lo, hi;
    Chunk<T>::load(z + c, lo, hi);
    // NaN must win the maximum as it does in torch (at::vec::maximum propagates it).
    vmax_lo = at::vec::maximum(vmax_lo, lo);
    vmax_hi = at::vec::maximum(vmax_hi, hi);
    if constexpr (with_sum) {
      vsum_lo = vsum_lo + lo;
      vsum_hi = vsum_hi + hi;
    }
  }
  float m = at::vec::vec_reduce_all<float>(
      [](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, at::vec::maximum(vmax_lo, vmax_hi));
  float s = with_sum ? at::vec::vec_reduce_all<float>(std::plus<Vec>(), vsum_lo + vsum_hi) : 0.0f;
  for (; c < n; ++c) {
    const float v = to_float(z[c]);
    m = (v > m || v != v) ? v : m;
    if constexpr (with_sum) s += v;
  }
  row_max = m;
  row_sum = s;
}

// sum(exp(z - row_max)).
template <typename T>
inline float row_sum_exp(const T* z, int64_t n, float row_max) {
  const Vec vmax(row_max);
  Vec acc_lo(0.0f), acc_hi(0.0f);
  int64_t c = 0;
  for (; c + kChunk <= n; c += kChunk) {
    Vec lo, hi;
    Chunk<T>::load(z + c, lo, hi);
    acc_lo = acc_lo + vexp(lo - vmax);
    acc_hi = acc_hi + vexp(hi - vmax);
  }
  float s = at::vec::vec_reduce_all<float>(std::plus<Vec>(), acc_lo + acc_hi);
  for (; c < n; ++c) s += std::exp(to_float(z[c]) - row_max);
  return s;
}

template <typename T>
inline float row_lse(const T* z, int64_t n, float row_max) {
  return lse_from_max_sum(row_max, row_sum_exp(z, n, row_max));
}

// out[c] = g * (target_sum * exp(z[c] - lse) - uniform): the softmax part of
// the gradient with a target that is the same in every column.
template <typename T>
inline void row_grad_uniform_target(const T* z, T* out, int64_t n, float lse, float g,
                                    float target_sum, float uniform) {
  const Vec vlse(lse), vscale(g * target_sum), vshift(-g * uniform);
  int64_t c = 0;
  for (; c + kChunk <= n; c += kChunk) {
    Vec lo, hi;
    Chunk<T>::load(z + c, lo, hi);
    lo = at::vec::fmadd(vexp(lo - vlse), vscale, vshift);
    hi = at::vec::fmadd(vexp(hi - vlse), vscale, vshift);
    Chunk<T>::store(out + c, lo, hi);
  }
  for (; c < n; ++c) out[c] = static_cast<T>(cross_entropy_grad(to_float(z[c]), lse, g, target_sum, uniform));
}

// ---------------------------------------------------------------- mixup CE

template <typename T>
void mixup_forward_typed(const MixupCEForwardArgs& a) {
  const T* logits = static_cast<const T*>(a.logits);
  const int64_t n = a.num_classes;
  const bool smoothing = a.label_smoothing != 0.0f;
  at::parallel_for(0, a.batch, row_grain(n), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const T* z = logits + row * a.row_stride;
      float row_max, z_sum;
      if (smoothing) {
        row_max_sum<T, true>(z, n, row_max, z_sum);
      } else {
        row_max_sum<T, false>(z, n, row_max, z_sum);
      }
      const float lse = row_lse(z, n, row_max);
      const float z_a = to_float(z[a.y_a[row]]);
      const float z_b = to_float(z[a.y_b[row]]);
      a.lse[row] = lse;
      a.loss[row] = mixup_ce_row_loss(lse, z_a, z_b, z_sum, a.lam[row], a.label_smoothing, n);
    }
  });
}

template <typename T>
void mixup_backward_typed(const MixupCEBackwardArgs& a) {
  const T* logits = static_cast<const T*>(a.logits);
  T* grad = static_cast<T*>(a.grad_logits);
  const int64_t n = a.num_classes;
  const float inv_n = 1.0f / static_cast<float>(n);
  const float uniform = a.label_smoothing * inv_n;
  at::parallel_for(0, a.batch, row_grain(n), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const T* z = logits + row * a.row_stride;
      T* out = grad + row * n;
      const float g = a.grad_loss[row], lse = a.lse[row];
      row_grad_uniform_target(z, out, n, lse, g, 1.0f, uniform);
      // The two labelled columns carry the rest of the target.
      for (const int64_t c : {a.y_a[row], a.y_b[row]}) {
        const float t = mixup_ce_target(c, a.y_a[row], a.y_b[row], a.lam[row], a.label_smoothing, inv_n);
        out[c] = static_cast<T>(cross_entropy_grad(to_float(z[c]), lse, g, 1.0f, t));
      }
    }
  });
}

// ----------------------------------------------------------- soft target CE

// Pass 1 over logits and target together: max(z), sum(t), sum(t * z).
template <typename T, typename TT>
inline void row_soft_target_sums(const T* z, const TT* t, int64_t n, float& row_max,
                                 float& t_sum, float& t_dot) {
  Vec vmax_lo(-std::numeric_limits<float>::infinity()), vmax_hi = vmax_lo;
  Vec ts_lo(0.0f), ts_hi(0.0f), td_lo(0.0f), td_hi(0.0f);
  int64_t c = 0;
  for (; c + kChunk <= n; c += kChunk) {
    Vec zl, zh, tl, th;
    Chunk<T>::load(z + c, zl, zh);
    Chunk<TT>::load(t + c, tl, th);
    vmax_lo = at::vec::maximum(vmax_lo, zl);
    vmax_hi = at::vec::maximum(vmax_hi, zh);
    ts_lo = ts_lo + tl;
    ts_hi = ts_hi + th;
    td_lo = at::vec::fmadd(tl, zl, td_lo);
    td_hi = at::vec::fmadd(th, zh, td_hi);
  }
  float m = at::vec::vec_reduce_all<float>(
      [](Vec& x, Vec& y) { return at::vec::maximum(x, y); }, at::vec::maximum(vmax_lo, vmax_hi));
  float s = at::vec::vec_reduce_all<float>(std::plus<Vec>(), ts_lo + ts_hi);
  float d = at::vec::vec_reduce_all<float>(std::plus<Vec>(), td_lo + td_hi);
  for (; c < n; ++c) {
    const float zv = to_float(z[c]), tv = to_float(t[c]);
    m = (zv > m || zv != zv) ? zv : m;
    s += tv;
    d += tv * zv;
  }
  row_max = m;
  t_sum = s;
  t_dot = d;
}

template <typename T, typename TT>
void soft_target_forward_typed(const SoftTargetForwardArgs& a) {
  const T* logits = static_cast<const T*>(a.logits);
  const TT* target = static_cast<const TT*>(a.target);
  const int64_t n = a.num_classes;
  at::parallel_for(0, a.batch, row_grain(n), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const T* z = logits + row * a.row_stride;
      const TT* t = target + row * a.target_row_stride;
      float row_max, t_sum, t_dot;
      row_soft_target_sums(z, t, n, row_max, t_sum, t_dot);
      const float lse = row_lse(z, n, row_max);
      a.lse[row] = lse;
      a.target_sum[row] = t_sum;
      a.loss[row] = soft_target_row_loss(lse, t_sum, t_dot);
    }
  });
}

template <typename T, typename TT>
void soft_target_backward_typed(const SoftTargetBackwardArgs& a) {
  const T* logits = static_cast<const T*>(a.logits);
  const TT* target = static_cast<const TT*>(a.target);
  T* grad = static_cast<T*>(a.grad_logits);
  TT* grad_target = static_cast<TT*>(a.grad_target);
  const int64_t n = a.num_classes;
  at::parallel_for(0, a.batch, row_grain(n), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const T* z = logits + row * a.row_stride;
      const TT* t = target + row * a.target_row_stride;
      T* out = grad + row * n;
      TT* out_t = grad_target ? grad_target + row * n : nullptr;
      const float g = a.grad_loss[row], lse = a.lse[row];
      const Vec vlse(lse), vscale(g * a.target_sum[row]), vg(g), vneg_g(-g);
      int64_t c = 0;
      for (; c + kChunk <= n; c += kChunk) {
        Vec zl, zh, tl, th;
        Chunk<T>::load(z + c, zl, zh);
        Chunk<TT>::load(t + c, tl, th);
        Chunk<T>::store(out + c, at::vec::fmadd(vexp(zl - vlse), vscale, tl * vneg_g),
                        at::vec::fmadd(vexp(zh - vlse), vscale, th * vneg_g));
        if (out_t) Chunk<TT>::store(out_t + c, (vlse - zl) * vg, (vlse - zh) * vg);
      }
      for (; c < n; ++c) {
        const float zv = to_float(z[c]);
        out[c] = static_cast<T>(cross_entropy_grad(zv, lse, g, a.target_sum[row], to_float(t[c])));
        if (out_t) out_t[c] = static_cast<TT>(soft_target_grad_target(zv, lse, g));
      }
    }
  });
}

// Target dtype is fp32 or the logits' dtype (checked by the caller).
template <template <typename, typename> class Fn, typename Args>
void dispatch_soft_target(const Args& a) {
  dispatch_dtype(a.dtype, [&](auto logits_tag) {
    using T = decltype(logits_tag);
    if (a.target_dtype == Dtype::Float) {
      Fn<T, float>::run(a);
    } else {
      Fn<T, T>::run(a);
    }
  });
}

template <typename T, typename TT>
struct SoftTargetForward {
  static void run(const SoftTargetForwardArgs& a) { soft_target_forward_typed<T, TT>(a); }
};
template <typename T, typename TT>
struct SoftTargetBackward {
  static void run(const SoftTargetBackwardArgs& a) { soft_target_backward_typed<T, TT>(a); }
};

}  // namespace

void mixup_cross_entropy_forward(const MixupCEForwardArgs& args) {
  dispatch_dtype(args.dtype, [&](auto tag) { mixup_forward_typed<decltype(tag)>(args); });
}

void mixup_cross_entropy_backward(const MixupCEBackwardArgs& args) {
  dispatch_dtype(args.dtype, [&](auto tag) { mixup_backward_typed<decltype(tag)>(args); });
}

void soft_target_cross_entropy_forward(const SoftTargetForwardArgs& args) {
  dispatch_soft_target<SoftTargetForward>(args);
}

void soft_target_cross_entropy_backward(const SoftTargetBackwardArgs& args) {
  dispatch_soft_target<SoftTargetBackward>(args);
}

}  // namespace mixkernels::cpu::CPU_CAPABILITY
