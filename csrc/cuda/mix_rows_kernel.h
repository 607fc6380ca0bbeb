// Launchers of the CUDA row-mixing kernels (csrc/cuda/mix_rows_kernel.cu):
// mix_rows, mix_rows_ (in place) and mix_rows_dots.
//
// Torch-free on purpose, like cross_entropy_kernel.h: the kernels compile in
// about a second without torch's headers, and the thin ATen wrappers live in
// mix_rows_cuda.cpp. Pointers are raw device pointers; row strides are in
// elements (columns have unit stride); every launcher enqueues on `stream`,
// never synchronises, and returns the first CUDA error it meets.
//
// `src` holds one partner row per row. It is not validated on the GPU (that
// would need a host synchronisation): an index outside [0, B) makes that
// row's results NaN, never a read out of bounds.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "storage_dtype.h"

namespace mixkernels::gpu {

struct MixRowsArgs {
  DType dtype;              // of x (and of the output)
  const void* x;            // (B, N), any row stride
  int64_t x_row_stride;     // elements
  const int64_t* src;       // (B,): row i is mixed with row src[i]
  const float* w_self;      // (B,)
  const float* w_src;       // (B,)
  int64_t batch;
  int64_t num_columns;
};

struct MixRowsDotsArgs {
  DType dtype;              // of grad and x
  const void* grad;         // (B, N), any row stride
  int64_t grad_row_stride;
  const void* x;            // (B, N), any row stride
  int64_t x_row_stride;
  const int64_t* src;       // (B,)
  int64_t batch;
  int64_t num_columns;
  float* out;               // (B, 2) contiguous: [i, 0] = <grad_i, x_i>, [i, 1] = <grad_i, x_src[i]>
};

// out[i, n] = mix_element(x[i, n], x[src[i], n], w_self[i], w_src[i]) into a
// new contiguous (B, N) array `out` of x's dtype. `num_sms` (the device's
// multiprocessor count) sizes the grid.
cudaError_t mix_rows(const MixRowsArgs& args, void* out, int num_sms, cudaStream_t stream);

// Bytes of device workspace mix_rows_inplace needs: 0 when the batch fits the
// in-place strip kernel (B * 16 bytes of shared memory per block, up to
// `max_shared_bytes`, the device's opt-in limit per block), else B * N
// elements for a temporary copy of the mixed batch.
int64_t mix_rows_inplace_workspace_bytes(const MixRowsArgs& args, int max_shared_bytes);

// The same mix written into x (args.x must equal x). Correct for any src,
// permutation cycles and repeated indices included: every value is read
// before any is overwritten. `workspace` must hold
// mix_rows_inplace_workspace_bytes(args, max_shared_bytes) bytes (nullptr if 0).
cudaError_t mix_rows_inplace(void* x, const MixRowsArgs& args, void* workspace, int num_sms,
                             int max_shared_bytes, cudaStream_t stream);

// Bytes of fp32 workspace mix_rows_dots needs for its split-N partial sums
// (0 when each row is reduced by one group of threads). Depends only on
// (B, N), so the summation order never depends on the GPU model.
int64_t mix_rows_dots_workspace_bytes(const MixRowsDotsArgs& args);

// Writes args.out; deterministic (fixed-order reductions, no atomics).
cudaError_t mix_rows_dots(const MixRowsDotsArgs& args, float* workspace, cudaStream_t stream);

}  // namespace mixkernels::gpu
