// Launchers of the CUDA cross-entropy kernels (csrc/cuda/cross_entropy_kernel.cu).
//
// Torch-free on purpose: the kernels compile in about a second without torch's
// headers, and the thin ATen wrappers live in cross_entropy_cuda.cpp. Pointers
// are raw device pointers; row strides are in elements; every launcher enqueues
// on `stream`, never synchronises, and returns the launch's cudaError_t.
//
// Per-row outputs (loss, lse, target_sum) and per-row inputs (y_a, y_b, lam,
// grad_loss, lse, target_sum) are contiguous (B,) arrays; gradients are written
// to new contiguous (B, C) arrays. logits and target rows may have any row
// stride but unit column stride.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "storage_dtype.h"

namespace mixkernels::gpu {

struct MixupCeForwardArgs {
  DType dtype;                 // of logits
  const void* logits;          // (B, C)
  int64_t logits_row_stride;   // elements
  const int64_t* y_a;          // (B,); a label outside [0, C) gives a NaN loss, never a bad read
  const int64_t* y_b;          // (B,)
  const float* lam;            // (B,)
  float label_smoothing;
  int64_t batch;
  int64_t num_classes;
  float* loss;                 // (B,) out
  float* lse;                  // (B,) out: row log-sum-exp, saved for backward
};

struct MixupCeBackwardArgs {
  DType dtype;                 // of logits and grad_logits
  const float* grad_loss;      // (B,)
  const void* logits;
  int64_t logits_row_stride;
  const int64_t* y_a;
  const int64_t* y_b;
  const float* lam;
  const float* lse;            // (B,) from the forward
  float label_smoothing;
  int64_t batch;
  int64_t num_classes;
  void* grad_logits;           // (B, C) contiguous out
};

struct SoftTargetCeForwardArgs {
  DType logits_dtype;
  const void* logits;
  int64_t logits_row_stride;
  DType target_dtype;          // float32 or logits_dtype
  const void* target;
  int64_t target_row_stride;
  int64_t batch;
  int64_t num_classes;
  float* loss;                 // (B,) out
  float* lse;                  // (B,) out
  float* target_sum;           // (B,) out: sum of the row's target, saved for backward
};

struct SoftTargetCeBackwardArgs {
  DType logits_dtype;
  const float* grad_loss;
  const void* logits;
  int64_t logits_row_stride;
  DType target_dtype;
  const void* target;
  int64_t target_row_stride;
  const float* lse;
  const float* target_sum;
  int64_t batch;
  int64_t num_classes;
  void* grad_logits;           // (B, C) contiguous out, logits_dtype
  void* grad_target;           // (B, C) contiguous out, target_dtype; nullptr: not computed
};

// `num_sms` (the device's multiprocessor count) lets the elementwise backward
// kernels size their grids; the forward kernels use one row per block or warp.
cudaError_t mixup_ce_forward(const MixupCeForwardArgs& args, cudaStream_t stream);
cudaError_t mixup_ce_backward(const MixupCeBackwardArgs& args, int num_sms, cudaStream_t stream);
cudaError_t soft_target_ce_forward(const SoftTargetCeForwardArgs& args, cudaStream_t stream);
cudaError_t soft_target_ce_backward(const SoftTargetCeBackwardArgs& args, int num_sms,
                                    cudaStream_t stream);

}  // namespace mixkernels::gpu
