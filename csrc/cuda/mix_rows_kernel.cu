// CUDA kernels of the row-mixing ops: mix_rows (out of place), mix_rows_
// (in place) and mix_rows_dots (the per-row dots of its backward).
//
// This file includes no torch header (it compiles in seconds); the per-element
// math is mixkernels/mix_math.h's mix_element, which the CPU kernels use too.
//
// Every kernel is memory-bound, so the work is in the access pattern:
// 16-byte loads and stores where the rows' alignment allows it (a row is split
// into a scalar head up to the first aligned column, an aligned vector body
// and a scalar tail, so any row stride and column offset works), and int64
// index arithmetic throughout (B * N passes 2^31 for large image batches).
//
// mix_rows: elementwise over the (B, N) output on a 2-D grid, columns on x
//   and rows on y (grid.y capped at 65535, rows beyond it by a grid-stride
//   loop). Blocks of 256 threads = threads_x * threads_y, threads_x the power
//   of two covering a row's vectors (at most 256); each thread takes up to 4
//   vectors of a row once the grid has 8 blocks per SM without that.
//   Vectorised when the output row and both input rows have the same
//   misalignment (always so for a contiguous x), scalar otherwise.
//
// mix_rows_ (in place): a naive in-place gather would read partner rows that
//   were already overwritten (any cycle of src longer than 1). Instead each
//   block owns a strip of columns for ALL B rows: it copies x[:, strip] into
//   shared memory (cp.async, 16 bytes a slot), waits, then writes the mixed
//   strip back, reading both operands from shared memory. No other block
//   touches those columns, so nothing is overwritten before it is read and no
//   temporary batch is needed. A strip is 2^k 16-byte vectors per row:
//   the widest that keeps B * strip within 32 KiB of shared memory while
//   leaving at least 2 strips per SM. When even one vector per row does not
//   fit the budget (B > 2048) the strip is one vector per row and the block
//   takes B * 16 bytes, opting in to more than 48 KiB where needed. When even
//   that does not fit (B * 16 bytes beyond the device's opt-in shared memory
//   per block: B > ~14.5k on H100, ~10.4k on A100), the GPU in-place path uses a
//   temporary batch: mix_rows into the caller's workspace, then a 2-D
//   device-to-device copy back into x. Rows whose starts differ in 16-byte
//   misalignment (an odd row stride) move slot by slot element-wise.
//
// mix_rows_dots: [i, 0] = <grad_i, x_i>, [i, 1] = <grad_i, x_src[i]>, fp32
//   accumulation, deterministic without atomics. Rule: S = min(ceil(1024 / B),
//   ceil(N / 8192), 1024) column splits per row, computed from (B, N) only so
//   the summation order is the same on every GPU. S = 1: one group of threads
//   per row (a warp for N <= 1024, 8 rows to a block; a 256-thread block
//   otherwise) reduces the row and writes the result. S > 1: a 256-thread
//   block per (row, split) writes a partial pair to a (B, S, 2) workspace
//   and a second kernel (a warp per row) sums the S partials in a fixed
//   order. Every reduction is a fixed-order tree (warp butterflies, then
//   per-warp slots read back in warp order).
#include <cstdint>

#include <cuda_runtime.h>
#include <math_constants.h>

#include "dtype_dispatch.cuh"
#include "launch_config.cuh"
#include "mixkernels/mix_math.h"
#include "strip_plan.cuh"
#include "vec_io.cuh"

#include "mix_rows_kernel.h"

