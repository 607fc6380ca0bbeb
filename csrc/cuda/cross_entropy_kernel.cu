// CUDA kernels of the cross-entropy family: mixup cross-entropy and
// soft-target cross-entropy, forward and backward.
//
// This file includes no torch header (it compiles in seconds); the per-row and
// per-element math comes from mixkernels/cross_entropy_math.h, which the CPU
// kernels use too, so both backends compute the same formulas.
//
// Forward: a group of threads owns a row (a warp for small C, a block
// otherwise). Pass 1 reduces max(z), sum(z) (and sum(t), sum(t*z) for a soft
// target); pass 2 reduces sum(exp(z - max)), re-reading the row (it is still in
// L1/L2). Reductions are fixed-order trees (warp shuffles, then one shared
// memory slot per warp read back in warp order), so results are bitwise
// reproducible; there are no atomics.
//
// Backward: elementwise over (B, C) with a 2-D grid, columns on x and rows on
// y, so a few long rows still fill the GPU and many short rows pack several
// rows into a block.
//
// Loads and stores are 16 bytes wide where the row's alignment allows it: each
// row is split into a scalar head (up to the first aligned address), an
// aligned vector body and a scalar tail, so any row stride works.
//
// Launch configuration (see with_row_group and backward_config):
//   forward threads per row:  C <= 1024: 32 (one warp per row, 4 rows per block)
//                             C <= 4096: 128;  C <= 16384: 256;  C <= 65536: 512;
//                             larger: 1024 (one row per block)
//   backward: 256-thread blocks of threads_x x threads_y, threads_x the power of
//             two covering the row's 16-byte vectors (at most 256), threads_y =
//             256 / threads_x rows per block; grid.y capped at 65535 with a
//             grid-stride loop over rows; each thread takes up to 4 vectors of a
//             row once the grid has 8 blocks per SM without that.
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math_constants.h>

#include "dtype_dispatch.cuh"
#include "launch_config.cuh"
#include "mixkernels/cross_entropy_math.h"
#include "vec_io.cuh"

#include "cross_entropy_kernel.h"

