// CUDA kernels of Infinite Class Mixup (everything but the GEMMs, which
// infinite_class_mixup_cuda.cpp runs with cuBLAS through ATen): ports of the
// CPU kernels in csrc/cpu/infinite_class_mixup_kernel.cpp, with the same
// per-element math (mixkernels/icm_math.h). This file includes no torch header.
//
// Work decomposition (all blocks 256 threads, __launch_bounds__(256, 4): at
// most 64 registers, no spills; tests/test_cuda_build.py checks):
//  * elementwise passes (mixed classifier, score gather, logit scatter, class
//    scatter): a 2-D grid, x over the columns of a row, y over rows, both
//    looping beyond CUDA's grid limits (grid y <= 65535);
//  * row reductions (each row's log-sum-exp, the lam gradient's dot product):
//    a group of 32 ... 256 threads per row (a power of two chosen from the row
//    length), each summing a strided slice in order, then a fixed butterfly
//    within each warp and the warps' results in order through shared memory;
//  * column reductions over the rows of a block (column log-sum-exp, the bias
//    and lam gradients' column sums): one thread per (column, chunk of
//    kIcmChunkRows rows) walks its chunk's rows in order and writes a partial;
//    a second kernel merges each column's partials in chunk order. Adjacent
//    threads take adjacent columns, so every row read is coalesced.
// No atomics anywhere: every sum has one owner and a fixed order, independent
// of the launch configuration's grid size (which only sets who computes what).
// The class scatters (dW, db, and dZ on the logits path) read class-sorted
// entries (CSR) built on the device by the host (a stable sort, see
// icm_class_entries), so each output element is the sum of its class's
// entries in pair order; the products and sums are rounded one by one
// (__fmul_rn, __fadd_rn) as the CPU kernels compute them, not fused.
//
// Offsets that can pass 2^31 (rows times row strides, classes times features)
// are 64-bit.
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math_constants.h>

#include "dtype_dispatch.cuh"
#include "launch_config.cuh"
#include "mixkernels/icm_math.h"
#include "vec_io.cuh"

#include "infinite_class_mixup_kernel.h"

namespace mixkernels::gpu {
namespace {

using launch::capped;
using launch::ceil_div;
using launch::kMaxGridX;
using launch::kMaxGridY;
using launch::kMinBlocksPerSm;
using launch::kThreads;
using launch::kWarpSize;

constexpr int kMaxWarps = kThreads / kWarpSize;

__device__ __forceinline__ bool label_ok(int64_t label, int64_t num_classes) {
  return label >= 0 && label < num_classes;
}

// Grid-stride loops over one dimension: the first index of this thread and the step.
__device__ __forceinline__ int64_t first_x() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t step_x() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }
__device__ __forceinline__ int64_t first_y() {
  return static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y;
}
__device__ __forceinline__ int64_t step_y() { return static_cast<int64_t>(gridDim.y) * blockDim.y; }

struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return icm_nan_max(a, b); }
};
struct SumOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};

// Reduces `value` over the blockDim.x threads of this thread's row group
// (threadIdx.y): a butterfly within each warp (every lane ends with the same
// bits: each step combines the same two values), then the warps of the group
// in order. Every thread of the block must call it (it synchronises when a
// group spans several warps); every thread of the group gets the result.
template <typename Op>
__device__ __forceinline__ float row_group_reduce(float value, Op op, float* partial) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    value = op(value, __shfl_xor_sync(0xffffffffu, value, offset));
  }
  const int warps = static_cast<int>(blockDim.x) / kWarpSize;
  if (warps > 1) {
    const int first_slot = static_cast<int>(threadIdx.y) * warps;
    __syncthreads();  // the previous call's readers are done with `partial`
    if ((threadIdx.x & (kWarpSize - 1)) == 0) partial[first_slot + threadIdx.x / kWarpSize] = value;
    __syncthreads();
    value = partial[first_slot];
    for (int w = 1; w < warps; ++w) value = op(value, partial[first_slot + w]);
  }
  return value;
}