namespace mixkernels::gpu {
namespace {

using launch::capped;
using launch::ceil_div;
using launch::kMaxGridX;
using launch::kMaxGridY;
using launch::kMinBlocksPerSm;
using launch::kThreads;
using launch::kWarpSize;

// Split rule of mix_rows_dots (see the file header).
constexpr int64_t kDotsTargetBlocks = 1024;
constexpr int64_t kDotsMinSplitColumns = 8192;
constexpr int64_t kDotsMaxSplits = 1024;
constexpr int64_t kDotsWarpRowMaxColumns = 1024;
// Vectors in flight per thread: mix_rows loads 2 and mix_rows_dots 3 per
// vector, and 4 (resp. 2) of them fit in 64 registers without spills.
constexpr int kMixUnroll = 4;
constexpr int kDotsUnroll = 2;

// Partner row of `row` and its weights. An index outside [0, B) (src is not
// validated on the GPU) makes the row NaN: the partner becomes the row itself
// and its weight NaN, so nothing is read out of bounds.
struct Partner {
  int64_t row;
  float w_self;
  float w_src;
};

__device__ __forceinline__ Partner partner_of(const MixRowsArgs& args, int64_t row) {
  const int64_t src = __ldg(args.src + row);
  const bool valid = src >= 0 && src < args.batch;
  return Partner{valid ? src : row, __ldg(args.w_self + row),
                 valid ? __ldg(args.w_src + row) : CUDART_NAN_F};
}

// ---------------------------------------------------------------------------
// mix_rows: out-of-place, elementwise on a 2-D grid.

template <typename T>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    mix_rows_kernel(const MixRowsArgs args, T* __restrict__ out) {
  constexpr int V = kVec<T>;
  const T* __restrict__ x = static_cast<const T*>(args.x);
  const int64_t num_columns = args.num_columns;
  const int64_t lane = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t num_lanes = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t row_step = static_cast<int64_t>(gridDim.y) * blockDim.y;

  for (int64_t row = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; row < args.batch;
       row += row_step) {
    const Partner partner = partner_of(args, row);
    const T* __restrict__ own_row = x + row * args.x_row_stride;
    const T* __restrict__ partner_row = x + partner.row * args.x_row_stride;
    T* __restrict__ out_row = out + row * num_columns;

    // Vectors are aligned to the output row; the input rows join in when they
    // have the same misalignment (always so for a contiguous x).
    const int64_t head = elements_to_alignment(out_row);
    const bool vectorized = is_aligned(own_row + head) && is_aligned(partner_row + head);
    for_each_column<V, kMixUnroll>(0, num_columns, head, vectorized, lane, num_lanes, [&](int64_t c0, auto width) {
      if constexpr (decltype(width)::value == 1) {
        store(out_row + c0, mix_element(load_readonly(own_row + c0), load_readonly(partner_row + c0),
                                        partner.w_self, partner.w_src));
      } else {
        const Words own = load_words_readonly(own_row + c0);
        const Words other = load_words_readonly(partner_row + c0);
        Words mixed{{0u, 0u, 0u, 0u}};
#pragma unroll
        for (int k = 0; k < V; ++k) {
          pack<T>(mixed, k, mix_element(unpack<T>(own, k), unpack<T>(other, k), partner.w_self,
                                        partner.w_src));
        }
        store_words(out_row + c0, mixed);
      }
    });
  }
}

// ---------------------------------------------------------------------------
// mix_rows_: in place, one strip of columns of all rows per block.

// Slot (r, j) of strip s holds columns c0 .. c0+V-1 of row r, with
// c0 = s * strip_columns - misalignment + j * V; in vectorized mode every c0
// is an aligned column. Slots that reach outside [0, N) are filled and
// written element by element (the row's head and tail).
template <typename T>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    mix_rows_inplace_kernel(const MixRowsArgs args, T* __restrict__ x, const StripPlan plan) {
  constexpr int V = kVec<T>;
  extern __shared__ Words tile[];  // [B][2^log2_strip_vectors]

  const int64_t num_columns = args.num_columns;
  const int log2_vectors = plan.log2_strip_vectors;
  const int strip_mask = (1 << log2_vectors) - 1;
  // The plan keeps B * strip within the launch's shared memory (< 2^31 bytes).
  const int num_slots = static_cast<int>(args.batch) << log2_vectors;
  const int64_t strip_columns = static_cast<int64_t>(V) << log2_vectors;

  for (int64_t strip = blockIdx.x; strip < plan.num_strips; strip += gridDim.x) {
    const int64_t strip_begin = strip * strip_columns - plan.misalignment;

    load_strip(tile, x, args.x_row_stride, num_columns, strip_begin, num_slots, plan);

    // Write the mixed strip back; both operands come from the tile.
    for (int slot = threadIdx.x; slot < num_slots; slot += blockDim.x) {
      const int64_t row = slot >> log2_vectors;
      const int j = slot & strip_mask;
      const int64_t c0 = strip_begin + static_cast<int64_t>(j) * V;
      const Partner partner = partner_of(args, row);
      const Words own = tile[slot];
      const Words other = tile[(static_cast<int>(partner.row) << log2_vectors) | j];
      Words mixed{{0u, 0u, 0u, 0u}};
      float values[V];
#pragma unroll
      for (int k = 0; k < V; ++k) {
        values[k] = mix_element(unpack<T>(own, k), unpack<T>(other, k), partner.w_self,
                                partner.w_src);
        pack<T>(mixed, k, values[k]);
      }
      T* row_ptr = x + row * args.x_row_stride;
      if (plan.vectorized && c0 >= 0 && c0 + V <= num_columns) {
        store_words(row_ptr + c0, mixed);
      } else {
#pragma unroll
        for (int k = 0; k < V; ++k) {
          const int64_t c = c0 + k;
          if (c >= 0 && c < num_columns) store(row_ptr + c, values[k]);
        }
      }
    }
    // The next strip (if this block has one) overwrites the tile.
    __syncthreads();
  }
}

// ---------------------------------------------------------------------------
// mix_rows_dots.

// Sum over the kGroup threads of a row (a warp, or the whole block when
// kGroup > 32) in a fixed order; the result is valid in the group's lane 0.
// `scratch` holds kGroup / 32 floats per value.
template <int kGroup, int N>
__device__ __forceinline__ void group_sum(float (&values)[N], float* scratch) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
#pragma unroll
    for (int i = 0; i < N; ++i) values[i] += __shfl_xor_sync(0xffffffffu, values[i], offset);
  }
  if constexpr (kGroup > kWarpSize) {
    constexpr int kWarps = kGroup / kWarpSize;
    const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
    if (threadIdx.x % kWarpSize == 0) {
#pragma unroll
      for (int i = 0; i < N; ++i) scratch[i * kWarps + warp] = values[i];
    }
    __syncthreads();
    if (threadIdx.x == 0) {
#pragma unroll
      for (int i = 0; i < N; ++i) {
        values[i] = scratch[i * kWarps];
#pragma unroll
        for (int w = 1; w < kWarps; ++w) values[i] += scratch[i * kWarps + w];
      }
    }
    // Callers reduce again (the next row) into the same scratch.
    __syncthreads();
  }
}

