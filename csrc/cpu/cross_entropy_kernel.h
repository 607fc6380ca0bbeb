// The CPU cross-entropy kernels, compiled once per CPU capability.
//
// cross_entropy_kernel.cpp is built three times (DEFAULT, AVX2, AVX512; see
// setup.py) with CPU_CAPABILITY naming the namespace, so each build's symbols
// differ; cross_entropy.cpp picks one at run time. The arguments are plain
// pointers and sizes: nothing here depends on at::Tensor.
#pragma once

#include <cstdint>

#include "cpu/dtype.h"

namespace mixkernels::cpu {

struct MixupCEForwardArgs {
  const void* logits;  // (batch, num_classes), unit column stride
  Dtype dtype;
  int64_t batch, num_classes, row_stride;
  const int64_t* y_a;
  const int64_t* y_b;
  const float* lam;
  float label_smoothing;
  float* loss;  // (batch,)
  float* lse;   // (batch,)
};

struct MixupCEBackwardArgs {
  const float* grad_loss;  // (batch,)
  const void* logits;
  Dtype dtype;
  int64_t batch, num_classes, row_stride;
  const int64_t* y_a;
  const int64_t* y_b;
  const float* lam;
  const float* lse;
  float label_smoothing;
  void* grad_logits;  // (batch, num_classes), contiguous, logits' dtype
};

struct SoftTargetForwardArgs {
  const void* logits;
  Dtype dtype;
  const void* target;  // (batch, num_classes), unit column stride
  Dtype target_dtype;
  int64_t batch, num_classes, row_stride, target_row_stride;
  float* loss;
  float* lse;
  float* target_sum;
};

struct SoftTargetBackwardArgs {
  const float* grad_loss;
  const void* logits;
  Dtype dtype;
  const void* target;
  Dtype target_dtype;
  int64_t batch, num_classes, row_stride, target_row_stride;
  const float* lse;
  const float* target_sum;
  void* grad_logits;  // contiguous, logits' dtype
  void* grad_target;  // contiguous, target's dtype; nullptr when not wanted
};

#define MIXKERNELS_DECLARE_CPU_KERNELS(capability)                      \
  namespace capability {                                                \
  void mixup_cross_entropy_forward(const MixupCEForwardArgs& args);     \
  void mixup_cross_entropy_backward(const MixupCEBackwardArgs& args);   \
  void soft_target_cross_entropy_forward(const SoftTargetForwardArgs& args); \
  void soft_target_cross_entropy_backward(const SoftTargetBackwardArgs& args); \
  }

MIXKERNELS_DECLARE_CPU_KERNELS(DEFAULT)
MIXKERNELS_DECLARE_CPU_KERNELS(AVX2)
MIXKERNELS_DECLARE_CPU_KERNELS(AVX512)

}  // namespace mixkernels::cpu
