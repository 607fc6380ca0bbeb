// Launchers of the CUDA kernels of Infinite Class Mixup
// (csrc/cuda/infinite_class_mixup_kernel.cu): everything of
// infinite_class_mixup_loss(_backward) but the GEMMs, which
// infinite_class_mixup_cuda.cpp runs with ATen (cuBLAS). The maths is
// shared/notes/icm.md, section 5, and the per-element functions are
// mixkernels/icm_math.h's, shared with the CPU kernels.
//
// Torch-free on purpose, like the other *_kernel.h: raw device pointers,
// every launcher enqueues on `stream`, never synchronises, and returns the
// first CUDA error it meets.
//
// S is the (B, B) score matrix, processed in blocks of consecutive rows
// [row_begin, row_begin + rows); a block pointer points at its first row and
// holds all B columns (unit column stride). Float buffers are fp32 unless a
// DType says otherwise. Label values are not validated on the host (that
// would need a synchronisation): a label outside [0, C) makes what reads it
// NaN (its mixed classifier, its scores, its lam gradient) and drops it from
// the class scatters, never a read out of bounds.
//
// Determinism: no atomics. Sums over the rows of a block are taken per chunk
// of kIcmChunkRows rows (one thread per column and chunk, rows in order),
// then the chunks are merged in order by one thread per column; block after
// block, in order, on the stream. Row reductions use a fixed tree.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "storage_dtype.h"