// grid: (splits, row groups). Each group of kRowThreads threads reduces the
// columns of split blockIdx.x of its rows; split s covers the columns
// [s * split_columns - misalignment, (s + 1) * split_columns - misalignment),
// split_columns a multiple of V, so splits start on aligned columns. With one
// split the pair goes straight to args.out, else to sums[(row * S + s) * 2].
template <typename T, int kRowThreads>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    mix_rows_dots_kernel(const MixRowsDotsArgs args, const int64_t split_columns,
                         float* __restrict__ sums) {
  constexpr int V = kVec<T>;
  constexpr int kRowsPerBlock = kThreads / kRowThreads;
  static_assert(kRowThreads == kWarpSize || kRowsPerBlock == 1,
                "rows share a block only when each row is one warp");
  __shared__ float scratch[2 * (kRowThreads / kWarpSize)];

  const T* __restrict__ grad = static_cast<const T*>(args.grad);
  const T* __restrict__ x = static_cast<const T*>(args.x);
  const int64_t num_columns = args.num_columns;
  const int64_t split = blockIdx.x;
  const int64_t num_splits = gridDim.x;
  const int lane = static_cast<int>(threadIdx.x) % kRowThreads;
  const int64_t row_step = static_cast<int64_t>(gridDim.y) * kRowsPerBlock;

  for (int64_t row = static_cast<int64_t>(blockIdx.y) * kRowsPerBlock + threadIdx.x / kRowThreads;
       row < args.batch; row += row_step) {
    const int64_t src = __ldg(args.src + row);
    const bool valid = src >= 0 && src < args.batch;
    const T* __restrict__ grad_row = grad + row * args.grad_row_stride;
    const T* __restrict__ own_row = x + row * args.x_row_stride;
    const T* __restrict__ partner_row = x + (valid ? src : row) * args.x_row_stride;

    const int64_t head = elements_to_alignment(grad_row);
    const bool vectorized = is_aligned(own_row + head) && is_aligned(partner_row + head);
    const int64_t misalignment = vectorized && head > 0 ? V - head : 0;
    const int64_t chunk_begin = split * split_columns - misalignment;
    const int64_t begin = chunk_begin > 0 ? chunk_begin : 0;
    const int64_t end = chunk_begin + split_columns < num_columns ? chunk_begin + split_columns
                                                                  : num_columns;

    float dots[2] = {0.0f, 0.0f};  // <grad, own>, <grad, partner>
    for_each_column<V, kDotsUnroll>(begin, end, head, vectorized, lane, kRowThreads, [&](int64_t c0, auto width) {
      if constexpr (decltype(width)::value == 1) {
        const float g = load_readonly(grad_row + c0);
        dots[0] = fmaf(g, load_readonly(own_row + c0), dots[0]);
        dots[1] = fmaf(g, load_readonly(partner_row + c0), dots[1]);
      } else {
        const Words g = load_words_readonly(grad_row + c0);
        const Words own = load_words_readonly(own_row + c0);
        const Words other = load_words_readonly(partner_row + c0);
#pragma unroll
        for (int k = 0; k < V; ++k) {
          const float gk = unpack<T>(g, k);
          dots[0] = fmaf(gk, unpack<T>(own, k), dots[0]);
          dots[1] = fmaf(gk, unpack<T>(other, k), dots[1]);
        }
      }
    });
    group_sum<kRowThreads>(dots, scratch);
    if (lane == 0) {
      if (!valid) dots[1] = CUDART_NAN_F;
      float* target = num_splits == 1 ? args.out + row * 2 : sums + (row * num_splits + split) * 2;
      target[0] = dots[0];
      target[1] = dots[1];
    }
  }
}

