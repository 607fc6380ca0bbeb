// Per-pixel math of mask_mix, shared by the CPU and CUDA kernels: which
// low-resolution mask cells an image pixel reads, and with which weights, as
// F.interpolate(mask, size=(H, W), mode=..., align_corners=False) computes
// them. Upsampling is separable, so everything here is about one axis
// (rows or columns); a pixel's taps are the product of its row's and its
// column's. The arithmetic mirrors ATen's (UpSample.h): fp32 scale
// in_size / out_size, the same clamps, the same special cases.
#pragma once

#include <math.h>
#include <stdint.h>

#include "mixkernels/macros.h"

namespace mixkernels {

// Output index o of an upsampled axis reads input index `first` with weight
// `w_first` and, for bilinear, input index `second` with weight `w_second`
// (second == first at the last input index, and when the sizes are equal).
// Nearest reads `first` only, with weight 1.
struct AxisTap {
  int64_t first, second;
  float w_first, w_second;
};

// a * b and a + b, each rounded to fp32 on its own. nvcc contracts a product
// followed by a sum into one fused multiply-add unless told not to (the CPU
// build never does: -ffp-contract=off), which would move taps and mask
// values by an ulp between the CPU and CUDA kernels.
MK_HOST_DEVICE float mul_rounded(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

MK_HOST_DEVICE float add_rounded(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

// ATen's scale for align_corners=False when the output size is given.
MK_HOST_DEVICE float upsample_scale(int64_t in_size, int64_t out_size) {
  return static_cast<float>(in_size) / static_cast<float>(out_size);
}

// Bilinear (linear along one axis), align_corners=False:
//   src = (o + 0.5) * in_size / out_size - 0.5, clamped at 0;
//   first = floor(src), second = first + 1 (clamped), w_second = src - first.
MK_HOST_DEVICE AxisTap linear_axis_tap(int64_t o, int64_t in_size, int64_t out_size) {
  if (in_size == out_size) {
    // ATen copies here: weight 1 on the same index, 0 on itself again.
    return AxisTap{o, o, 1.0f, 0.0f};
  }
  float src = add_rounded(mul_rounded(upsample_scale(in_size, out_size), static_cast<float>(o) + 0.5f), -0.5f);
  src = src < 0.0f ? 0.0f : src;
  int64_t first = static_cast<int64_t>(floorf(src));
  first = first < in_size - 1 ? first : in_size - 1;
  float w_second = src - static_cast<float>(first);
  w_second = w_second < 0.0f ? 0.0f : (w_second > 1.0f ? 1.0f : w_second);
  const int64_t second = first + (first < in_size - 1 ? 1 : 0);
  return AxisTap{first, second, 1.0f - w_second, w_second};
}

// Nearest (PyTorch's legacy "nearest", as AutoMix uses): floor(o * scale) in
// fp32, clamped to the last input index; exact shortcuts at 1x and 2x.
MK_HOST_DEVICE AxisTap nearest_axis_tap(int64_t o, int64_t in_size, int64_t out_size) {
  int64_t first;
  if (out_size == in_size) {
    first = o;
  } else if (out_size == 2 * in_size) {
    first = o >> 1;
  } else {
    first = static_cast<int64_t>(floorf(static_cast<float>(o) * upsample_scale(in_size, out_size)));
    first = first < in_size - 1 ? first : in_size - 1;
  }
  return AxisTap{first, first, 1.0f, 0.0f};
}

MK_HOST_DEVICE AxisTap axis_tap(bool bilinear, int64_t o, int64_t in_size, int64_t out_size) {
  return bilinear ? linear_axis_tap(o, in_size, out_size) : nearest_axis_tap(o, in_size, out_size);
}

// One pixel's mask weight along one axis from the two taps' values (already
// interpolated along the other axis). Nearest takes the first value as it is
// (no 0 * value term, so an inf in the mask stays inf, as in F.interpolate).
MK_HOST_DEVICE float blend_taps(bool bilinear, float first_value, float second_value, const AxisTap& tap) {
  return bilinear ? add_rounded(mul_rounded(first_value, tap.w_first), mul_rounded(second_value, tap.w_second))
                  : first_value;
}

// The mask gradient at one pixel and channel: d out / d m = own - partner.
MK_HOST_DEVICE float mask_grad_element(float grad, float own, float partner) {
  return grad * (own - partner);
}

}  // namespace mixkernels