namespace mixkernels::gpu {
namespace {

using launch::ceil_div;
using launch::kMaxGridX;
using launch::kWarpSize;

constexpr int kBackwardThreads = 256;
// Every kernel declares room for 1024 resident threads per SM (half of an
// A100/H100 SM), which caps it at 64 registers. Declaring only the block size
// lets ptxas pick a much lower target (40 registers, with spills, seen with
// CUDA 13.0); 64 fits every kernel here without spills (see tests/test_cuda_build.py).
constexpr int kResidentThreadsPerSm = 1024;
constexpr int min_blocks_per_sm(int threads_per_block) {
  return threads_per_block >= kResidentThreadsPerSm ? 1 : kResidentThreadsPerSm / threads_per_block;
}

// ---------------------------------------------------------------------------
// Storage conversions (explicit: torch builds with __CUDA_NO_HALF_CONVERSIONS__
// and __CUDA_NO_BFLOAT16_CONVERSIONS__).

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
// Round to nearest even, as torch's .to(bfloat16/float16) does.
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }

// ---------------------------------------------------------------------------
// Vector access.

// N consecutive elements moved as one aligned access (N = 1: a scalar).
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// Loads go through an integer vector register of the pack's size with
// __ldg: one ld.global.nc.v4 (or .v2) per pack. Inputs are read-only for the
// kernel's lifetime and never alias its outputs (freshly allocated), so the
// non-coherent read-only path is safe; the inline-asm stores below would
// otherwise stop the compiler from choosing it.
template <int kBytes>
struct Word;
template <>
struct Word<2> {
  using type = unsigned short;
};
template <>
struct Word<4> {
  using type = unsigned int;
};
template <>
struct Word<8> {
  using type = uint2;
};
template <>
struct Word<16> {
  using type = uint4;
};

template <int N, typename T>
__device__ __forceinline__ Pack<T, N> load_pack(const T* p) {
  using W = typename Word<sizeof(Pack<T, N>)>::type;
  const W word = __ldg(reinterpret_cast<const W*>(p));
  Pack<T, N> value;
  __builtin_memcpy(&value, &word, sizeof(word));
  return value;
}

__device__ __forceinline__ unsigned int bits_of(float x) { return __float_as_uint(x); }
__device__ __forceinline__ unsigned int bits_of(__half x) { return __half_as_ushort(x); }
__device__ __forceinline__ unsigned int bits_of(__nv_bfloat16 x) { return __bfloat16_as_ushort(x); }

// Stores assemble the 32-bit words and write them with one st.global.v4
// (or .v2) in inline PTX: a struct copy, a memcpy into a uint4 or even a
// uint4 assignment is split by NVVM into one store per element (seen with
// CUDA 13.0), and __stwb's memory clobber costs the loads their read-only
// (.nc) path. No clobber is needed: the kernels never read what they write.
template <int N, typename T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, N>& value) {
  if constexpr (N == 1) {
    *p = value.v[0];
  } else {
    constexpr int kPerWord = 4 / static_cast<int>(sizeof(T));
    constexpr int kWords = N / kPerWord;
    static_assert(kWords == 1 || kWords == 2 || kWords == 4, "a pack is 4, 8 or 16 bytes");
    unsigned int words[kWords];
#pragma unroll
    for (int w = 0; w < kWords; ++w) {
      words[w] = 0;
#pragma unroll
      for (int k = 0; k < kPerWord; ++k) {
        // Little endian: the lower column goes to the lower bits.
        words[w] |= bits_of(value.v[w * kPerWord + k]) << (8 * sizeof(T) * k);
      }
    }
    const size_t address = __cvta_generic_to_global(p);
    if constexpr (kWords == 4) {
      asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(address), "r"(words[0]),
                   "r"(words[1]), "r"(words[2]), "r"(words[3]));
    } else if constexpr (kWords == 2) {
      asm volatile("st.global.v2.b32 [%0], {%1, %2};" ::"l"(address), "r"(words[0]), "r"(words[1]));
    } else {
      asm volatile("st.global.b32 [%0], %1;" ::"l"(address), "r"(words[0]));
    }
  }
}

// Visits the columns [0, C) of one row, shared by `num_lanes` threads of which
// this one is `lane`: visit(c0, Width<N>{}) handles columns c0 .. c0+N-1.
// Columns before `head` and after the last whole vector go one at a time;
// the rest kVec at a time, at addresses the caller made aligned by its choice
// of `head` (< kVec). With vectorized == false every column goes one at a
// time. The special case of vec_io.cuh's for_each_column for rows that start
// at column 0, kept apart because it compiles to tighter row set-up code for
// these one-row-per-group kernels.
template <int kVec, typename Visit>
__device__ __forceinline__ void for_each_row_column(int64_t num_columns, int64_t head, bool vectorized,
                                                    int64_t lane, int64_t num_lanes, Visit&& visit) {
  if (!vectorized || head > num_columns) head = num_columns;
  for (int64_t c = lane; c < head; c += num_lanes) visit(c, Width<1>{});
  const int64_t num_vectors = (num_columns - head) / kVec;
#pragma unroll 4
  for (int64_t v = lane; v < num_vectors; v += num_lanes) visit(head + v * kVec, Width<kVec>{});
  for (int64_t c = head + num_vectors * kVec + lane; c < num_columns; c += num_lanes) {
    visit(c, Width<1>{});
  }
}

// ---------------------------------------------------------------------------
// Reductions.

// max() that returns NaN when either side is NaN, like torch.max: a NaN
// logit then makes the row's lse NaN even when every other logit is -inf.
__device__ __forceinline__ float nan_propagating_max(float a, float b) {
  return (a > b || isnan(a)) ? a : b;
}