// Sums the (B, S, 2) partials of mix_rows_dots_kernel into args.out: a warp
// per row, lane l taking splits l, l + 32, ... in order, then a butterfly.
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    mix_rows_dots_sum_kernel(const float* __restrict__ sums, const int64_t batch,
                             const int64_t num_splits, float* __restrict__ out) {
  constexpr int kRowsPerBlock = kThreads / kWarpSize;
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int64_t row_step = static_cast<int64_t>(gridDim.x) * kRowsPerBlock;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarpSize;
       row < batch; row += row_step) {
    const float* __restrict__ row_sums = sums + row * num_splits * 2;
    float dots[2] = {0.0f, 0.0f};
    for (int64_t s = lane; s < num_splits; s += kWarpSize) {
      const float2 pair = __ldg(reinterpret_cast<const float2*>(row_sums + s * 2));
      dots[0] += pair.x;
      dots[1] += pair.y;
    }
    group_sum<kWarpSize>(dots, nullptr);
    if (lane == 0) {
      out[row * 2] = dots[0];
      out[row * 2 + 1] = dots[1];
    }
  }
}

// ---------------------------------------------------------------------------
// Launch configuration (host).

// The in-place strip plan (strip_plan.cuh); false when one 16-byte slot per
// row does not fit the device's shared memory (then the caller needs a
// temporary batch).
bool plan_row_strips(const MixRowsArgs& args, int max_shared_bytes, int num_sms, StripPlan* plan) {
  return plan_strips(args.dtype, args.x, args.batch, args.x_row_stride, args.num_columns, max_shared_bytes, num_sms,
                     plan);
}

struct DotsPlan {
  int64_t num_splits;
  int64_t split_columns;  // a multiple of the vector width
  bool warp_per_row;
};

// Depends on (B, N, dtype) only, never on the device (see the file header).
DotsPlan plan_dots(int64_t batch, int64_t num_columns, DType dtype) {
  const int64_t vec = kVectorBytes / element_size(dtype);
  int64_t splits = ceil_div(kDotsTargetBlocks, batch);
  splits = capped(splits, ceil_div(num_columns, kDotsMinSplitColumns));
  splits = capped(splits, kDotsMaxSplits);
  if (splits < 1) splits = 1;
  // Room for a row's misalignment (< vec columns) ahead of column 0.
  const int64_t span = num_columns + vec - 1;
  DotsPlan plan;
  plan.split_columns = ceil_div(ceil_div(span, splits), vec) * vec;
  plan.num_splits = ceil_div(span, plan.split_columns);
  plan.warp_per_row = plan.num_splits == 1 && num_columns <= kDotsWarpRowMaxColumns;
  return plan;
}

bool empty_problem(int64_t batch, int64_t num_columns) { return batch <= 0 || num_columns <= 0; }

}  // namespace

cudaError_t mix_rows(const MixRowsArgs& args, void* out, int num_sms, cudaStream_t stream) {
  if (empty_problem(args.batch, args.num_columns)) return cudaSuccess;
  return dispatch_dtype(args.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const launch::LaunchConfig config = launch::elementwise_config(args.batch, args.num_columns, kVec<T>,
                                                                   num_sms, kThreads);
    mix_rows_kernel<T><<<config.grid, config.block, 0, stream>>>(args, static_cast<T*>(out));
    return cudaGetLastError();
  });
}

