// The column strips of the in-place mixing kernels (mix_rows_, mix_images_;
// torch-free): each block owns a strip of columns of ALL rows, copies it into
// shared memory, waits, then writes the mixed strip back, so no value is
// overwritten before every block that needs it has read it, for any
// permutation (cycles included), without a temporary batch.
//
// A strip is 2^k 16-byte slots per row: the widest that keeps B * strip
// within kStripSharedBudget of shared memory while leaving at least 2 strips
// per SM. B > 2048 takes one slot per row and B * 16 bytes, opting in beyond
// 48 KiB; beyond the device's opt-in shared memory per block there is no plan
// (the caller mixes into a temporary batch). Rows whose starts differ in
// 16-byte misalignment move slot by slot element-wise.
#pragma once

#include <cstdint>

#include <cuda_pipeline.h>
#include <cuda_runtime.h>

#include "dtype_dispatch.cuh"
#include "launch_config.cuh"
#include "vec_io.cuh"

namespace mixkernels::gpu {

// Shared memory a strip aims for: small enough for several resident blocks
// per SM (so one block's loads overlap another's stores), large enough for
// strips of 128+ bytes per row at B = 64.
constexpr int64_t kStripSharedBudget = 32 * 1024;
// Dynamic shared memory a launch may use without opting in.
constexpr int64_t kDefaultSharedLimit = 48 * 1024;

struct StripPlan {
  int64_t num_strips;
  int64_t misalignment;     // elements row starts lie past a 16-byte boundary (0 if !vectorized)
  int log2_strip_vectors;   // a strip is 2^log2 slots of 16 bytes per row
  bool vectorized;          // every row has the same 16-byte misalignment
  int shared_bytes;         // B << log2_strip_vectors slots of 16 bytes
};

// The strip plan for `rows` rows of `columns` elements of `dtype`, row r
// starting at element r * row_stride of x; false when one 16-byte slot per
// row does not fit the device's shared memory (`max_shared_bytes`, its opt-in
// limit per block).
inline bool plan_strips(DType dtype, const void* x, int64_t rows, int64_t row_stride, int64_t columns,
                        int max_shared_bytes, int num_sms, StripPlan* plan) {
  const int64_t elem = element_size(dtype);
  const int64_t vec = kVectorBytes / elem;
  const int64_t slot_row_bytes = rows * kVectorBytes;  // one slot for every row
  const int64_t shared_limit =
      max_shared_bytes > kDefaultSharedLimit ? max_shared_bytes : kDefaultSharedLimit;
  if (slot_row_bytes > shared_limit) return false;

  plan->vectorized = rows == 1 || (row_stride * elem) % kVectorBytes == 0;
  const int64_t head = elements_to_alignment(static_cast<const char*>(x)) / elem;
  plan->misalignment = plan->vectorized && head > 0 ? vec - head : 0;
  const int64_t vectors_per_row = launch::ceil_div(columns + plan->misalignment, vec);

  // Widest power-of-two strip within the budget that still leaves 2 strips
  // per SM (short rows: as many strips as vectors).
  const int64_t min_strips = 2 * static_cast<int64_t>(num_sms > 0 ? num_sms : 1);
  int log2_vectors = 0;
  while ((slot_row_bytes << (log2_vectors + 1)) <= kStripSharedBudget &&
         (int64_t{1} << log2_vectors) < vectors_per_row &&
         launch::ceil_div(vectors_per_row, int64_t{2} << log2_vectors) >= min_strips) {
    ++log2_vectors;
  }
  plan->log2_strip_vectors = log2_vectors;
  plan->num_strips = launch::ceil_div(vectors_per_row, int64_t{1} << log2_vectors);
  plan->shared_bytes = static_cast<int>(slot_row_bytes << log2_vectors);
  return true;
}

// Lets `kernel` launch with `shared_bytes` of dynamic shared memory (an
// opt-in beyond the default 48 KiB).
template <typename Kernel>
cudaError_t allow_strip_shared_memory(Kernel* kernel, int shared_bytes) {
  if (shared_bytes <= kDefaultSharedLimit) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, shared_bytes);
}

// Copies the strip starting at column `strip_begin` of every row into `tile`
// ([rows][2^log2_strip_vectors] slots, `num_slots` in all), the block's
// threads sharing the slots, and returns once the whole block sees it. Slot
// (r, j) holds columns c0 .. c0+V-1 of row r, c0 = strip_begin + j * V, in
// vectorized mode an aligned column; slots that reach outside [0, columns)
// (the row's head and tail) are filled element by element, zeros outside.
template <typename T>
__device__ __forceinline__ void load_strip(Words* tile, const T* x, int64_t row_stride, int64_t columns,
                                           int64_t strip_begin, int num_slots, const StripPlan& plan) {
  constexpr int V = kVec<T>;
  const int log2_vectors = plan.log2_strip_vectors;
  const int strip_mask = (1 << log2_vectors) - 1;
  for (int slot = threadIdx.x; slot < num_slots; slot += blockDim.x) {
    const int64_t row = slot >> log2_vectors;
    const int64_t c0 = strip_begin + static_cast<int64_t>(slot & strip_mask) * V;
    const T* row_ptr = x + row * row_stride;
    if (plan.vectorized && c0 >= 0 && c0 + V <= columns) {
      __pipeline_memcpy_async(&tile[slot], row_ptr + c0, kVectorBytes);
    } else {
      Words values{{0u, 0u, 0u, 0u}};
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const int64_t c = c0 + k;
        if (c >= 0 && c < columns) {
          put_element_bits<T>(values, k, *reinterpret_cast<const typename Storage<T>::Bits*>(row_ptr + c));
        }
      }
      tile[slot] = values;
    }
  }
  __pipeline_commit();
  __pipeline_wait_prior(0);
  __syncthreads();
}

}  // namespace mixkernels::gpu
