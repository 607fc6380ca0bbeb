// CPU kernels of Infinite Class Mixup (everything but the GEMMs), vectorised
// with at::vec and compiled once per capability (see cross_entropy_kernel.cpp).
//
// Determinism: every sum has one owner and a fixed order. Row passes give each
// row to one task; column passes give each block of kColumnBlock columns to
// one task, which walks the rows in order with one vector lane per column;
// the class scatter gives each class row to one task, which adds its entries
// in pair order. No result depends on the number of threads.
#include "cpu/infinite_class_mixup_kernel.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "cpu/vec_utils.h"
#include "mixkernels/icm_math.h"

namespace mixkernels::cpu::CPU_CAPABILITY {
namespace {

using IVec = at::vec::Vectorized<int32_t>;
constexpr int64_t kLanes = Vec::size();
static_assert(IVec::size() == kLanes, "one int32 index per float lane");

// Columns one task owns in the column passes: its per-column accumulators
// (kColumnBlock floats each) stay in L1 while it walks the block's rows.
constexpr int64_t kColumnBlock = 256;

constexpr float kInf = std::numeric_limits<float>::infinity();

// kUnit[kLanes - j .. 2 kLanes - j) holds 1 in lane j and 0 elsewhere: the
// identity's row restricted to one vector of columns.
struct UnitVectors {
  float values[2 * kLanes] = {};
  UnitVectors() { values[kLanes] = 1.0f; }
};
const UnitVectors kUnit;

// 1 in the lane of column `diag` if it falls in [k, k + kLanes), else 0.
inline Vec diagonal_lane(int64_t diag, int64_t k) {
  const int64_t lane = diag - k;
  return (lane >= 0 && lane < kLanes) ? Vec::loadu(kUnit.values + kLanes - lane) : Vec(0.0f);
}

// ------------------------------------------------------------ mixed classifier

// out[d] = lerp(start[d], end[d], weight) over a row of `n` features.
template <typename T>
inline void lerp_row(const T* start, const T* end, int64_t stride, float weight, float* out, int64_t n) {
  int64_t d = 0;
  if (stride == 1) {
    // The nearer end is the base (icm_lerp); weight is one number per row.
    const bool small = std::fabs(weight) < 0.5f;
    const Vec coeff(small ? weight : weight - 1.0f);
    for (; d + kChunk <= n; d += kChunk) {
      Vec s_lo, s_hi, e_lo, e_hi;
      Chunk<T>::load(start + d, s_lo, s_hi);
      Chunk<T>::load(end + d, e_lo, e_hi);
      at::vec::fmadd(coeff, e_lo - s_lo, small ? s_lo : e_lo).store(out + d);
      at::vec::fmadd(coeff, e_hi - s_hi, small ? s_hi : e_hi).store(out + d + Vec::size());
    }
  }
  for (; d < n; ++d) out[d] = icm_lerp(to_float(start[d * stride]), to_float(end[d * stride]), weight);
}

template <typename T>
void mixed_classifier_typed(const IcmMixedClassifierArgs& a) {
  const T* weight = static_cast<const T*>(a.weight);
  const T* bias = static_cast<const T*>(a.bias);
  const int64_t n = a.features;
  at::parallel_for(0, a.batch, row_grain(2 * n), [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const float lam = a.lam[k];
      lerp_row(weight + a.y_b[k] * a.weight_row_stride, weight + a.y_a[k] * a.weight_row_stride,
               a.weight_col_stride, lam, a.w_mixed + k * n, n);
      if (bias != nullptr) {
        a.b_mixed[k] = icm_lerp(to_float(bias[a.y_b[k] * a.bias_stride]), to_float(bias[a.y_a[k] * a.bias_stride]),
                                lam);
      }
    }
  });
}

// -------------------------------------------------------------- score gather

void gather_scores(const IcmGatherScoresArgs& a) {
  const int64_t n = a.batch;
  at::parallel_for(0, a.rows, row_grain(4 * n), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* z = a.logits + r * a.logits_row_stride;
      float* s = a.scores + r * a.scores_row_stride;
      int64_t k = 0;
      for (; k + kLanes <= n; k += kLanes) {
        const Vec z_a = at::vec::gather<sizeof(float)>(z, IVec::loadu(a.y_a + k));
        const Vec z_b = at::vec::gather<sizeof(float)>(z, IVec::loadu(a.y_b + k));
        const Vec lam = Vec::loadu(a.lam + k);
        const Vec small = lam.abs() < Vec(0.5f);
        const Vec coeff = Vec::blendv(lam - Vec(1.0f), lam, small);
        at::vec::fmadd(coeff, z_a - z_b, Vec::blendv(z_a, z_b, small)).store(s + k);
      }
      for (; k < n; ++k) s[k] = icm_lerp(z[a.y_b[k]], z[a.y_a[k]], a.lam[k]);
    }
  });
}