int64_t mix_rows_inplace_workspace_bytes(const MixRowsArgs& args, int max_shared_bytes) {
  if (empty_problem(args.batch, args.num_columns)) return 0;
  StripPlan plan;
  if (plan_row_strips(args, max_shared_bytes, 1, &plan)) return 0;
  return args.batch * args.num_columns * element_size(args.dtype);
}

cudaError_t mix_rows_inplace(void* x, const MixRowsArgs& args, void* workspace, int num_sms,
                             int max_shared_bytes, cudaStream_t stream) {
  if (empty_problem(args.batch, args.num_columns)) return cudaSuccess;
  if (x != args.x) return cudaErrorInvalidValue;
  StripPlan plan;
  if (!plan_row_strips(args, max_shared_bytes, num_sms, &plan)) {
    // The batch is too tall for a strip of every row in shared memory: mix
    // into the temporary batch, then copy it back row by row.
    if (workspace == nullptr) return cudaErrorInvalidValue;
    const cudaError_t status = mix_rows(args, workspace, num_sms, stream);
    if (status != cudaSuccess) return status;
    const size_t elem = static_cast<size_t>(element_size(args.dtype));
    const size_t row_bytes = static_cast<size_t>(args.num_columns) * elem;
    return cudaMemcpy2DAsync(x, static_cast<size_t>(args.x_row_stride) * elem, workspace,
                             row_bytes, row_bytes, static_cast<size_t>(args.batch),
                             cudaMemcpyDeviceToDevice, stream);
  }
  return dispatch_dtype(args.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const cudaError_t status = allow_strip_shared_memory(mix_rows_inplace_kernel<T>, plan.shared_bytes);
    if (status != cudaSuccess) return status;
    const dim3 grid(static_cast<unsigned>(capped(plan.num_strips, kMaxGridX)));
    mix_rows_inplace_kernel<T>
        <<<grid, kThreads, plan.shared_bytes, stream>>>(args, static_cast<T*>(x), plan);
    return cudaGetLastError();
  });
}

int64_t mix_rows_dots_workspace_bytes(const MixRowsDotsArgs& args) {
  if (empty_problem(args.batch, args.num_columns)) return 0;
  const DotsPlan plan = plan_dots(args.batch, args.num_columns, args.dtype);
  return plan.num_splits > 1 ? args.batch * plan.num_splits * 2 * static_cast<int64_t>(sizeof(float))
                             : 0;
}

cudaError_t mix_rows_dots(const MixRowsDotsArgs& args, float* workspace, cudaStream_t stream) {
  if (args.batch <= 0) return cudaSuccess;
  if (args.num_columns <= 0) {
    // Empty rows: every dot is 0.
    return cudaMemsetAsync(args.out, 0, static_cast<size_t>(args.batch) * 2 * sizeof(float), stream);
  }
  const DotsPlan plan = plan_dots(args.batch, args.num_columns, args.dtype);
  if (plan.num_splits > 1 && workspace == nullptr) return cudaErrorInvalidValue;
  return dispatch_dtype(args.dtype, [&](auto tag) -> cudaError_t {
    using T = typename decltype(tag)::type;
    if (plan.warp_per_row) {
      constexpr int kRowsPerBlock = kThreads / kWarpSize;
      const dim3 grid(1, static_cast<unsigned>(capped(ceil_div(args.batch, kRowsPerBlock), kMaxGridY)));
      mix_rows_dots_kernel<T, kWarpSize><<<grid, kThreads, 0, stream>>>(args, plan.split_columns,
                                                                         workspace);
      return cudaGetLastError();
    }
    const dim3 grid(static_cast<unsigned>(plan.num_splits),
                    static_cast<unsigned>(capped(args.batch, kMaxGridY)));
    mix_rows_dots_kernel<T, kThreads><<<grid, kThreads, 0, stream>>>(args, plan.split_columns,
                                                                      workspace);
    cudaError_t status = cudaGetLastError();
    if (status != cudaSuccess || plan.num_splits == 1) return status;
    constexpr int kRowsPerBlock = kThreads / kWarpSize;
    const dim3 sum_grid(static_cast<unsigned>(capped(ceil_div(args.batch, kRowsPerBlock), kMaxGridX)));
    mix_rows_dots_sum_kernel<<<sum_grid, kThreads, 0, stream>>>(workspace, args.batch,
                                                                plan.num_splits, args.out);
    return cudaGetLastError();
  });
}

}  // namespace mixkernels::gpu
