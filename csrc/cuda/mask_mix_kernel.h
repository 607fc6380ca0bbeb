// Launchers of the CUDA mask-mixing kernels (csrc/cuda/mask_mix_kernel.cu):
// mask_mix and mask_mix_backward, the primitive of AutoMix and SAMix
// (schemas and semantics in csrc/ops.cpp).
//
// Torch-free on purpose, like mix_images_kernel.h: the kernels compile in
// seconds without torch's headers, and the thin ATen wrappers live in
// mask_mix_cuda.cpp. Pointers are raw device pointers; every launcher
// enqueues on `stream`, never synchronises, and returns the first CUDA error
// it meets.
//
// Values in device memory are not validated (that would need a host
// synchronisation): an index src[i] outside [0, B) makes image i's results
// NaN (its output, its mask gradient, and its x gradient when no sample
// names it as partner), never a read out of bounds.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "storage_dtype.h"

namespace mixkernels::gpu {

// How the kernels walk a dense (B, C, H, W) batch: image row y of a sample is
// `row_lines` lines of `line_length` contiguous elements, line k starting at
// element y * row_stride + k * line_stride of the sample; pixel column w spans
// elements [w * inner, (w + 1) * inner) of each line. Samples lie
// `sample_elements` = C * H * W apart.
//   NCHW: row_lines = C, line_length = W,     inner = 1, row_stride = W,     line_stride = H * W
//   NHWC: row_lines = 1, line_length = W * C, inner = C, row_stride = W * C, line_stride = 0
// Every batch of a call (x, out, grad, grad_x) has this layout.
struct MaskMixImage {
  int64_t batch, height, width, sample_elements, row_stride, row_lines, line_stride, line_length, inner;
};

// The low-resolution mask: contiguous fp32 (B, height, width), upsampled to
// the images' (H, W) bilinearly (align_corners=False) or by nearest, as
// F.interpolate does (mixkernels/mask_math.h).
struct MaskMixMask {
  const float* data;
  int64_t height, width;
  bool bilinear;
};

struct MaskMixArgs {
  DType dtype;          // of x and out
  const void* x;
  const int64_t* src;   // (B,): image i is mixed with image src[i]
  MaskMixImage image;
  MaskMixMask mask;
};

// out[i] = m_i * x[i] + (1 - m_i) * x[src[i]], m_i sample i's upsampled mask,
// in fp32 (two products, then a sum, as the CPU kernel rounds it); out has
// x's layout. `num_sms` (the device's multiprocessor count) sizes the grid.
cudaError_t mask_mix(const MaskMixArgs& args, void* out, int num_sms, cudaStream_t stream);

// inv[src[i]] = i for the i whose src[i] lies in [0, batch); every other
// entry -1 (which the kernels treat as a bad partner). `inv` holds `batch`
// elements.
cudaError_t inverse_permutation(const int64_t* src, int64_t batch, int64_t* inv, cudaStream_t stream);

struct MaskMixBackwardArgs {
  DType dtype;          // of grad, x and grad_x
  const void* grad;
  const void* x;
  const int64_t* src;
  const int64_t* inv;   // inverse_permutation(src); read only for grad_x
  MaskMixImage image;
  MaskMixMask mask;
  void* grad_x;         // x's layout; nullptr: not computed
  float* grad_mask;     // contiguous fp32 (B, mask height, mask width); nullptr: not computed
};

// Bytes of device workspace mask_mix_backward needs: 0 without grad_mask,
// else fp32 scratch of B * H * W + B * (mask height) * W elements.
int64_t mask_mix_backward_workspace_bytes(const MaskMixBackwardArgs& args);

// The gradients of mask_mix for the incoming grad:
//   grad_x[i]    = m_i * grad[i] + (1 - m_inv[i]) * grad[inv[i]]      (a gather, no atomics)
//   grad_mask[i] = U^T( sum_c grad[i, c] * (x[i, c] - x[src[i], c]) ), U the upsampling,
// deterministic (fixed-order sums, no atomics). `workspace` must hold
// mask_mix_backward_workspace_bytes(args) bytes (nullptr if 0).
cudaError_t mask_mix_backward(const MaskMixBackwardArgs& args, void* workspace, int num_sms,
                              cudaStream_t stream);

}  // namespace mixkernels::gpu
