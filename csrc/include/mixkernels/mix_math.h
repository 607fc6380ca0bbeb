// Per-element math of the batch-mixing ops, shared by the CPU and CUDA kernels.
#pragma once

#include "mixkernels/macros.h"

namespace mixkernels {

// One element of a mixed row: w_self * own + w_src * partner, in fp32.
// mix_batch uses (w_self, w_src) = (lam, 1 - lam); its gradient with respect
// to x is the same mix of the incoming gradient with the inverse permutation.
MK_HOST_DEVICE float mix_element(float own, float partner, float w_self, float w_src) {
  return w_self * own + w_src * partner;
}

}  // namespace mixkernels
