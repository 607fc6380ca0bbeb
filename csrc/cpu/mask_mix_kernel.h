// The CPU kernels of mask_mix (schemas in csrc/ops.cpp), compiled once per
// CPU capability like mix_rows_kernel.h; plain pointers and sizes only.
#pragma once

#include <cstdint>

#include "cpu/dtype.h"

namespace mixkernels::cpu {

// How the kernels walk a (B, C, H, W) batch: image row y of a sample is
// `row_lines` lines of `line_length` contiguous elements, line k starting at
// element y * row_stride + k * line_stride of the sample; pixel column w spans
// elements [w * inner, (w + 1) * inner) of each line.
//   NCHW: row_lines = C, line_length = W,     inner = 1, row_stride = W,     line_stride = H * W
//   NHWC: row_lines = 1, line_length = W * C, inner = C, row_stride = W * C, line_stride = 0
// Every tensor of a call (x, out, grad, grad_x) has this layout, samples
// packed at `sample_stride` elements.
struct ImageRows {
  int64_t batch, height, width, sample_stride, row_stride, row_lines, line_stride, line_length, inner;
};

// The low-resolution mask: contiguous fp32 (batch, height, width), upsampled
// to the image's size bilinearly (align_corners=False) or by nearest.
struct LowResMask {
  const float* data;
  int64_t height, width;
  bool bilinear;
};

// out[i] = m_i * x[i] + (1 - m_i) * x[src[i]], m_i = sample i's upsampled mask.
struct MaskMixArgs {
  const void* x;
  Dtype dtype;
  ImageRows image;
  const int64_t* src;  // a permutation of [0, batch)
  LowResMask mask;
  void* out;
};

// The gradients of mask_mix, inv the inverse permutation of src:
//   grad_x[i]    = m_i * grad[i] + (1 - m_inv[i]) * grad[inv[i]]
//   grad_mask[i] = U^T( sum_c grad[i, c] * (x[i, c] - x[src[i], c]) ), U the upsampling
// grad_x (x's dtype and layout) or grad_mask (fp32 (batch, mask h, mask w))
// is nullptr when not wanted.
struct MaskMixBackwardArgs {
  const void* grad;
  const void* x;
  Dtype dtype;
  ImageRows image;
  const int64_t* src;
  const int64_t* inv;
  LowResMask mask;
  void* grad_x;
  float* grad_mask;
};

#define MIXKERNELS_DECLARE_MASK_MIX_KERNELS(capability)         \
  namespace capability {                                        \
  void mask_mix(const MaskMixArgs& args);                       \
  void mask_mix_backward(const MaskMixBackwardArgs& args);      \
  }

MIXKERNELS_DECLARE_MASK_MIX_KERNELS(DEFAULT)
MIXKERNELS_DECLARE_MASK_MIX_KERNELS(AVX2)
MIXKERNELS_DECLARE_MASK_MIX_KERNELS(AVX512)

}  // namespace mixkernels::cpu