// ---------------------------------------------------------- forward statistics

// NaN-propagating maximum of a row.
inline float row_max(const float* s, int64_t n) {
  Vec vmax(-kInf);
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes) vmax = at::vec::maximum(vmax, Vec::loadu(s + k));
  float m = at::vec::vec_reduce_all<float>([](Vec& x, Vec& y) { return at::vec::maximum(x, y); }, vmax);
  for (; k < n; ++k) m = icm_nan_max(m, s[k]);
  return m;
}

// sum(exp(s - shift)). The vector exp saturates at exp(88.7), so a shift of 0
// taken for an infinite maximum (where arguments can be +inf) uses std::exp.
inline float row_sum_exp(const float* s, int64_t n, float shift, bool exact) {
  int64_t k = 0;
  float sum = 0.0f;
  if (!exact) {
    const Vec vshift(shift);
    Vec acc(0.0f);
    for (; k + kLanes <= n; k += kLanes) acc = acc + vexp(Vec::loadu(s + k) - vshift);
    sum = at::vec::vec_reduce_all<float>(std::plus<Vec>(), acc);
  }
  for (; k < n; ++k) sum += std::exp(s[k] - shift);
  return sum;
}

void score_row_stats(const IcmScoreStatsArgs& a) {
  at::parallel_for(0, a.rows, row_grain(2 * a.batch), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* s = a.scores + r * a.scores_row_stride;
      const int64_t row = a.row_begin + r;
      a.diag[row] = s[row];
      if (a.row_lse != nullptr) {
        const float m = row_max(s, a.batch);
        a.row_lse[row] = icm_lse(m, row_sum_exp(s, a.batch, icm_lse_shift(m), std::isinf(m)));
      }
    }
  });
}

// The block's column maxima and sums of exp, merged into the running ones.
void score_column_stats(const IcmScoreStatsArgs& a) {
  const int64_t num_blocks = (a.batch + kColumnBlock - 1) / kColumnBlock;
  at::parallel_for(0, num_blocks, 1, [&](int64_t block_begin, int64_t block_end) {
    alignas(64) float bmax[kColumnBlock];
    alignas(64) float bsum[kColumnBlock];
    for (int64_t block = block_begin; block < block_end; ++block) {
      const int64_t k0 = block * kColumnBlock;
      const int64_t width = std::min(kColumnBlock, a.batch - k0);
      const int64_t vec_width = width - width % kLanes;
      std::fill(bmax, bmax + width, -kInf);
      std::fill(bsum, bsum + width, 0.0f);
      for (int64_t r = 0; r < a.rows; ++r) {
        const float* s = a.scores + r * a.scores_row_stride + k0;
        int64_t j = 0;
        for (; j < vec_width; j += kLanes) {
          at::vec::maximum(Vec::loadu(bmax + j), Vec::loadu(s + j)).store(bmax + j);
        }
        for (; j < width; ++j) bmax[j] = icm_nan_max(bmax[j], s[j]);
      }
      bool any_infinite = false;
      for (int64_t j = 0; j < width; ++j) any_infinite |= std::isinf(bmax[j]);
      for (int64_t r = 0; r < a.rows; ++r) {
        const float* s = a.scores + r * a.scores_row_stride + k0;
        int64_t j = 0;
        if (!any_infinite) {
          for (; j < vec_width; j += kLanes) {
            (Vec::loadu(bsum + j) + vexp(Vec::loadu(s + j) - Vec::loadu(bmax + j))).store(bsum + j);
          }
        }
        for (; j < width; ++j) bsum[j] += std::exp(s[j] - icm_lse_shift(bmax[j]));
      }
      for (int64_t j = 0; j < width; ++j) icm_lse_merge(a.col_max[k0 + j], a.col_sum[k0 + j], bmax[j], bsum[j]);
    }
  });
}

// ------------------------------------------------------------ score gradient