// Combines two partial results of N reductions at once: value i is reduced
// by max when bit i of kMaxMask is set, by sum otherwise. Both operations are
// commutative in IEEE arithmetic, which makes the butterfly below leave the
// same bits in every lane.
template <unsigned kMaxMask, int N>
__device__ __forceinline__ void combine(float (&acc)[N], const float (&other)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) {
    acc[i] = ((kMaxMask >> i) & 1u) ? nan_propagating_max(acc[i], other[i]) : acc[i] + other[i];
  }
}

// All-reduce of N values over a group of kGroup threads (a warp, or the whole
// block when kGroup > 32): every thread of the group ends with the results.
//
// For a block, lane 0 of each warp writes its warp's results to `scratch`
// (N * kGroup/32 floats), and after one barrier every thread combines the
// slots in warp order; the order is fixed, so the result is deterministic.
// There is no barrier after the reads: callers alternate between two scratch
// buffers, and the barrier of the next reduction (in the other buffer)
// orders these reads before any rewrite of this one.
template <int kGroup, unsigned kMaxMask, int N>
__device__ __forceinline__ void group_allreduce(float (&values)[N], float* scratch) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    float other[N];
#pragma unroll
    for (int i = 0; i < N; ++i) other[i] = __shfl_xor_sync(0xffffffffu, values[i], offset);
    combine<kMaxMask>(values, other);
  }
  if constexpr (kGroup > kWarpSize) {
    constexpr int kWarps = kGroup / kWarpSize;
    const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
    if (threadIdx.x % kWarpSize == 0) {
#pragma unroll
      for (int i = 0; i < N; ++i) scratch[i * kWarps + warp] = values[i];
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < N; ++i) values[i] = scratch[i * kWarps];
#pragma unroll
    for (int w = 1; w < kWarps; ++w) {
      float other[N];
#pragma unroll
      for (int i = 0; i < N; ++i) other[i] = scratch[i * kWarps + w];
      combine<kMaxMask>(values, other);
    }
  }
}

// Rows of the forward kernels go to groups of kThreadsPerRow threads; several
// rows share a block only when a row is one warp, whose reductions need no
// __syncthreads (rows of a block may then finish at different times).
template <int kThreadsPerRow_, int kRowsPerBlock_>
struct RowGroup {
  static constexpr int kThreadsPerRow = kThreadsPerRow_;
  static constexpr int kRowsPerBlock = kRowsPerBlock_;
  static constexpr int kThreads = kThreadsPerRow * kRowsPerBlock;
  static constexpr int kWarpsPerRow = kThreadsPerRow / kWarpSize;
  static_assert(kThreadsPerRow % kWarpSize == 0, "a row group is whole warps");
  static_assert(kRowsPerBlock == 1 || kThreadsPerRow == kWarpSize,
                "rows share a block only when each row is one warp");
};

// Row log-sum-exp pass 2 and its reduction: sum(exp(z - row_max)) over the row.
template <typename Group, int kVec, typename T>
__device__ __forceinline__ float row_sum_exp(const T* __restrict__ z, int64_t num_columns,
                                             int64_t head, int lane, float row_max,
                                             float* scratch) {
  float sum_exp[1] = {0.0f};
  for_each_row_column<kVec>(num_columns, head, true, lane, Group::kThreadsPerRow,
                            [&](int64_t c0, auto width) {
                              constexpr int N = decltype(width)::value;
                              const Pack<T, N> zs = load_pack<N>(z + c0);
#pragma unroll
                              for (int j = 0; j < N; ++j) sum_exp[0] += ::expf(to_float(zs.v[j]) - row_max);
                            });
  group_allreduce<Group::kThreadsPerRow, 0u>(sum_exp, scratch);
  return sum_exp[0];
}

// ---------------------------------------------------------------------------
// Mixup cross-entropy.