// ---------------------------------------------------------------------------
// Launch shapes (host).

// 2-D elementwise shape over `rows` rows of `width` columns: blockDim.x the
// power of two covering the row (at most 256), blockDim.y rows per block.
struct Shape2d {
  dim3 grid, block;
};

Shape2d shape_2d(int64_t rows, int64_t width) {
  int threads_x = 1;
  while (threads_x < width && threads_x < kThreads) threads_x *= 2;
  const int threads_y = kThreads / threads_x;
  Shape2d s;
  s.block = dim3(static_cast<unsigned>(threads_x), static_cast<unsigned>(threads_y));
  s.grid = dim3(static_cast<unsigned>(capped(ceil_div(width, threads_x), kMaxGridX)),
                static_cast<unsigned>(capped(ceil_div(rows, threads_y), kMaxGridY)));
  return s;
}

// Row groups: blockDim.x threads per row (32 ... 256, at least ~16 elements
// each where the row is long enough), blockDim.y rows per block, grid x over
// row groups (the kernels loop beyond it).
Shape2d row_group_shape(int64_t rows, int64_t row_length) {
  int per_row = kWarpSize;
  while (per_row < kThreads && int64_t{per_row} * 16 < row_length) per_row *= 2;
  const int rows_per_block = kThreads / per_row;
  Shape2d s;
  s.block = dim3(static_cast<unsigned>(per_row), static_cast<unsigned>(rows_per_block));
  s.grid = dim3(static_cast<unsigned>(capped(ceil_div(rows, rows_per_block), kMaxGridX)));
  return s;
}

unsigned blocks_1d(int64_t n) { return static_cast<unsigned>(capped(ceil_div(n, kThreads), kMaxGridX)); }

// Column-chunk shape: x over columns, y over chunks of kIcmChunkRows rows.
Shape2d column_chunk_shape(int64_t rows, int64_t batch) {
  Shape2d s;
  s.block = dim3(kThreads);
  s.grid = dim3(static_cast<unsigned>(capped(ceil_div(batch, kThreads), kMaxGridX)),
                static_cast<unsigned>(capped(ceil_div(rows, kIcmChunkRows), kMaxGridY)));
  return s;
}

// ---------------------------------------------------------------------------
// Mixed classifier: W~[k, d] = lerp(W[y_b_k, d], W[y_a_k, d], lam_k); x over
// features, y over pairs.

template <typename T>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    icm_mixed_classifier_kernel(const IcmMixedClassifierArgs a) {
  const T* weight = static_cast<const T*>(a.weight);
  const T* bias = static_cast<const T*>(a.bias);
  T* w_mixed = static_cast<T*>(a.w_mixed);
  for (int64_t k = first_y(); k < a.batch; k += step_y()) {
    const int64_t y_a = __ldg(a.y_a + k), y_b = __ldg(a.y_b + k);
    const bool valid = label_ok(y_a, a.num_classes) && label_ok(y_b, a.num_classes);
    const float lam = __ldg(a.lam + k);
    // A bad label reads row 0 (in bounds) and writes NaN.
    const T* w_a = weight + (valid ? y_a : 0) * a.weight_row_stride;
    const T* w_b = weight + (valid ? y_b : 0) * a.weight_row_stride;
    T* out = w_mixed + k * a.features;
    for (int64_t d = first_x(); d < a.features; d += step_x()) {
      const int64_t offset = d * a.weight_col_stride;
      const float value = icm_lerp(load_readonly(w_b + offset), load_readonly(w_a + offset), lam);
      store(out + d, valid ? value : CUDART_NAN_F);
    }
    if (bias != nullptr && blockIdx.x == 0 && threadIdx.x == 0) {
      const float value = icm_lerp(load_readonly(bias + (valid ? y_b : 0) * a.bias_stride),
                                   load_readonly(bias + (valid ? y_a : 0) * a.bias_stride), lam);
      a.b_mixed[k] = valid ? value : CUDART_NAN_F;
    }
  }
}

