// Input checks shared by the CPU and CUDA implementations of the image-mixing
// ops (mix_images, mix_images_; schemas in csrc/ops.cpp), and the layout in
// which their kernels see a batch of images.
//
// ATen metadata only (shape, dtype, layout, device): nothing here reads tensor
// values, so the CUDA wrappers run these checks without a host
// synchronisation. The values (src a permutation, boxes inside the image) are
// checked on the host by the CPU op only; the CUDA kernels treat an index
// outside [0, B) as a bad image (NaN) and clamp boxes to the image.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "mixkernels/mix_checks.h"

namespace mixkernels {

// How the kernels see a (B, C, H, W) batch: each image is `lines` lines of
// `line_length` contiguous elements (NCHW: C * H lines of W; NHWC: H lines of
// W * C), `inner` elements per pixel along a line (NCHW 1, NHWC C), images
// `sample_stride` = C * H * W elements apart.
struct ImageLayout {
  int64_t batch, sample_stride, lines, line_length, height, inner;
};

// A contiguous int64 (B, 4) tensor of boxes on x's device (values unchecked).
inline void check_image_boxes_tensor(const at::Tensor& boxes, const char* name, int64_t batch,
                                     const at::Tensor& x) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(0) == batch && boxes.size(1) == 4, "mixkernels: ", name,
              " must have shape (", batch, ", 4), got ", boxes.sizes());
  TORCH_CHECK(boxes.scalar_type() == at::kLong && boxes.is_contiguous(), "mixkernels: ", name,
              " must be a contiguous int64 tensor");
  TORCH_CHECK(boxes.device() == x.device(), "mixkernels: ", name, " is on ", boxes.device(),
              " but x is on ", x.device());
}

// mix_images / mix_images_: x (B, C, H, W) fp32/bf16/fp16, contiguous or
// channels-last (so dense: mixing it in place never writes one element twice),
// B > 0; src int64 (B,); w_self, w_src fp32 (B,); box_self, box_src int64
// (B, 4); all on x's device.
inline ImageLayout check_mix_images_inputs(const at::Tensor& x, const at::Tensor& src,
                                           const at::Tensor& w_self, const at::Tensor& w_src,
                                           const at::Tensor& box_self, const at::Tensor& box_src) {
  TORCH_CHECK(x.dim() == 4, "mixkernels: x must be a (B, C, H, W) batch of images, got ", x.dim(), "-D");
  const bool channels_last = !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
  TORCH_CHECK(x.is_contiguous() || channels_last, "mixkernels: x must be contiguous or channels-last");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf,
              "mixkernels: x must be float32, bfloat16 or float16, got ", x.scalar_type());
  const int64_t batch = x.size(0), channels = x.size(1), height = x.size(2), width = x.size(3);
  TORCH_CHECK(batch > 0, "mixkernels: x must have a non-empty batch");
  check_mix_row_vector(src, "src", batch, at::kLong, x, "x");
  check_mix_row_vector(w_self, "w_self", batch, at::kFloat, x, "x");
  check_mix_row_vector(w_src, "w_src", batch, at::kFloat, x, "x");
  check_image_boxes_tensor(box_self, "box_self", batch, x);
  check_image_boxes_tensor(box_src, "box_src", batch, x);
  const int64_t inner = channels_last ? channels : 1;
  return {batch, channels * height * width, channels_last ? height : channels * height, width * inner, height,
          inner};
}

}  // namespace mixkernels