// One column block [k0, k0 + width) of dL/dS over the block's rows, with the
// column sums that backward needs. kRow / kCol: which loss terms are present;
// kLam: accumulate the lam gradient through the logits.
template <bool kRow, bool kCol, bool kLam>
void grad_scores_block(const IcmGradScoresArgs& a, int64_t k0, int64_t width, float* bias_acc, float* lam_acc) {
  const int64_t vec_width = width - width % kLanes;
  const bool write = a.grad_scores != nullptr;
  const bool bias_sum = a.grad_b_mixed != nullptr;
  for (int64_t r = 0; r < a.rows; ++r) {
    const int64_t row = a.row_begin + r;
    const float* s = a.scores + r * a.scores_row_stride + k0;
    float* out = write ? a.grad_scores + r * a.grad_row_stride + k0 : nullptr;
    const float* z = kLam ? a.logits + r * a.logits_row_stride : nullptr;
    const float g_row = a.grad_loss[row];
    const float lse_row = kRow ? a.row_lse[row] : 0.0f;
    int64_t j = 0;
    for (; j < vec_width; j += kLanes) {
      const int64_t k = k0 + j;
      const Vec score = Vec::loadu(s + j);
      const Vec diag = diagonal_lane(row, k);
      Vec grad(0.0f);
      if constexpr (kRow) {
        const Vec row_part = Vec(g_row) * (vexp(score - Vec(lse_row)) - diag);
        grad = row_part;
        if (bias_sum) (Vec::loadu(bias_acc + j) + row_part).store(bias_acc + j);
      }
      if constexpr (kCol) {
        const Vec col_part = Vec::loadu(a.grad_loss + k) * (vexp(score - Vec::loadu(a.col_lse + k)) - diag);
        grad = kRow ? grad + col_part : col_part;
      }
      if (write) grad.store(out + j);
      if constexpr (kLam) {
        const Vec z_a = at::vec::gather<sizeof(float)>(z, IVec::loadu(a.y_a + k));
        const Vec z_b = at::vec::gather<sizeof(float)>(z, IVec::loadu(a.y_b + k));
        at::vec::fmadd(grad, z_a - z_b, Vec::loadu(lam_acc + j)).store(lam_acc + j);
      }
    }
    for (; j < width; ++j) {
      const int64_t k = k0 + j;
      const float score = s[j];
      float grad = 0.0f;
      if constexpr (kRow) {
        const float row_part = icm_term_grad(score, lse_row, g_row, row == k);
        grad = row_part;
        if (bias_sum) bias_acc[j] += row_part;
      }
      if constexpr (kCol) {
        const float col_part = icm_term_grad(score, a.col_lse[k], a.grad_loss[k], row == k);
        grad = kRow ? grad + col_part : col_part;
      }
      if (write) out[j] = grad;
      if constexpr (kLam) lam_acc[j] = std::fma(grad, z[a.y_a[k]] - z[a.y_b[k]], lam_acc[j]);
    }
  }
}

template <bool kRow, bool kCol, bool kLam>
void grad_scores_typed(const IcmGradScoresArgs& a) {
  const int64_t num_blocks = (a.batch + kColumnBlock - 1) / kColumnBlock;
  at::parallel_for(0, num_blocks, 1, [&](int64_t block_begin, int64_t block_end) {
    alignas(64) float bias_acc[kColumnBlock];
    alignas(64) float lam_acc[kColumnBlock];
    for (int64_t block = block_begin; block < block_end; ++block) {
      const int64_t k0 = block * kColumnBlock;
      const int64_t width = std::min(kColumnBlock, a.batch - k0);
      std::fill(bias_acc, bias_acc + width, 0.0f);
      std::fill(lam_acc, lam_acc + width, 0.0f);
      grad_scores_block<kRow, kCol, kLam>(a, k0, width, bias_acc, lam_acc);
      for (int64_t j = 0; j < width; ++j) {
        if (a.grad_b_mixed != nullptr) a.grad_b_mixed[k0 + j] += bias_acc[j];
        if constexpr (kLam) a.grad_lam[k0 + j] += lam_acc[j];
      }
    }
  });
}

template <bool kRow, bool kCol>
void grad_scores_dispatch_lam(const IcmGradScoresArgs& a) {
  if (a.grad_lam != nullptr) {
    grad_scores_typed<kRow, kCol, true>(a);
  } else {
    grad_scores_typed<kRow, kCol, false>(a);
  }
}

// ----------------------------------------------------------- logit scatter

void scatter_scores(const IcmScatterScoresArgs& a) {
  at::parallel_for(0, a.rows, row_grain(a.num_classes + 2 * a.batch), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* g = a.grad_scores + r * a.grad_row_stride;
      float* dz = a.grad_logits + r * a.grad_logits_row_stride;
      std::memset(dz, 0, sizeof(float) * a.num_classes);
      for (int64_t k = 0; k < a.batch; ++k) {
        const bool same_class = a.y_a[k] == a.y_b[k];
        dz[a.y_a[k]] += icm_weight_a(a.lam[k], same_class) * g[k];
        dz[a.y_b[k]] += icm_weight_b(a.lam[k], same_class) * g[k];
      }
    }
  });
}

// ------------------------------------------------------------ class scatter