template <typename T, typename Group>
__global__ void __launch_bounds__(Group::kThreads, min_blocks_per_sm(Group::kThreads))
    mixup_ce_forward_kernel(const MixupCeForwardArgs args) {
  constexpr int kVec = kVectorBytes / sizeof(T);
  // [0]: pass 1 (max, sum), [1]: pass 2 (sum of exp); see group_allreduce.
  __shared__ float scratch[2][2 * Group::kWarpsPerRow];

  const T* __restrict__ logits = static_cast<const T*>(args.logits);
  const int64_t num_columns = args.num_classes;
  const int lane = static_cast<int>(threadIdx.x) % Group::kThreadsPerRow;
  const int64_t row_step = static_cast<int64_t>(gridDim.x) * Group::kRowsPerBlock;

  for (int64_t row = static_cast<int64_t>(blockIdx.x) * Group::kRowsPerBlock +
                     threadIdx.x / Group::kThreadsPerRow;
       row < args.batch; row += row_step) {
    const T* __restrict__ z = logits + row * args.logits_row_stride;

    // Lane 0 gathers the labels' logits first, so their latency overlaps the
    // row passes. A label outside [0, C) (unchecked on the GPU, where checking
    // would need a host sync) gives a NaN loss rather than a stray read.
    float z_a = 0.0f, z_b = 0.0f, lam = 0.0f;
    if (lane == 0) {
      const int64_t y_a = __ldg(args.y_a + row), y_b = __ldg(args.y_b + row);
      lam = __ldg(args.lam + row);
      z_a = (y_a >= 0 && y_a < num_columns) ? to_float(load_pack<1>(z + y_a).v[0]) : CUDART_NAN_F;
      z_b = (y_b >= 0 && y_b < num_columns) ? to_float(load_pack<1>(z + y_b).v[0]) : CUDART_NAN_F;
    }

    const int64_t head = elements_to_alignment<kVectorBytes>(z);
    float stats[2] = {-HUGE_VALF, 0.0f};  // max(z), sum(z)
    for_each_row_column<kVec>(num_columns, head, true, lane, Group::kThreadsPerRow,
                              [&](int64_t c0, auto width) {
                                constexpr int N = decltype(width)::value;
                                const Pack<T, N> zs = load_pack<N>(z + c0);
#pragma unroll
                                for (int j = 0; j < N; ++j) {
                                  const float zj = to_float(zs.v[j]);
                                  stats[0] = nan_propagating_max(stats[0], zj);
                                  stats[1] += zj;
                                }
                              });
    group_allreduce<Group::kThreadsPerRow, 0b01u>(stats, scratch[0]);
    const float row_max = stats[0];
    const float sum_exp = row_sum_exp<Group, kVec>(z, num_columns, head, lane, row_max, scratch[1]);

    if (lane == 0) {
      // An all -inf row has row_max = -inf and sum_exp = NaN; lse_from_max_sum
      // turns that into lse = -inf, as torch.logsumexp does.
      const float lse = lse_from_max_sum(row_max, sum_exp);
      args.lse[row] = lse;
      args.loss[row] = mixup_ce_row_loss(lse, z_a, z_b, stats[1], lam, args.label_smoothing,
                                         num_columns);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kBackwardThreads, min_blocks_per_sm(kBackwardThreads))
    mixup_ce_backward_kernel(const MixupCeBackwardArgs args, const float inv_num_classes) {
  constexpr int kVec = kVectorBytes / sizeof(T);
  const T* __restrict__ logits = static_cast<const T*>(args.logits);
  T* __restrict__ grad_logits = static_cast<T*>(args.grad_logits);
  const int64_t num_columns = args.num_classes;
  const int64_t lane = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t num_lanes = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t row_step = static_cast<int64_t>(gridDim.y) * blockDim.y;

  for (int64_t row = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y;
       row < args.batch; row += row_step) {
    const T* __restrict__ z = logits + row * args.logits_row_stride;
    T* __restrict__ grad = grad_logits + row * num_columns;
    const float grad_loss = __ldg(args.grad_loss + row);
    const float lse = __ldg(args.lse + row);
    const float lam = __ldg(args.lam + row);
    const int64_t y_a = __ldg(args.y_a + row), y_b = __ldg(args.y_b + row);
    const float smoothing = args.label_smoothing;

    // Vectors are aligned to the output row; the input row joins in when it
    // has the same misalignment (always so for contiguous logits).
    const int64_t head = elements_to_alignment<kVectorBytes>(grad);
    const bool vectorized = is_aligned<kVectorBytes>(z + head);
    for_each_row_column<kVec>(num_columns, head, vectorized, lane, num_lanes,
                              [&](int64_t c0, auto width) {
                                constexpr int N = decltype(width)::value;
                                const Pack<T, N> zs = load_pack<N>(z + c0);
                                Pack<T, N> out;
#pragma unroll
                                for (int j = 0; j < N; ++j) {
                                  const float target = mixup_ce_target(c0 + j, y_a, y_b, lam, smoothing,
                                                                       inv_num_classes);
                                  out.v[j] = from_float<T>(
                                      cross_entropy_grad(to_float(zs.v[j]), lse, grad_loss, 1.0f, target));
                                }
                                store_pack<N>(grad + c0, out);
                              });
  }
}

// ---------------------------------------------------------------------------
// Soft-target cross-entropy. T: logits' storage, TT: target's storage.

// Columns per vector access: 16 bytes of the wider of the two types.
template <typename T, typename TT>
constexpr int kSoftTargetVec =
    static_cast<int>(kVectorBytes / (sizeof(T) > sizeof(TT) ? sizeof(T) : sizeof(TT)));

template <typename T, typename TT, typename Group>
__global__ void __launch_bounds__(Group::kThreads, min_blocks_per_sm(Group::kThreads))
    soft_target_ce_forward_kernel(const SoftTargetCeForwardArgs args) {
  constexpr int kVec = kSoftTargetVec<T, TT>;
  // [0]: pass 1 (max, sum t, sum t*z), [1]: pass 2 (sum of exp).
  __shared__ float scratch[2][3 * Group::kWarpsPerRow];

  const T* __restrict__ logits = static_cast<const T*>(args.logits);
  const TT* __restrict__ target = static_cast<const TT*>(args.target);
  const int64_t num_columns = args.num_classes;
  const int lane = static_cast<int>(threadIdx.x) % Group::kThreadsPerRow;
  const int64_t row_step = static_cast<int64_t>(gridDim.x) * Group::kRowsPerBlock;

  for (int64_t row = static_cast<int64_t>(blockIdx.x) * Group::kRowsPerBlock +
                     threadIdx.x / Group::kThreadsPerRow;
       row < args.batch; row += row_step) {
    const T* __restrict__ z = logits + row * args.logits_row_stride;
    const TT* __restrict__ t = target + row * args.target_row_stride;

    const int64_t head = elements_to_alignment<kVec * sizeof(T)>(z);
    const bool vectorized = is_aligned<kVec * sizeof(TT)>(t + head);
    float stats[3] = {-HUGE_VALF, 0.0f, 0.0f};  // max(z), sum(t), sum(t * z)
    for_each_row_column<kVec>(num_columns, head, vectorized, lane, Group::kThreadsPerRow,
                              [&](int64_t c0, auto width) {
                                constexpr int N = decltype(width)::value;
                                const Pack<T, N> zs = load_pack<N>(z + c0);
                                const Pack<TT, N> ts = load_pack<N>(t + c0);
#pragma unroll
                                for (int j = 0; j < N; ++j) {
                                  const float zj = to_float(zs.v[j]);
                                  const float tj = to_float(ts.v[j]);
                                  stats[0] = nan_propagating_max(stats[0], zj);
                                  stats[1] += tj;
                                  stats[2] += tj * zj;
                                }
                              });
    group_allreduce<Group::kThreadsPerRow, 0b001u>(stats, scratch[0]);
    const float row_max = stats[0];
    // Pass 2 reads logits only, so its vectors need only logits' alignment.
    const int64_t z_head = elements_to_alignment<kVectorBytes>(z);
    const float sum_exp = row_sum_exp<Group, kVectorBytes / sizeof(T)>(
        z, num_columns, z_head, lane, row_max, scratch[1]);

    if (lane == 0) {
      const float lse = lse_from_max_sum(row_max, sum_exp);
      args.lse[row] = lse;
      args.target_sum[row] = stats[1];
      args.loss[row] = soft_target_row_loss(lse, stats[1], stats[2]);
    }
  }
}

template <typename T, typename TT, bool kTargetGrad>
__global__ void __launch_bounds__(kBackwardThreads, min_blocks_per_sm(kBackwardThreads))
    soft_target_ce_backward_kernel(const SoftTargetCeBackwardArgs args) {
  constexpr int kVec = kSoftTargetVec<T, TT>;
  const T* __restrict__ logits = static_cast<const T*>(args.logits);
  const TT* __restrict__ target = static_cast<const TT*>(args.target);
  T* __restrict__ grad_logits = static_cast<T*>(args.grad_logits);
  TT* __restrict__ grad_target = static_cast<TT*>(args.grad_target);
  const int64_t num_columns = args.num_classes;
  const int64_t lane = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t num_lanes = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t row_step = static_cast<int64_t>(gridDim.y) * blockDim.y;

  for (int64_t row = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y;
       row < args.batch; row += row_step) {
    const T* __restrict__ z = logits + row * args.logits_row_stride;
    const TT* __restrict__ t = target + row * args.target_row_stride;
    T* __restrict__ gz = grad_logits + row * num_columns;
    TT* __restrict__ gt = kTargetGrad ? grad_target + row * num_columns : nullptr;
    const float grad_loss = __ldg(args.grad_loss + row);
    const float lse = __ldg(args.lse + row);
    const float target_sum = __ldg(args.target_sum + row);

    const int64_t head = elements_to_alignment<kVec * sizeof(T)>(gz);
    bool vectorized = is_aligned<kVec * sizeof(T)>(z + head) && is_aligned<kVec * sizeof(TT)>(t + head);
    if constexpr (kTargetGrad) vectorized = vectorized && is_aligned<kVec * sizeof(TT)>(gt + head);
    for_each_row_column<kVec>(
        num_columns, head, vectorized, lane, num_lanes, [&](int64_t c0, auto width) {
          constexpr int N = decltype(width)::value;
          const Pack<T, N> zs = load_pack<N>(z + c0);
          const Pack<TT, N> ts = load_pack<N>(t + c0);
          Pack<T, N> gzs;
          Pack<TT, N> gts;
#pragma unroll
          for (int j = 0; j < N; ++j) {
            const float zj = to_float(zs.v[j]);
            gzs.v[j] = from_float<T>(cross_entropy_grad(zj, lse, grad_loss, target_sum, to_float(ts.v[j])));
            if constexpr (kTargetGrad) gts.v[j] = from_float<TT>(soft_target_grad_target(zj, lse, grad_loss));
          }
          store_pack<N>(gz + c0, gzs);
          if constexpr (kTargetGrad) store_pack<N>(gt + c0, gts);
        });
  }
}

// ---------------------------------------------------------------------------
// Launch configuration and dtype pairs (host).

// (logits, target) storage pairs the soft-target ops accept: target is fp32 or
// logits' dtype (checks.h rejects the rest before any launch).
template <typename F>
cudaError_t dispatch_dtype_pair(DType logits_dtype, DType target_dtype, F&& f) {
  return dispatch_dtype(logits_dtype, [&](auto logits_tag) -> cudaError_t {
    using T = typename decltype(logits_tag)::type;
    if (target_dtype == DType::kFloat32) return f(logits_tag, TypeTag<float>{});
    if (target_dtype == logits_dtype) return f(logits_tag, TypeTag<T>{});
    return cudaErrorInvalidValue;
  });
}

// Threads per row of the forward kernels, by row length: about 8-128 columns
// per thread, so that short rows do not leave most of a block idle and long
// rows have enough threads in flight per row when the batch is small.
template <typename F>
cudaError_t with_row_group(int64_t num_columns, F&& f) {
  if (num_columns <= 1024) return f(RowGroup<32, 4>{});
  if (num_columns <= 4096) return f(RowGroup<128, 1>{});
  if (num_columns <= 16384) return f(RowGroup<256, 1>{});
  if (num_columns <= 65536) return f(RowGroup<512, 1>{});
  return f(RowGroup<1024, 1>{});
}

template <typename Group>
dim3 forward_grid(int64_t batch) {
  const int64_t blocks = ceil_div(batch, Group::kRowsPerBlock);
  return dim3(static_cast<unsigned>(blocks < kMaxGridX ? blocks : kMaxGridX));
}


bool empty_problem(int64_t batch, int64_t num_columns) { return batch <= 0 || num_columns <= 0; }

}  // namespace

cudaError_t mixup_ce_forward(const MixupCeForwardArgs& args, cudaStream_t stream) {
  if (empty_problem(args.batch, args.num_classes)) return cudaSuccess;
  return dispatch_dtype(args.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return with_row_group(args.num_classes, [&](auto group) {
      using Group = decltype(group);
      mixup_ce_forward_kernel<T, Group>
          <<<forward_grid<Group>(args.batch), Group::kThreads, 0, stream>>>(args);
      return cudaGetLastError();
    });
  });
}