// ---------------------------------------------------------------------------
// Score gather (logits path): x over pairs k, y over the block's rows.

__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    icm_gather_scores_kernel(const IcmGatherScoresArgs a) {
  for (int64_t r = first_y(); r < a.rows; r += step_y()) {
    const float* z = a.logits + r * a.logits_row_stride;
    float* s = a.scores + r * a.scores_row_stride;
    for (int64_t k = first_x(); k < a.batch; k += step_x()) {
      const int64_t y_a = __ldg(a.y_a + k), y_b = __ldg(a.y_b + k);
      const bool valid = label_ok(y_a, a.num_classes) && label_ok(y_b, a.num_classes);
      s[k] = valid ? icm_lerp(z[y_b], z[y_a], __ldg(a.lam + k)) : CUDART_NAN_F;
    }
  }
}

// ---------------------------------------------------------------------------
// Forward statistics.

// Each row's diagonal entry and (with the row term) log-sum-exp; a row group per row.
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    icm_row_stats_kernel(const IcmScoreStatsArgs a) {
  __shared__ float partial[kMaxWarps];
  const int64_t rows_per_step = static_cast<int64_t>(gridDim.x) * blockDim.y;
  // r0 is the same for the whole block, so every thread reaches the reductions.
  for (int64_t r0 = static_cast<int64_t>(blockIdx.x) * blockDim.y; r0 < a.rows; r0 += rows_per_step) {
    const int64_t r = r0 + threadIdx.y;
    const bool active = r < a.rows;
    const float* s = a.scores + (active ? r : 0) * a.scores_row_stride;
    const int64_t row = a.row_begin + r;
    if (a.row_lse != nullptr) {
      float max_value = -CUDART_INF_F;
      if (active) {
        for (int64_t k = threadIdx.x; k < a.batch; k += blockDim.x) max_value = icm_nan_max(max_value, s[k]);
      }
      max_value = row_group_reduce(max_value, MaxOp{}, partial);
      const float shift = icm_lse_shift(max_value);
      float sum = 0.0f;
      if (active) {
        for (int64_t k = threadIdx.x; k < a.batch; k += blockDim.x) sum += ::expf(s[k] - shift);
      }
      sum = row_group_reduce(sum, SumOp{}, partial);
      if (active && threadIdx.x == 0) a.row_lse[row] = icm_lse(max_value, sum);
    }
    if (active && threadIdx.x == 0) a.diag[row] = s[row];
  }
}

// Each column's (max, sum of exp) over each chunk of the block's rows.
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    icm_column_stats_kernel(const IcmScoreStatsArgs a, float* partial_max, float* partial_sum) {
  const int64_t k = first_x();
  if (k >= a.batch) return;
  const int64_t chunks = ceil_div(a.rows, kIcmChunkRows);
  for (int64_t chunk = blockIdx.y; chunk < chunks; chunk += gridDim.y) {
    const int64_t r_begin = chunk * kIcmChunkRows;
    const int64_t r_end = capped(r_begin + kIcmChunkRows, a.rows);
    const float* s = a.scores + k;
    float max_value = -CUDART_INF_F;
    for (int64_t r = r_begin; r < r_end; ++r) max_value = icm_nan_max(max_value, s[r * a.scores_row_stride]);
    const float shift = icm_lse_shift(max_value);
    float sum = 0.0f;
    for (int64_t r = r_begin; r < r_end; ++r) sum += ::expf(s[r * a.scores_row_stride] - shift);
    partial_max[chunk * a.batch + k] = max_value;
    partial_sum[chunk * a.batch + k] = sum;
  }
}