template <typename T, typename TB>
void class_scatter_typed(const IcmClassScatterArgs& a) {
  const int64_t n = a.features;
  T* grad_weight = static_cast<T*>(a.grad_weight);
  TB* grad_bias = static_cast<TB*>(a.grad_bias);
  at::parallel_for(0, a.num_classes, row_grain(n), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const int64_t e0 = a.class_begin[c], e1 = a.class_begin[c + 1];
      if (a.grad_w_mixed != nullptr) {
        T* out = grad_weight + c * n;
        if (e0 == e1) {
          std::memset(static_cast<void*>(out), 0, sizeof(T) * n);  // 0.0 is all zero bits in every dtype
        } else {
          int64_t d = 0;
          for (; d + kChunk <= n; d += kChunk) {
            Vec lo(0.0f), hi(0.0f);
            for (int64_t e = e0; e < e1; ++e) {
              const float* src = a.grad_w_mixed + a.entry_pair[e] * n + d;
              const Vec w(a.entry_weight[e]);
              lo = lo + w * Vec::loadu(src);
              hi = hi + w * Vec::loadu(src + Vec::size());
            }
            Chunk<T>::store(out + d, lo, hi);
          }
          for (; d < n; ++d) {
            float acc = 0.0f;
            for (int64_t e = e0; e < e1; ++e) acc += a.entry_weight[e] * a.grad_w_mixed[a.entry_pair[e] * n + d];
            out[d] = static_cast<T>(acc);
          }
        }
      }
      if (a.grad_b_mixed != nullptr) {
        float acc = 0.0f;
        for (int64_t e = e0; e < e1; ++e) acc += a.entry_weight[e] * a.grad_b_mixed[a.entry_pair[e]];
        grad_bias[c] = static_cast<TB>(acc);
      }
    }
  });
}

// -------------------------------------------------------------- lam gradient

template <typename T>
void grad_lam_typed(const IcmGradLamArgs& a) {
  const T* weight = static_cast<const T*>(a.weight);
  const T* bias = static_cast<const T*>(a.bias);
  const int64_t n = a.features;
  at::parallel_for(0, a.batch, row_grain(3 * n), [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const T* w_a = weight + a.y_a[k] * a.weight_row_stride;
      const T* w_b = weight + a.y_b[k] * a.weight_row_stride;
      const float* g = a.grad_w_mixed + k * n;
      int64_t d = 0;
      float dot = 0.0f;
      if (a.weight_col_stride == 1) {
        Vec acc_lo(0.0f), acc_hi(0.0f);
        for (; d + kChunk <= n; d += kChunk) {
          Vec a_lo, a_hi, b_lo, b_hi;
          Chunk<T>::load(w_a + d, a_lo, a_hi);
          Chunk<T>::load(w_b + d, b_lo, b_hi);
          acc_lo = at::vec::fmadd(Vec::loadu(g + d), a_lo - b_lo, acc_lo);
          acc_hi = at::vec::fmadd(Vec::loadu(g + d + Vec::size()), a_hi - b_hi, acc_hi);
        }
        dot = at::vec::vec_reduce_all<float>(std::plus<Vec>(), acc_lo + acc_hi);
      }
      const int64_t cs = a.weight_col_stride;
      for (; d < n; ++d) dot = std::fma(g[d], to_float(w_a[d * cs]) - to_float(w_b[d * cs]), dot);
      if (bias != nullptr) {
        dot += a.grad_b_mixed[k] * (to_float(bias[a.y_a[k] * a.bias_stride]) - to_float(bias[a.y_b[k] * a.bias_stride]));
      }
      a.grad_lam[k] = dot;
    }
  });
}

}  // namespace

void icm_mixed_classifier(const IcmMixedClassifierArgs& args) {
  dispatch_dtype(args.dtype, [&](auto tag) { mixed_classifier_typed<decltype(tag)>(args); });
}

void icm_gather_scores(const IcmGatherScoresArgs& args) {
  gather_scores(args);
}

void icm_score_stats(const IcmScoreStatsArgs& args) {
  score_row_stats(args);
  if (args.col_max != nullptr) score_column_stats(args);
}

void icm_grad_scores(const IcmGradScoresArgs& args) {
  if (args.row_lse != nullptr && args.col_lse != nullptr) {
    grad_scores_dispatch_lam<true, true>(args);
  } else if (args.row_lse != nullptr) {
    grad_scores_dispatch_lam<true, false>(args);
  } else {
    grad_scores_dispatch_lam<false, true>(args);
  }
}

void icm_scatter_scores(const IcmScatterScoresArgs& args) {
  scatter_scores(args);
}

void icm_class_scatter(const IcmClassScatterArgs& args) {
  dispatch_dtype(args.weight_dtype, [&](auto weight_tag) {
    dispatch_dtype(args.bias_dtype, [&](auto bias_tag) {
      class_scatter_typed<decltype(weight_tag), decltype(bias_tag)>(args);
    });
  });
}

void icm_grad_lam(const IcmGradLamArgs& args) {
  dispatch_dtype(args.dtype, [&](auto tag) { grad_lam_typed<decltype(tag)>(args); });
}

}  // namespace mixkernels::cpu::CPU_CAPABILITY
