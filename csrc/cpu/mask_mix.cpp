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
#include "mixkernels/mask_checks.h"

namespace mixkernels::cpu {
namespace {

// x: a CPU batch of images (mask_checks.h); how the kernels walk it
// (mask_mix_kernel.h).
ImageRows check_images(const at::Tensor& x, const char* name) {
  check_cpu(x, name);
  return mask_mix_image_rows<ImageRows>(check_mask_mix_images(x, name));
}

LowResMask low_res_mask(const at::Tensor& mask32, bool bilinear) {
  return LowResMask{mask32.const_data_ptr<float>(), mask32.size(2), mask32.size(3), bilinear};
}

void check_src(const at::Tensor& src, const at::Tensor& x) {
  check_mask_mix_src(src, x);
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
  check_cpu(x, "x");
  const MaskMixBatch images = check_mask_mix_images(x, "x");
  const ImageRows image = mask_mix_image_rows<ImageRows>(images);
  check_cpu(grad, "grad");
  check_mask_mix_grad(grad, x, images);
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