// Merges each column's chunk partials, in chunk order, into its running (max, sum).
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    icm_column_lse_merge_kernel(const float* partial_max, const float* partial_sum, int64_t chunks,
                                int64_t batch, float* col_max, float* col_sum) {
  for (int64_t k = first_x(); k < batch; k += step_x()) {
    float max_value = col_max[k], sum = col_sum[k];
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      icm_lse_merge(max_value, sum, partial_max[chunk * batch + k], partial_sum[chunk * batch + k]);
    }
    col_max[k] = max_value;
    col_sum[k] = sum;
  }
}

__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) icm_loss_kernel(const IcmLossArgs a) {
  for (int64_t b = first_x(); b < a.batch; b += step_x()) {
    const float diag = a.diag[b];
    float col_term = 0.0f;
    if (a.col_max != nullptr) {
      const float col_lse = icm_lse(a.col_max[b], a.col_sum[b]);
      a.col_lse[b] = col_lse;
      col_term = col_lse - diag;
    }
    if (a.row_lse != nullptr && a.col_max != nullptr) {
      a.loss[b] = (a.row_lse[b] - diag) + col_term;
    } else if (a.row_lse != nullptr) {
      a.loss[b] = a.row_lse[b] - diag;
    } else {
      a.loss[b] = col_term;
    }
  }
}

// ---------------------------------------------------------------------------
// Score gradient: one thread per (column k, chunk of rows), rows in order; the
// chunk's column sums go to partials (bias: the row term; lam: through the logits).

template <typename TOut, bool kRow, bool kCol>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    icm_grad_scores_kernel(const IcmGradScoresArgs a, float* partial_bias, float* partial_lam) {
  const int64_t k = first_x();
  if (k >= a.batch) return;
  const int64_t chunks = ceil_div(a.rows, kIcmChunkRows);
  TOut* grad_scores = static_cast<TOut*>(a.grad_scores);
  const float grad_k = kCol ? a.grad_loss[k] : 0.0f;
  const float col_lse = kCol ? a.col_lse[k] : 0.0f;
  int64_t y_a = 0, y_b = 0;
  bool lam_valid = false;
  if (partial_lam != nullptr) {
    y_a = a.y_a[k];
    y_b = a.y_b[k];
    lam_valid = label_ok(y_a, a.num_classes) && label_ok(y_b, a.num_classes);
    if (!lam_valid) y_a = y_b = 0;  // read in bounds, the sum made NaN below
  }
  for (int64_t chunk = blockIdx.y; chunk < chunks; chunk += gridDim.y) {
    const int64_t r_begin = chunk * kIcmChunkRows;
    const int64_t r_end = capped(r_begin + kIcmChunkRows, a.rows);
    float bias_acc = 0.0f, lam_acc = 0.0f;
    for (int64_t r = r_begin; r < r_end; ++r) {
      const int64_t row = a.row_begin + r;
      // Plain load: grad_scores may be this very buffer (each element is read,
      // then written, by its own thread only).
      const float score = a.scores[r * a.scores_row_stride + k];
      float grad = 0.0f;
      if constexpr (kRow) {
        const float row_part = icm_term_grad(score, a.row_lse[row], a.grad_loss[row], row == k);
        grad = row_part;
        bias_acc += row_part;
      }
      if constexpr (kCol) {
        const float col_part = icm_term_grad(score, col_lse, grad_k, row == k);
        grad = kRow ? grad + col_part : col_part;
      }
      if (grad_scores != nullptr) store(grad_scores + r * a.grad_row_stride + k, grad);
      if (partial_lam != nullptr) {
        const float* z = a.logits + r * a.logits_row_stride;
        lam_acc = ::fmaf(grad, z[y_a] - z[y_b], lam_acc);
      }
    }
    if (partial_bias != nullptr) partial_bias[chunk * a.batch + k] = bias_acc;
    if (partial_lam != nullptr) partial_lam[chunk * a.batch + k] = lam_valid ? lam_acc : CUDART_NAN_F;
  }
}

