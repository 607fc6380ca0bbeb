// CPU implementations of mask_mix and mask_mix_backward (schemas in
// csrc/ops.cpp): checks, the mask in fp32, the inverse permutation,
// allocation, and the kernel build for this CPU.
//
// The Python layer (mixkernels/functional.py) already raises clear errors
// naming the argument; these checks guard direct calls of
// torch.ops.mixkernels.mask_mix* so that a kernel never reads out of bounds.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>

#include "cpu/mask_mix_kernel.h"
#include "cpu/op_utils.h"
#include "mixkernels/mix_checks.h"

namespace mixkernels::cpu {
namespace {

// x: a CPU (B, C, H, W) fp32/bf16/fp16 batch, no dimension empty, contiguous
// or channels-last; how the kernels walk it (mask_mix_kernel.h).
ImageRows check_images(const at::Tensor& x, const char* name) {
  check_cpu(x, name);
  TORCH_CHECK(x.dim() == 4, "mixkernels: ", name, " must be a (B, C, H, W) batch of images, got ", x.dim(), "-D");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf,
              "mixkernels: ", name, " must be float32, bfloat16 or float16, got ", x.scalar_type());
  const int64_t batch = x.size(0), channels = x.size(1), height = x.size(2), width = x.size(3);
  TORCH_CHECK(batch > 0 && channels > 0 && height > 0 && width > 0, "mixkernels: ", name,
              " must have no empty dimension, got shape ", x.sizes());
  const bool channels_last = !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
  TORCH_CHECK(x.is_contiguous() || channels_last, "mixkernels: ", name, " must be contiguous or channels-last");
  const int64_t sample_stride = channels * height * width;
  if (channels_last) {
    return {batch, height, width, sample_stride, width * channels, 1, 0, width * channels, channels};
  }
  return {batch, height, width, sample_stride, width, channels, height * width, width, 1};
}

// mask: (B, 1, h, w) with h, w >= 1, fp32 or x's dtype, on x's device, any
// strides; returned as the contiguous fp32 (B, h, w) the kernels read.
at::Tensor check_mask_as_fp32(const at::Tensor& mask, const at::Tensor& x) {
  TORCH_CHECK(mask.device() == x.device(), "mixkernels: mask is on ", mask.device(), " but x is on ", x.device());
  TORCH_CHECK(mask.dim() == 4 && mask.size(0) == x.size(0) && mask.size(1) == 1 && mask.size(2) > 0 &&
                  mask.size(3) > 0,
              "mixkernels: mask must have shape (", x.size(0), ", 1, h, w) with h, w >= 1, got ", mask.sizes());
  TORCH_CHECK(mask.scalar_type() == at::kFloat || mask.scalar_type() == x.scalar_type(),
              "mixkernels: mask must be float32 or x's dtype ", x.scalar_type(), ", got ", mask.scalar_type());
  return mask.to(at::kFloat).contiguous();
}

LowResMask low_res_mask(const at::Tensor& mask32, bool bilinear) {
  return LowResMask{mask32.const_data_ptr<float>(), mask32.size(2), mask32.size(3), bilinear};
}

void check_src(const at::Tensor& src, const at::Tensor& x) {
  check_mix_row_vector(src, "src", x.size(0), at::kLong, x, "x");
  check_permutation(src);
}

// inv[src[i]] = i (src already checked to be a permutation).
at::Tensor inverse_permutation(const at::Tensor& src) {
  at::Tensor inv = at::empty_like(src);
  const int64_t* p = src.const_data_ptr<int64_t>();
  int64_t* q = inv.mutable_data_ptr<int64_t>();
  for (int64_t i = 0; i < src.size(0); ++i) q[p[i]] = i;
  return inv;
}

at::Tensor mask_mix_cpu(const at::Tensor& x, const at::Tensor& src, const at::Tensor& mask, bool bilinear) {
  const ImageRows image = check_images(x, "x");
  check_src(src, x);
  const at::Tensor mask32 = check_mask_as_fp32(mask, x);
  at::Tensor out = empty_like_for_writing(x);
  MaskMixArgs args{x.const_data_ptr(), to_dtype(x.scalar_type()), image, src.const_data_ptr<int64_t>(),
                   low_res_mask(mask32, bilinear), out.mutable_data_ptr()};
  MIXKERNELS_CPU_KERNEL(mask_mix)(args);
  return out;
}

std::tuple<at::Tensor, at::Tensor> mask_mix_backward_cpu(const at::Tensor& grad, const at::Tensor& x,
                                                         const at::Tensor& src, const at::Tensor& mask,
                                                         bool bilinear, bool needs_x_grad, bool needs_mask_grad) {
  const ImageRows image = check_images(x, "x");
  const ImageRows grad_image = check_images(grad, "grad");
  TORCH_CHECK(grad.sizes() == x.sizes() && grad.scalar_type() == x.scalar_type(),
              "mixkernels: grad must have x's shape ", x.sizes(), " and dtype ", x.scalar_type(), ", got ",
              grad.sizes(), " and ", grad.scalar_type());
  // The kernels walk grad, x and grad_x with one layout.
  TORCH_CHECK(grad_image.inner == image.inner, "mixkernels: grad must have x's memory format "
              "(both contiguous or both channels-last)");
  check_src(src, x);
  const at::Tensor mask32 = check_mask_as_fp32(mask, x);
  const at::Tensor inv = inverse_permutation(src);
  at::Tensor grad_x = needs_x_grad ? empty_like_for_writing(x) : at::empty({0}, x.options());
  at::Tensor grad_mask32 = needs_mask_grad ? at::empty(mask.sizes(), mask32.options())  // contiguous (B, 1, h, w)
                                           : at::empty({0}, mask.options());
  if (needs_x_grad || needs_mask_grad) {
    MaskMixBackwardArgs args{grad.const_data_ptr(), x.const_data_ptr(), to_dtype(x.scalar_type()), image,
                             src.const_data_ptr<int64_t>(), inv.const_data_ptr<int64_t>(),
                             low_res_mask(mask32, bilinear), needs_x_grad ? grad_x.mutable_data_ptr() : nullptr,
                             needs_mask_grad ? grad_mask32.mutable_data_ptr<float>() : nullptr};
    MIXKERNELS_CPU_KERNEL(mask_mix_backward)(args);
  }
  return {grad_x, needs_mask_grad ? grad_mask32.to(mask.scalar_type()) : grad_mask32};
}

}  // namespace

TORCH_LIBRARY_IMPL(mixkernels, CPU, m) {
  m.impl("mask_mix", &mask_mix_cpu);
  m.impl("mask_mix_backward", &mask_mix_backward_cpu);
}

}  // namespace mixkernels::cpu
