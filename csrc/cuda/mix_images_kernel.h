// Launchers of the CUDA image-mixing kernels (csrc/cuda/mix_images_kernel.cu):
// mix_images and mix_images_ (in place), the primitive of cutmix_batch and of
// Mixup's per-sample mixup-or-cutmix (schemas and semantics in csrc/ops.cpp).
//
// Torch-free on purpose, like mix_rows_kernel.h: the kernels compile in
// seconds without torch's headers, and the thin ATen wrappers live in
// mix_images_cuda.cpp. Pointers are raw device pointers; every launcher
// enqueues on `stream`, never synchronises, and returns the first CUDA error
// it meets.
//
// Values in device memory are not validated (that would need a host
// synchronisation): an index src[i] outside [0, B) makes image i all NaN,
// never a read out of bounds, and boxes are clamped to the image.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "storage_dtype.h"

namespace mixkernels::gpu {

// A dense (B, C, H, W) batch, NCHW-contiguous or channels-last: image i is
// the `sample_elements` = C * H * W elements from x + i * sample_elements,
// made of lines of `line_length` contiguous elements (NCHW: C * H lines of W;
// channels-last: H lines of W * C) holding `inner` elements per pixel
// (NCHW: 1; channels-last: C). Line l of an image is image row l % H.
struct MixImagesArgs {
  DType dtype;                // of x (and of the output)
  const void* x;
  const int64_t* src;         // (B,): image i is mixed with image src[i]
  const float* w_self;        // (B,)
  const float* w_src;         // (B,)
  const int64_t* box_self;    // (B, 4) contiguous: y0, y1, x0, x1, half open
  const int64_t* box_src;     // (B, 4) contiguous
  int64_t batch;              // B
  int64_t sample_elements;    // C * H * W
  int64_t line_length;        // NCHW: W; channels-last: W * C
  int64_t height;             // H
  int64_t width;              // W
  int64_t inner;              // NCHW: 1; channels-last: C
};

// At pixel p of image i, all channels:
//   out[i, :, p] = (p in box_self[i] ? 0 : w_self[i]) * x[i, :, p]
//                + (p in box_src[i]  ? 1 : w_src[i])  * x[src[i], :, p]
// in fp32, two products then a sum (no fused multiply-add); a term whose
// weight is exactly 0 is dropped (a pasted box is a bit-exact copy of the
// partner even next to inf/NaN). `out` has x's layout (out + i *
// sample_elements is image i). `num_sms` (the device's multiprocessor count)
// sizes the grid.
cudaError_t mix_images(const MixImagesArgs& args, void* out, int num_sms, cudaStream_t stream);

// Bytes of device workspace mix_images_inplace needs: 0 when the batch fits
// the in-place strip kernel (B * 16 bytes of shared memory per block, up to
// `max_shared_bytes`, the device's opt-in limit per block), else a temporary
// copy of the mixed batch (B * C * H * W elements).
int64_t mix_images_inplace_workspace_bytes(const MixImagesArgs& args, int max_shared_bytes);

// The same mix written into x (args.x must equal x). Correct for any src,
// permutation cycles and repeated indices included: every value is read
// before any is overwritten. `workspace` must hold
// mix_images_inplace_workspace_bytes(args, max_shared_bytes) bytes (nullptr if 0).
cudaError_t mix_images_inplace(void* x, const MixImagesArgs& args, void* workspace, int num_sms,
                               int max_shared_bytes, cudaStream_t stream);

}  // namespace mixkernels::gpu
