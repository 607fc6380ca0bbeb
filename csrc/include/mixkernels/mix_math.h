// Per-element math of the batch-mixing ops, shared by the CPU and CUDA kernels.
#pragma once

#include <cstdint>

#include "mixkernels/macros.h"

namespace mixkernels {

// One element of a mixed row: w_self * own + w_src * partner, in fp32, as two
// products then a sum, each rounded (no fused multiply-add: eager PyTorch and
// the CPU kernels round it so, and nvcc would otherwise contract it).
// mix_batch uses (w_self, w_src) = (lam, 1 - lam); its gradient with respect
// to x is the same mix of the incoming gradient with the inverse permutation.
MK_HOST_DEVICE float mix_element(float own, float partner, float w_self, float w_src) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(__fmul_rn(w_self, own), __fmul_rn(w_src, partner));
#else
  return w_self * own + w_src * partner;  // the CPU build uses -ffp-contract=off
#endif
}

}  // namespace mixkernels

// ---------------------------------------------------------------------------
// mix_images (cutmix_batch, Mixup's per-sample mixup-or-cutmix), shared by the
// CUDA kernels: at pixel p of image i,
//   out = (p in box_self ? 0 : w_self) * own + (p in box_src ? 1 : w_src) * partner.

namespace mixkernels {

// A box (y0, y1, x0, x1), half open, clamped to an H x W image, with its
// columns counted in elements along an image line: a line holds `inner`
// elements per pixel (NCHW: lines of W elements, inner = 1; channels-last:
// lines of W * C elements, inner = C). Boxes the kernels cannot validate
// (device memory) are thus clamped, never read past.
struct ImageBoxSpan {
  int64_t y0, y1;  // image rows [y0, y1)
  int64_t c0, c1;  // elements [c0, c1) of each of those lines
};

MK_HOST_DEVICE int64_t clamp_to_extent(int64_t v, int64_t extent) {
  return v < 0 ? 0 : (v > extent ? extent : v);
}

MK_HOST_DEVICE ImageBoxSpan image_box_span(int64_t y0, int64_t y1, int64_t x0, int64_t x1,
                                           int64_t height, int64_t width, int64_t inner) {
  return ImageBoxSpan{clamp_to_extent(y0, height), clamp_to_extent(y1, height),
                      clamp_to_extent(x0, width) * inner, clamp_to_extent(x1, width) * inner};
}

MK_HOST_DEVICE bool image_box_contains(const ImageBoxSpan& box, int64_t image_row, int64_t column) {
  return image_row >= box.y0 && image_row < box.y1 && column >= box.c0 && column < box.c1;
}

// One element of a mixed image from its two effective weights (w_own = 0
// inside the image's own box, w_partner = 1 inside the partner's box). A term
// whose weight is exactly 0 is dropped, not multiplied (0 * inf would be NaN):
// a pasted box is the partner's value even where the own pixel is inf or NaN.
// Otherwise two products, then a sum, each rounded to fp32 (no fused
// multiply-add, as eager PyTorch and the CPU kernels round it).
MK_HOST_DEVICE float mix_image_element(float own, float partner, float w_own, float w_partner) {
#if defined(__CUDA_ARCH__)
  const float own_term = __fmul_rn(w_own, own);
  const float partner_term = __fmul_rn(w_partner, partner);
  const float both = __fadd_rn(own_term, partner_term);
#else
  const float own_term = w_own * own;
  const float partner_term = w_partner * partner;
  const float both = own_term + partner_term;
#endif
  if (w_own == 0.0f) return w_partner == 0.0f ? 0.0f : partner_term;
  return w_partner == 0.0f ? own_term : both;
}

}  // namespace mixkernels