// out[k] += the column's partials summed in chunk order (each of two sums, if given).
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    icm_column_sums_kernel(const float* partial_first, float* out_first, const float* partial_second,
                           float* out_second, int64_t chunks, int64_t batch) {
  for (int64_t k = first_x(); k < batch; k += step_x()) {
    if (out_first != nullptr) {
      float acc = 0.0f;
      for (int64_t chunk = 0; chunk < chunks; ++chunk) acc += partial_first[chunk * batch + k];
      out_first[k] += acc;
    }
    if (out_second != nullptr) {
      float acc = 0.0f;
      for (int64_t chunk = 0; chunk < chunks; ++chunk) acc += partial_second[chunk * batch + k];
      out_second[k] += acc;
    }
  }
}

// ---------------------------------------------------------------------------
// Class scatters.

__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    icm_class_entries_kernel(const IcmClassEntriesArgs a) {
  for (int64_t i = first_x(); i < 2 * a.batch; i += step_x()) {
    const int64_t source = a.order[i];
    const int64_t pair = source >> 1;
    const float lam = a.lam[pair];
    const bool same_class = a.y_a[pair] == a.y_b[pair];
    a.entry_pair[i] = pair;
    a.entry_weight[i] = (source & 1) == 0 ? icm_weight_a(lam, same_class) : icm_weight_b(lam, same_class);
  }
}

// dZ[r, c]: x over classes, y over the block's rows.
template <typename TOut>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    icm_scatter_scores_kernel(const IcmScatterScoresArgs a) {
  TOut* grad_logits = static_cast<TOut*>(a.grad_logits);
  for (int64_t r = first_y(); r < a.rows; r += step_y()) {
    const float* g = a.grad_scores + r * a.grad_row_stride;
    TOut* out = grad_logits + r * a.grad_logits_row_stride;
    for (int64_t c = first_x(); c < a.num_classes; c += step_x()) {
      const int64_t e_end = __ldg(a.class_begin + c + 1);
      float acc = 0.0f;
      for (int64_t e = __ldg(a.class_begin + c); e < e_end; ++e) {
        acc = __fadd_rn(acc, __fmul_rn(__ldg(a.entry_weight + e), g[__ldg(a.entry_pair + e)]));
      }
      store(out + c, acc);
    }
  }
}

// out[c, d]: x over the width, y over classes.
template <typename T>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    icm_class_scatter_kernel(const IcmClassScatterArgs a) {
  T* out = static_cast<T*>(a.out);
  for (int64_t c = first_y(); c < a.num_classes; c += step_y()) {
    const int64_t e_begin = __ldg(a.class_begin + c), e_end = __ldg(a.class_begin + c + 1);
    for (int64_t d = first_x(); d < a.width; d += step_x()) {
      float acc = 0.0f;
      for (int64_t e = e_begin; e < e_end; ++e) {
        acc = __fadd_rn(acc, __fmul_rn(__ldg(a.entry_weight + e), __ldg(a.src + __ldg(a.entry_pair + e) * a.width + d)));
      }
      store(out + c * a.width + d, acc);
    }
  }
}

// ---------------------------------------------------------------------------
// lam gradient (factorised path): a row group per pair k, a fused
// multiply-add chain per thread as the CPU kernel's.

