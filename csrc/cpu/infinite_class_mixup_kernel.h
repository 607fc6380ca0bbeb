// The CPU kernels of Infinite Class Mixup, compiled once per CPU capability
// (infinite_class_mixup_kernel.cpp; see cross_entropy_kernel.h for how the
// builds are named and chosen). infinite_class_mixup.cpp runs the GEMMs with
// ATen and calls these for everything else; they take plain pointers and sizes.
//
// S is the (B, B) score matrix, processed in blocks of consecutive rows
// [row_begin, row_begin + rows); a block pointer points at its first row and
// holds all B columns. All float buffers are fp32.
#pragma once

#include <cstdint>

#include "cpu/dtype.h"

namespace mixkernels::cpu {

// W~[k] = lerp(W[y_b_k], W[y_a_k], lam_k) (B, D) and b~[k] alike (B,).
struct IcmMixedClassifierArgs {
  const void* weight;  // (C, D), any strides
  Dtype dtype;
  int64_t weight_row_stride, weight_col_stride;
  const void* bias;  // (C,) in dtype, or nullptr
  int64_t bias_stride;
  const int64_t* y_a;
  const int64_t* y_b;
  const float* lam;
  int64_t batch, features;
  float* w_mixed;  // (B, D), contiguous
  float* b_mixed;  // (B,), written when bias is given
};

// Score rows from logit rows: S[b, k] = lerp(Z[b, y_b_k], Z[b, y_a_k], lam_k).
struct IcmGatherScoresArgs {
  const float* logits;  // (rows, C), unit column stride
  int64_t logits_row_stride;
  int64_t rows, batch;
  const int32_t* y_a;
  const int32_t* y_b;
  const float* lam;
  float* scores;  // (rows, B), unit column stride
  int64_t scores_row_stride;
};

// The forward statistics of a block of score rows: each row's log-sum-exp and
// diagonal entry, and every column's running (max, sum of exp) merged with
// the block's.
struct IcmScoreStatsArgs {
  const float* scores;
  int64_t scores_row_stride;
  int64_t row_begin, rows, batch;
  float* row_lse;  // (B,): entries of the block's rows; nullptr without the row term
  float* diag;     // (B,): entries of the block's rows
  float* col_max;  // (B,) running; nullptr without the column term
  float* col_sum;  // (B,) running sum of exp(S - icm_lse_shift(col_max))
};

// dL/dS for a block of score rows (icm_math.h), and what is summed over rows:
//   grad_b_mixed[k] += sum_b g_b (P[b, k] - [b == k])            (the row term only)
//   grad_lam[k]     += sum_b dL/dS[b, k] (Z[b, y_a_k] - Z[b, y_b_k])   (through the logits)
// grad_scores may be scores itself (written in place).
struct IcmGradScoresArgs {
  const float* scores;
  int64_t scores_row_stride;
  int64_t row_begin, rows, batch;
  const float* grad_loss;  // (B,), each sample's incoming gradient
  const float* row_lse;    // (B,), or nullptr without the row term
  const float* col_lse;    // (B,), or nullptr without the column term
  float* grad_scores;      // block of dL/dS, or nullptr when not needed
  int64_t grad_row_stride;
  float* grad_b_mixed;     // (B,) accumulated, or nullptr
  const float* logits;     // the block's logit rows, for grad_lam
  int64_t logits_row_stride;
  const int32_t* y_a;
  const int32_t* y_b;
  float* grad_lam;         // (B,) accumulated, or nullptr
};

// dL/dZ for a block of rows, the transpose of the gather above:
//   dZ[b, :] = 0;  dZ[b, y_a_k] += lam_k dS[b, k];  dZ[b, y_b_k] += (1 - lam_k) dS[b, k]
struct IcmScatterScoresArgs {
  const float* grad_scores;
  int64_t grad_row_stride;
  int64_t rows, batch;
  const int32_t* y_a;
  const int32_t* y_b;
  const float* lam;
  float* grad_logits;  // (rows, C), unit column stride
  int64_t grad_logits_row_stride;
  int64_t num_classes;
};

// dW and db from dW~ and db~: each class row is the sum of its entries'
// weight * dW~[pair], entries listed per class (CSR, pairs in increasing order),
// written whole (classes absent from the batch get exact zeros).
struct IcmClassScatterArgs {
  const int64_t* class_begin;  // (C + 1,) offsets into the entries
  const int64_t* entry_pair;
  const float* entry_weight;   // lam_k for y_a_k, 1 - lam_k for y_b_k
  int64_t num_classes, features;
  const float* grad_w_mixed;   // (B, D) contiguous, or nullptr
  void* grad_weight;           // (C, D) contiguous in weight_dtype
  Dtype weight_dtype;
  const float* grad_b_mixed;   // (B,), or nullptr
  void* grad_bias;             // (C,) in bias_dtype
  Dtype bias_dtype;
};

// d lam_k = dW~[k] . (W[y_a_k] - W[y_b_k]) + db~[k] (b[y_a_k] - b[y_b_k]).
struct IcmGradLamArgs {
  const void* weight;
  Dtype dtype;
  int64_t weight_row_stride, weight_col_stride;
  const void* bias;  // or nullptr
  int64_t bias_stride;
  const int64_t* y_a;
  const int64_t* y_b;
  int64_t batch, features;
  const float* grad_w_mixed;  // (B, D) contiguous
  const float* grad_b_mixed;  // (B,), read when bias is given
  float* grad_lam;            // (B,)
};

#define MIXKERNELS_DECLARE_ICM_CPU_KERNELS(capability)                 \
  namespace capability {                                               \
  void icm_mixed_classifier(const IcmMixedClassifierArgs& args);       \
  void icm_gather_scores(const IcmGatherScoresArgs& args);             \
  void icm_score_stats(const IcmScoreStatsArgs& args);                 \
  void icm_grad_scores(const IcmGradScoresArgs& args);                 \
  void icm_scatter_scores(const IcmScatterScoresArgs& args);           \
  void icm_class_scatter(const IcmClassScatterArgs& args);             \
  void icm_grad_lam(const IcmGradLamArgs& args);                       \
  }

MIXKERNELS_DECLARE_ICM_CPU_KERNELS(DEFAULT)
MIXKERNELS_DECLARE_ICM_CPU_KERNELS(AVX2)
MIXKERNELS_DECLARE_ICM_CPU_KERNELS(AVX512)

}  // namespace mixkernels::cpu