namespace mixkernels::gpu {

// Rows per chunk of the column sums (see above).
constexpr int64_t kIcmChunkRows = 32;

// fp32 values of workspace per column statistic for a block of `rows` rows:
// one partial per (chunk, column).
inline int64_t icm_column_partials(int64_t rows, int64_t batch) {
  return (rows + kIcmChunkRows - 1) / kIcmChunkRows * batch;
}

// W~[k] = lerp(W[y_b_k], W[y_a_k], lam_k) (B, D), computed in fp32 and stored
// in dtype (the GEMM operand: rounded for bf16/fp16), and b~[k] alike in fp32.
struct IcmMixedClassifierArgs {
  DType dtype;          // of weight, bias and w_mixed
  const void* weight;   // (C, D), any strides
  int64_t weight_row_stride, weight_col_stride;
  const void* bias;     // (C,), or nullptr
  int64_t bias_stride;
  const int64_t* y_a;
  const int64_t* y_b;
  const float* lam;
  int64_t batch, features, num_classes;
  void* w_mixed;        // (B, D), contiguous, in dtype
  float* b_mixed;       // (B,), written when bias is given
};
cudaError_t icm_mixed_classifier(const IcmMixedClassifierArgs& args, cudaStream_t stream);

// Score rows from logit rows: S[b, k] = lerp(Z[b, y_b_k], Z[b, y_a_k], lam_k).
struct IcmGatherScoresArgs {
  const float* logits;  // (rows, C), unit column stride
  int64_t logits_row_stride;
  int64_t rows, batch, num_classes;
  const int64_t* y_a;
  const int64_t* y_b;
  const float* lam;
  float* scores;        // (rows, B), unit column stride
  int64_t scores_row_stride;
};
cudaError_t icm_gather_scores(const IcmGatherScoresArgs& args, cudaStream_t stream);

// The forward statistics of a block of score rows: each row's log-sum-exp and
// diagonal entry, and every column's running (max, sum of exp) merged with
// the block's (icm_lse_merge).
struct IcmScoreStatsArgs {
  const float* scores;
  int64_t scores_row_stride;
  int64_t row_begin, rows, batch;
  float* row_lse;  // (B,): entries of the block's rows; nullptr without the row term
  float* diag;     // (B,): entries of the block's rows
  float* col_max;  // (B,) running; nullptr without the column term
  float* col_sum;  // (B,) running sum of exp(S - icm_lse_shift(col_max))
};
// `workspace`: 2 * icm_column_partials(rows, batch) floats when col_max is
// given (else unused).
cudaError_t icm_score_stats(const IcmScoreStatsArgs& args, float* workspace, cudaStream_t stream);

// Per sample b: col_lse[b] = icm_lse(col_max[b], col_sum[b]) (column term), and
// loss[b] = (row_lse[b] - diag[b]) + (col_lse[b] - diag[b]), either term alone
// when the other is absent (row_lse / col_max nullptr).
struct IcmLossArgs {
  const float* row_lse;
  const float* col_max;
  const float* col_sum;
  const float* diag;
  int64_t batch;
  float* col_lse;
  float* loss;
};
cudaError_t icm_loss(const IcmLossArgs& args, cudaStream_t stream);

// dL/dS for a block of score rows (icm_term_grad), and what is summed over rows:
//   grad_b_mixed[k] += sum_b g_b (P[b, k] - [b == k])                 (the row term only)
//   grad_lam[k]     += sum_b dL/dS[b, k] (Z[b, y_a_k] - Z[b, y_b_k])  (through the logits)
// grad_scores may be scores itself (fp32, written in place).
struct IcmGradScoresArgs {
  const float* scores;
  int64_t scores_row_stride;
  int64_t row_begin, rows, batch;
  const float* grad_loss;  // (B,), each sample's incoming gradient
  const float* row_lse;    // (B,), or nullptr without the row term
  const float* col_lse;    // (B,), or nullptr without the column term
  DType grad_dtype;        // of grad_scores
  void* grad_scores;       // block of dL/dS, or nullptr when not needed
  int64_t grad_row_stride;
  float* grad_b_mixed;     // (B,) accumulated, or nullptr
  const float* logits;     // the block's logit rows, read for grad_lam
  int64_t logits_row_stride;
  const int64_t* y_a;
  const int64_t* y_b;
  int64_t num_classes;
  float* grad_lam;         // (B,) accumulated, or nullptr
};
// `workspace`: icm_column_partials(rows, batch) floats per sum asked for
// (grad_b_mixed, grad_lam), 0 without.
cudaError_t icm_grad_scores(const IcmGradScoresArgs& args, float* workspace, cudaStream_t stream);

// The class-sorted entries of the class scatters (CSR), from the stable sort
// of the interleaved labels (y_a_0, y_b_0, y_a_1, y_b_1, ...): entry i is
// sorted position i; its pair is order[i] / 2, its weight lam_pair for a y_a
// label (even order) and 1 - lam_pair for a y_b label (odd), or 1 and 0 for a
// same-class pair (icm_weight_a/b). Within a class the entries are in pair
// order, y_a before y_b, as the CPU kernels add them.
struct IcmClassEntriesArgs {
  const int64_t* order;  // (2B,) sort permutation
  const int64_t* y_a;    // (B,) contiguous: a same-class pair weighs 1 and 0
  const int64_t* y_b;
  const float* lam;
  int64_t batch;
  int64_t* entry_pair;   // (2B,)
  float* entry_weight;   // (2B,)
};
cudaError_t icm_class_entries(const IcmClassEntriesArgs& args, cudaStream_t stream);

// dL/dZ for a block of rows, the transpose of the gather:
//   dZ[b, c] = sum over the entries e of class c, in order, of weight_e dS[b, pair_e]
// (0 for classes absent from the batch), stored in dtype (the GEMM operand).
struct IcmScatterScoresArgs {
  const float* grad_scores;   // (rows, B), unit column stride
  int64_t grad_row_stride;
  int64_t rows, batch, num_classes;
  const int64_t* class_begin; // (C + 1,) offsets into the entries
  const int64_t* entry_pair;
  const float* entry_weight;
  DType dtype;
  void* grad_logits;          // (rows, C), unit column stride, in dtype
  int64_t grad_logits_row_stride;
};
cudaError_t icm_scatter_scores(const IcmScatterScoresArgs& args, cudaStream_t stream);

// out[c, :] = sum over the entries e of class c, in order, of weight_e src[pair_e, :]
// (dW from dW~ with width D, db from db~ with width 1), exact zeros for
// absent classes, stored in dtype.
struct IcmClassScatterArgs {
  const int64_t* class_begin;
  const int64_t* entry_pair;
  const float* entry_weight;
  int64_t num_classes, width;
  const float* src;  // (B, width) contiguous
  DType dtype;
  void* out;         // (C, width) contiguous, in dtype
};
cudaError_t icm_class_scatter(const IcmClassScatterArgs& args, cudaStream_t stream);

// d lam_k = dW~[k] . (W[y_a_k] - W[y_b_k]) + db~[k] (b[y_a_k] - b[y_b_k]).
struct IcmGradLamArgs {
  DType dtype;          // of weight and bias
  const void* weight;
  int64_t weight_row_stride, weight_col_stride;
  const void* bias;     // or nullptr
  int64_t bias_stride;
  const int64_t* y_a;
  const int64_t* y_b;
  int64_t batch, features, num_classes;
  const float* grad_w_mixed;  // (B, D) contiguous
  const float* grad_b_mixed;  // (B,), read when bias is given
  float* grad_lam;            // (B,)
};
cudaError_t icm_grad_lam(const IcmGradLamArgs& args, cudaStream_t stream);

}  // namespace mixkernels::gpu
