// CUDA implementations of the image-mixing ops mix_images and mix_images_
// (schemas and semantics in csrc/ops.cpp).
//
// Thin ATen wrappers: check the inputs (mixkernels/image_checks.h, the
// metadata checks shared with the CPU ops), allocate the output and the
// workspace, and call the torch-free launchers in mix_images_kernel.cu on the
// current stream of x's device. No host synchronisation: the values of src and
// of the boxes are not checked here (the CPU op checks them on the host); the
// kernels make an image whose src index is outside [0, B) NaN and clamp boxes
// to the image. Launch errors are checked, kernel faults surface
// asynchronously as usual in CUDA. The workspace comes from the caching
// allocator on the current stream, so freeing it when the wrapper returns is
// ordered after the kernels that use it.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "mixkernels/image_checks.h"

#include "mix_images_kernel.h"
#include "op_utils.h"

namespace mixkernels {
namespace {

gpu::MixImagesArgs mix_images_args(const at::Tensor& x, const ImageLayout& layout, const at::Tensor& src,
                                   const at::Tensor& w_self, const at::Tensor& w_src,
                                   const at::Tensor& box_self, const at::Tensor& box_src) {
  gpu::MixImagesArgs args{};
  args.dtype = kernel_dtype(x.scalar_type());
  args.x = x.const_data_ptr();
  args.src = src.const_data_ptr<int64_t>();
  args.w_self = w_self.const_data_ptr<float>();
  args.w_src = w_src.const_data_ptr<float>();
  args.box_self = box_self.const_data_ptr<int64_t>();
  args.box_src = box_src.const_data_ptr<int64_t>();
  args.batch = layout.batch;
  args.sample_elements = layout.sample_stride;
  args.line_length = layout.line_length;
  args.height = layout.height;
  args.width = x.size(3);
  args.inner = layout.inner;
  return args;
}

int max_shared_bytes_per_block() {
  return static_cast<int>(at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin);
}

at::Tensor mix_images_cuda(const at::Tensor& x, const at::Tensor& src, const at::Tensor& w_self,
                           const at::Tensor& w_src, const at::Tensor& box_self, const at::Tensor& box_src) {
  const ImageLayout layout = check_mix_images_inputs(x, src, w_self, w_src, box_self, box_src);
  check_on_cuda(x, "x");
  const c10::cuda::CUDAGuard device_guard(x.device());
  // x is dense (contiguous or channels-last), so empty_like keeps its strides:
  // image i of out starts i * C * H * W elements in, its lines laid out as x's.
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Preserve);
  TORCH_INTERNAL_ASSERT(x.numel() == 0 || out.strides() == x.strides(), "mixkernels: mix_images expected an output with x's strides ",
                        x.strides(), ", got ", out.strides());
  C10_CUDA_CHECK(gpu::mix_images(mix_images_args(x, layout, src, w_self, w_src, box_self, box_src),
                                 out.mutable_data_ptr(), multiprocessor_count(),
                                 at::cuda::getCurrentCUDAStream()));
  return out;
}

void mix_images_inplace_cuda(const at::Tensor& x, const at::Tensor& src, const at::Tensor& w_self,
                             const at::Tensor& w_src, const at::Tensor& box_self, const at::Tensor& box_src) {
  const ImageLayout layout = check_mix_images_inputs(x, src, w_self, w_src, box_self, box_src);
  check_on_cuda(x, "x");
  const c10::cuda::CUDAGuard device_guard(x.device());
  const gpu::MixImagesArgs args = mix_images_args(x, layout, src, w_self, w_src, box_self, box_src);
  const int max_shared_bytes = max_shared_bytes_per_block();
  // Nonzero only for batches too tall for the in-place strip kernel: then the
  // GPU in-place path goes through a temporary batch (see mix_images_kernel.cu).
  const int64_t workspace_bytes = gpu::mix_images_inplace_workspace_bytes(args, max_shared_bytes);
  at::Tensor workspace;
  if (workspace_bytes > 0) workspace = at::empty({workspace_bytes}, x.options().dtype(at::kByte));
  C10_CUDA_CHECK(gpu::mix_images_inplace(x.mutable_data_ptr(), args,
                                         workspace_bytes > 0 ? workspace.mutable_data_ptr() : nullptr,
                                         multiprocessor_count(), max_shared_bytes,
                                         at::cuda::getCurrentCUDAStream()));
}

}  // namespace
}  // namespace mixkernels

TORCH_LIBRARY_IMPL(mixkernels, CUDA, m) {
  m.impl("mix_images", &mixkernels::mix_images_cuda);
  m.impl("mix_images_", &mixkernels::mix_images_inplace_cuda);
}
