// CUDA implementations of mask_mix and mask_mix_backward (schemas and
// semantics in csrc/ops.cpp).
//
// Thin ATen wrappers: check the inputs (mixkernels/mask_checks.h, the
// metadata checks shared with the CPU ops), make the fp32 mask, the inverse
// permutation (on the device) and the outputs, and call the torch-free
// launchers in mask_mix_kernel.cu on the current stream of x's device. No
// host synchronisation: src is not checked to be a permutation here (the CPU
// op checks it on the host); the kernels make an image whose src index is
// outside [0, B) NaN. Launch errors are checked, kernel faults surface
// asynchronously as usual in CUDA. Temporaries come from the caching
// allocator on the current stream, so freeing them when the wrapper returns
// is ordered after the kernels that use them.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>

#include "mixkernels/mask_checks.h"

#include "mask_mix_kernel.h"
#include "op_utils.h"

namespace mixkernels {
namespace {

gpu::MaskMixMask low_res_mask(const at::Tensor& mask32, bool bilinear) {
  return gpu::MaskMixMask{mask32.const_data_ptr<float>(), mask32.size(2), mask32.size(3), bilinear};
}

at::Tensor mask_mix_cuda(const at::Tensor& x, const at::Tensor& src, const at::Tensor& mask, bool bilinear) {
  const MaskMixBatch images = check_mask_mix_images(x, "x");
  check_on_cuda(x, "x");
  check_mask_mix_src(src, x);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const at::Tensor mask32 = check_mask_as_fp32(mask, x);
  // x is dense (contiguous or channels-last), so empty_like keeps its strides.
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Preserve);
  const gpu::MaskMixArgs args{kernel_dtype(x.scalar_type()), x.const_data_ptr(), src.const_data_ptr<int64_t>(),
                              mask_mix_image_rows<gpu::MaskMixImage>(images), low_res_mask(mask32, bilinear)};
  C10_CUDA_CHECK(gpu::mask_mix(args, out.mutable_data_ptr(), multiprocessor_count(),
                               at::cuda::getCurrentCUDAStream()));
  return out;
}

std::tuple<at::Tensor, at::Tensor> mask_mix_backward_cuda(const at::Tensor& grad, const at::Tensor& x,
                                                          const at::Tensor& src, const at::Tensor& mask,
                                                          bool bilinear, bool needs_x_grad, bool needs_mask_grad) {
  const MaskMixBatch images = check_mask_mix_images(x, "x");
  check_on_cuda(x, "x");
  check_mask_mix_grad(grad, x, images);
  check_mask_mix_src(src, x);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const at::Tensor mask32 = check_mask_as_fp32(mask, x);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  at::Tensor grad_x = needs_x_grad ? at::empty_like(x, at::MemoryFormat::Preserve) : at::empty({0}, x.options());
  at::Tensor grad_mask32 = needs_mask_grad ? at::empty(mask.sizes(), mask32.options())  // contiguous (B, 1, h, w)
                                           : at::empty({0}, mask.options());
  if (!(needs_x_grad || needs_mask_grad)) return {grad_x, grad_mask32};

  at::Tensor inv;
  if (needs_x_grad) {
    inv = at::empty_like(src);
    C10_CUDA_CHECK(gpu::inverse_permutation(src.const_data_ptr<int64_t>(), src.size(0),
                                            inv.mutable_data_ptr<int64_t>(), stream));
  }
  const gpu::MaskMixBackwardArgs args{kernel_dtype(x.scalar_type()),
                                      grad.const_data_ptr(),
                                      x.const_data_ptr(),
                                      src.const_data_ptr<int64_t>(),
                                      needs_x_grad ? inv.const_data_ptr<int64_t>() : nullptr,
                                      mask_mix_image_rows<gpu::MaskMixImage>(images),
                                      low_res_mask(mask32, bilinear),
                                      needs_x_grad ? grad_x.mutable_data_ptr() : nullptr,
                                      needs_mask_grad ? grad_mask32.mutable_data_ptr<float>() : nullptr};
  const int64_t workspace_bytes = gpu::mask_mix_backward_workspace_bytes(args);
  at::Tensor workspace;
  if (workspace_bytes > 0) workspace = at::empty({workspace_bytes}, x.options().dtype(at::kByte));
  C10_CUDA_CHECK(gpu::mask_mix_backward(args, workspace_bytes > 0 ? workspace.mutable_data_ptr() : nullptr,
                                        multiprocessor_count(), stream));
  return {grad_x, needs_mask_grad ? grad_mask32.to(mask.scalar_type()) : grad_mask32};
}

}  // namespace
}  // namespace mixkernels

TORCH_LIBRARY_IMPL(mixkernels, CUDA, m) {
  m.impl("mask_mix", &mixkernels::mask_mix_cuda);
  m.impl("mask_mix_backward", &mixkernels::mask_mix_backward_cuda);
}