cudaError_t mixup_ce_backward(const MixupCeBackwardArgs& args, int num_sms, cudaStream_t stream) {
  if (empty_problem(args.batch, args.num_classes)) return cudaSuccess;
  return dispatch_dtype(args.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const launch::LaunchConfig config = launch::elementwise_config(args.batch, args.num_classes, kVectorBytes / sizeof(T),
                                                                   num_sms, kBackwardThreads);
    // 1/C is divided on the host: the same correctly rounded float as on the
    // device, without the device division's slow-path subroutine call.
    const float inv_num_classes = 1.0f / static_cast<float>(args.num_classes);
    mixup_ce_backward_kernel<T><<<config.grid, config.block, 0, stream>>>(args, inv_num_classes);
    return cudaGetLastError();
  });
}

cudaError_t soft_target_ce_forward(const SoftTargetCeForwardArgs& args, cudaStream_t stream) {
  if (empty_problem(args.batch, args.num_classes)) return cudaSuccess;
  return dispatch_dtype_pair(args.logits_dtype, args.target_dtype, [&](auto logits_tag, auto target_tag) {
    using T = typename decltype(logits_tag)::type;
    using TT = typename decltype(target_tag)::type;
    return with_row_group(args.num_classes, [&](auto group) {
      using Group = decltype(group);
      soft_target_ce_forward_kernel<T, TT, Group>
          <<<forward_grid<Group>(args.batch), Group::kThreads, 0, stream>>>(args);
      return cudaGetLastError();
    });
  });
}

cudaError_t soft_target_ce_backward(const SoftTargetCeBackwardArgs& args, int num_sms,
                                    cudaStream_t stream) {
  if (empty_problem(args.batch, args.num_classes)) return cudaSuccess;
  return dispatch_dtype_pair(args.logits_dtype, args.target_dtype, [&](auto logits_tag, auto target_tag) {
    using T = typename decltype(logits_tag)::type;
    using TT = typename decltype(target_tag)::type;
    const launch::LaunchConfig config = launch::elementwise_config(args.batch, args.num_classes, kSoftTargetVec<T, TT>,
                                                                   num_sms, kBackwardThreads);
    if (args.grad_target != nullptr) {
      soft_target_ce_backward_kernel<T, TT, true><<<config.grid, config.block, 0, stream>>>(args);
    } else {
      soft_target_ce_backward_kernel<T, TT, false><<<config.grid, config.block, 0, stream>>>(args);
    }
    return cudaGetLastError();
  });
}

}  // namespace mixkernels::gpu