template <typename T>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) icm_grad_lam_kernel(const IcmGradLamArgs a) {
  __shared__ float partial[kMaxWarps];
  const T* weight = static_cast<const T*>(a.weight);
  const T* bias = static_cast<const T*>(a.bias);
  const int64_t pairs_per_step = static_cast<int64_t>(gridDim.x) * blockDim.y;
  for (int64_t k0 = static_cast<int64_t>(blockIdx.x) * blockDim.y; k0 < a.batch; k0 += pairs_per_step) {
    const int64_t k = k0 + threadIdx.y;
    const bool active = k < a.batch;
    const int64_t y_a = active ? __ldg(a.y_a + k) : 0, y_b = active ? __ldg(a.y_b + k) : 0;
    const bool valid = active && label_ok(y_a, a.num_classes) && label_ok(y_b, a.num_classes);
    float dot = 0.0f;
    if (valid) {
      const T* w_a = weight + y_a * a.weight_row_stride;
      const T* w_b = weight + y_b * a.weight_row_stride;
      const float* g = a.grad_w_mixed + k * a.features;
      for (int64_t d = threadIdx.x; d < a.features; d += blockDim.x) {
        const int64_t offset = d * a.weight_col_stride;
        dot = ::fmaf(g[d], load_readonly(w_a + offset) - load_readonly(w_b + offset), dot);
      }
    }
    dot = row_group_reduce(dot, SumOp{}, partial);
    if (active && threadIdx.x == 0) {
      if (valid && bias != nullptr) {
        const float diff = load_readonly(bias + y_a * a.bias_stride) - load_readonly(bias + y_b * a.bias_stride);
        dot = __fadd_rn(dot, __fmul_rn(a.grad_b_mixed[k], diff));
      }
      a.grad_lam[k] = valid ? dot : CUDART_NAN_F;
    }
  }
}

}  // namespace

// ---------------------------------------------------------------------------
// Launchers.

cudaError_t icm_mixed_classifier(const IcmMixedClassifierArgs& args, cudaStream_t stream) {
  if (args.batch <= 0 || args.features <= 0) return cudaSuccess;
  const Shape2d s = shape_2d(args.batch, args.features);
  return dispatch_dtype(args.dtype, [&](auto tag) -> cudaError_t {
    using T = typename decltype(tag)::type;
    icm_mixed_classifier_kernel<T><<<s.grid, s.block, 0, stream>>>(args);
    return cudaGetLastError();
  });
}

cudaError_t icm_gather_scores(const IcmGatherScoresArgs& args, cudaStream_t stream) {
  if (args.rows <= 0 || args.batch <= 0) return cudaSuccess;
  const Shape2d s = shape_2d(args.rows, args.batch);
  icm_gather_scores_kernel<<<s.grid, s.block, 0, stream>>>(args);
  return cudaGetLastError();
}

cudaError_t icm_score_stats(const IcmScoreStatsArgs& args, float* workspace, cudaStream_t stream) {
  if (args.rows <= 0 || args.batch <= 0) return cudaSuccess;
  const Shape2d rows = row_group_shape(args.rows, args.batch);
  icm_row_stats_kernel<<<rows.grid, rows.block, 0, stream>>>(args);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || args.col_max == nullptr) return err;
  const int64_t partials = icm_column_partials(args.rows, args.batch);
  const Shape2d columns = column_chunk_shape(args.rows, args.batch);
  icm_column_stats_kernel<<<columns.grid, columns.block, 0, stream>>>(args, workspace, workspace + partials);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  icm_column_lse_merge_kernel<<<blocks_1d(args.batch), kThreads, 0, stream>>>(
      workspace, workspace + partials, ceil_div(args.rows, kIcmChunkRows), args.batch, args.col_max,
      args.col_sum);
  return cudaGetLastError();
}

