// Input checks shared by the CPU and CUDA implementations of mask_mix and
// mask_mix_backward (schemas in csrc/ops.cpp).
//
// The Python layer (mixkernels/functional.py) already raises clear errors
// naming the argument; these checks guard direct calls of
// torch.ops.mixkernels.mask_mix* so that a kernel never reads out of bounds.
// ATen metadata only (shape, dtype, layout, device), so the CUDA wrappers run
// them without a host synchronisation; whether src is a permutation is
// checked on the host by the CPU op only (the CUDA kernels treat an index
// outside [0, B) as a bad partner).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "mixkernels/mix_checks.h"

namespace mixkernels {

// The sizes of a batch of images and whether it is channels-last (else
// NCHW-contiguous).
struct MaskMixBatch {
  int64_t batch, channels, height, width;
  bool channels_last;
};

// x (or grad, as `name`): a (B, C, H, W) fp32/bf16/fp16 batch, no dimension
// empty, contiguous or channels-last.
inline MaskMixBatch check_mask_mix_images(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() == 4, "mixkernels: ", name, " must be a (B, C, H, W) batch of images, got ", x.dim(), "-D");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf,
              "mixkernels: ", name, " must be float32, bfloat16 or float16, got ", x.scalar_type());
  const int64_t batch = x.size(0), channels = x.size(1), height = x.size(2), width = x.size(3);
  TORCH_CHECK(batch > 0 && channels > 0 && height > 0 && width > 0, "mixkernels: ", name,
              " must have no empty dimension, got shape ", x.sizes());
  const bool channels_last = !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
  TORCH_CHECK(x.is_contiguous() || channels_last, "mixkernels: ", name, " must be contiguous or channels-last");
  return {batch, channels, height, width, channels_last};
}

// grad of mask_mix_backward: a batch (check_mask_mix_images) of x's shape,
// dtype and device, in x's memory format (the kernels walk grad, x and grad_x
// with one layout). `images` is x's check_mask_mix_images.
inline void check_mask_mix_grad(const at::Tensor& grad, const at::Tensor& x, const MaskMixBatch& images) {
  const MaskMixBatch grad_images = check_mask_mix_images(grad, "grad");
  TORCH_CHECK(grad.sizes() == x.sizes() && grad.scalar_type() == x.scalar_type(),
              "mixkernels: grad must have x's shape ", x.sizes(), " and dtype ", x.scalar_type(), ", got ",
              grad.sizes(), " and ", grad.scalar_type());
  TORCH_CHECK(grad.device() == x.device(), "mixkernels: grad is on ", grad.device(), " but x is on ", x.device());
  TORCH_CHECK(grad_images.channels_last == images.channels_last,
              "mixkernels: grad must have x's memory format (both contiguous or both channels-last)");
}

// How the kernels walk a checked batch, as `Rows` (cpu::ImageRows and
// gpu::MaskMixImage, which list the same fields in the same order): image row
// y of a sample is `row_lines` lines of `line_length` contiguous elements,
// line k starting at element y * row_stride + k * line_stride of the sample,
// `inner` elements per pixel along a line.
template <typename Rows>
Rows mask_mix_image_rows(const MaskMixBatch& b) {
  const int64_t sample_stride = b.channels * b.height * b.width;
  if (b.channels_last) {
    // batch, height, width, sample_stride, row_stride, row_lines, line_stride, line_length, inner
    return Rows{b.batch, b.height, b.width, sample_stride, b.width * b.channels, 1, 0, b.width * b.channels,
                b.channels};
  }
  return Rows{b.batch, b.height, b.width, sample_stride, b.width, b.channels, b.height * b.width, b.width, 1};
}

// src: a contiguous int64 (B,) on x's device (its values are the caller's).
inline void check_mask_mix_src(const at::Tensor& src, const at::Tensor& x) {
  check_mix_row_vector(src, "src", x.size(0), at::kLong, x, "x");
}

// mask: (B, 1, h, w) with h, w >= 1, fp32 or x's dtype, on x's device, any
// strides; returned as the contiguous fp32 (B, 1, h, w) the kernels read.
inline at::Tensor check_mask_as_fp32(const at::Tensor& mask, const at::Tensor& x) {
  TORCH_CHECK(mask.device() == x.device(), "mixkernels: mask is on ", mask.device(), " but x is on ", x.device());
  TORCH_CHECK(mask.dim() == 4 && mask.size(0) == x.size(0) && mask.size(1) == 1 && mask.size(2) > 0 &&
                  mask.size(3) > 0,
              "mixkernels: mask must have shape (", x.size(0), ", 1, h, w) with h, w >= 1, got ", mask.sizes());
  TORCH_CHECK(mask.scalar_type() == at::kFloat || mask.scalar_type() == x.scalar_type(),
              "mixkernels: mask must be float32 or x's dtype ", x.scalar_type(), ", got ", mask.scalar_type());
  return mask.to(at::kFloat).contiguous();
}

}  // namespace mixkernels
