// The CPU row-mixing kernels (mix_batch's primitives), compiled once per CPU
// capability like cross_entropy_kernel.h; plain pointers and sizes only.
#pragma once

#include <cstdint>

#include "cpu/dtype.h"

namespace mixkernels::cpu {

// out[i] = w_self[i] * x[i] + w_src[i] * x[src[i]], rows of `row_length`.
struct MixRowsArgs {
  const void* x;
  Dtype dtype;
  int64_t batch, row_length, row_stride;
  const int64_t* src;
  const float* w_self;
  const float* w_src;
  void* out;  // contiguous (batch, row_length)
};

// The same written into x. `cycles` lists the rows cycle by cycle, each
// cycle in the order c0, c1 = src[c0], c2 = src[c1], ...; cycle k is
// cycles[cycle_offsets[k] : cycle_offsets[k + 1]].
struct MixRowsInplaceArgs {
  void* x;
  Dtype dtype;
  int64_t batch, row_length, row_stride;
  const float* w_self;
  const float* w_src;
  const int64_t* cycles;
  const int64_t* cycle_offsets;
  int64_t num_cycles;
};

// dots[i] = (sum_n grad[i,n] * x[i,n], sum_n grad[i,n] * x[src[i],n]).
struct MixRowsDotsArgs {
  const void* grad;
  const void* x;
  Dtype dtype;
  int64_t batch, row_length, grad_row_stride, x_row_stride;
  const int64_t* src;
  float* dots;  // (batch, 2)
};

// Images with boxes (mix_images in csrc/ops.cpp). A sample is `lines` lines
// of `line_length` contiguous elements; line l holds image row l % height,
// and pixel column w of that row spans elements [w * inner, (w + 1) * inner)
// of the line (NCHW: lines = C * H, inner = 1; NHWC: lines = H, inner = C).
struct MixImagesArgs {
  const void* x;
  Dtype dtype;
  int64_t batch, sample_stride, lines, line_length, height, inner;
  const int64_t* src;
  const float* w_self;
  const float* w_src;
  const int64_t* box_self;  // (batch, 4): y0, y1, x0, x1
  const int64_t* box_src;
  void* out;  // same layout as x, samples packed (stride lines * line_length)
};

// The same written into x (out = x), walking the permutation's cycles as
// MixRowsInplaceArgs describes them.
struct MixImagesInplaceArgs {
  void* x;
  Dtype dtype;
  int64_t batch, sample_stride, lines, line_length, height, inner;
  const float* w_self;
  const float* w_src;
  const int64_t* box_self;
  const int64_t* box_src;
  const int64_t* cycles;
  const int64_t* cycle_offsets;
  int64_t num_cycles;
};

#define MIXKERNELS_DECLARE_MIX_ROWS_KERNELS(capability)      \
  namespace capability {                                     \
  void mix_rows(const MixRowsArgs& args);                    \
  void mix_rows_inplace(const MixRowsInplaceArgs& args);     \
  void mix_rows_dots(const MixRowsDotsArgs& args);           \
  void mix_images(const MixImagesArgs& args);                \
  void mix_images_inplace(const MixImagesInplaceArgs& args); \
  }

MIXKERNELS_DECLARE_MIX_ROWS_KERNELS(DEFAULT)
MIXKERNELS_DECLARE_MIX_ROWS_KERNELS(AVX2)
MIXKERNELS_DECLARE_MIX_ROWS_KERNELS(AVX512)

}  // namespace mixkernels::cpu