cudaError_t icm_loss(const IcmLossArgs& args, cudaStream_t stream) {
  if (args.batch <= 0) return cudaSuccess;
  icm_loss_kernel<<<blocks_1d(args.batch), kThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

namespace {

template <typename TOut>
cudaError_t launch_grad_scores(const IcmGradScoresArgs& args, const Shape2d& s, float* partial_bias,
                               float* partial_lam, cudaStream_t stream) {
  if (args.row_lse != nullptr && args.col_lse != nullptr) {
    icm_grad_scores_kernel<TOut, true, true><<<s.grid, s.block, 0, stream>>>(args, partial_bias, partial_lam);
  } else if (args.row_lse != nullptr) {
    icm_grad_scores_kernel<TOut, true, false><<<s.grid, s.block, 0, stream>>>(args, partial_bias, partial_lam);
  } else {
    icm_grad_scores_kernel<TOut, false, true><<<s.grid, s.block, 0, stream>>>(args, partial_bias, partial_lam);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t icm_grad_scores(const IcmGradScoresArgs& args, float* workspace, cudaStream_t stream) {
  if (args.rows <= 0 || args.batch <= 0) return cudaSuccess;
  if (args.row_lse == nullptr && args.col_lse == nullptr) return cudaErrorInvalidValue;
  const int64_t partials = icm_column_partials(args.rows, args.batch);
  // The bias sum is the row term's only: without it there is nothing to sum.
  float* partial_bias = args.grad_b_mixed != nullptr && args.row_lse != nullptr ? workspace : nullptr;
  float* partial_lam = args.grad_lam != nullptr ? workspace + (partial_bias != nullptr ? partials : 0) : nullptr;
  const Shape2d s = column_chunk_shape(args.rows, args.batch);
  cudaError_t err;
  if (args.grad_scores == nullptr) {
    err = launch_grad_scores<float>(args, s, partial_bias, partial_lam, stream);
  } else {
    err = dispatch_dtype(args.grad_dtype, [&](auto tag) -> cudaError_t {
      return launch_grad_scores<typename decltype(tag)::type>(args, s, partial_bias, partial_lam, stream);
    });
  }
  if (err != cudaSuccess || (partial_bias == nullptr && partial_lam == nullptr)) return err;
  icm_column_sums_kernel<<<blocks_1d(args.batch), kThreads, 0, stream>>>(
      partial_bias, partial_bias != nullptr ? args.grad_b_mixed : nullptr, partial_lam,
      partial_lam != nullptr ? args.grad_lam : nullptr, ceil_div(args.rows, kIcmChunkRows), args.batch);
  return cudaGetLastError();
}

cudaError_t icm_class_entries(const IcmClassEntriesArgs& args, cudaStream_t stream) {
  if (args.batch <= 0) return cudaSuccess;
  icm_class_entries_kernel<<<blocks_1d(2 * args.batch), kThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

cudaError_t icm_scatter_scores(const IcmScatterScoresArgs& args, cudaStream_t stream) {
  if (args.rows <= 0 || args.num_classes <= 0) return cudaSuccess;
  const Shape2d s = shape_2d(args.rows, args.num_classes);
  return dispatch_dtype(args.dtype, [&](auto tag) -> cudaError_t {
    using T = typename decltype(tag)::type;
    icm_scatter_scores_kernel<T><<<s.grid, s.block, 0, stream>>>(args);
    return cudaGetLastError();
  });
}

cudaError_t icm_class_scatter(const IcmClassScatterArgs& args, cudaStream_t stream) {
  if (args.num_classes <= 0 || args.width <= 0) return cudaSuccess;
  const Shape2d s = shape_2d(args.num_classes, args.width);
  return dispatch_dtype(args.dtype, [&](auto tag) -> cudaError_t {
    using T = typename decltype(tag)::type;
    icm_class_scatter_kernel<T><<<s.grid, s.block, 0, stream>>>(args);
    return cudaGetLastError();
  });
}

cudaError_t icm_grad_lam(const IcmGradLamArgs& args, cudaStream_t stream) {
  if (args.batch <= 0) return cudaSuccess;
  const Shape2d s = row_group_shape(args.batch, args.features);
  return dispatch_dtype(args.dtype, [&](auto tag) -> cudaError_t {
    using T = typename decltype(tag)::type;
    icm_grad_lam_kernel<T><<<s.grid, s.block, 0, stream>>>(args);
    return cudaGetLastError();
  });
}

}  // namespace mixkernels::gpu
