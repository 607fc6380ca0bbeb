// CUDA implementations of the row-mixing ops mix_rows, mix_rows_ and
// mix_rows_dots (schemas in csrc/ops.cpp).
//
// Thin ATen wrappers: check the inputs (mixkernels/mix_checks.h, shared with
// the CPU kernels), allocate outputs and workspaces, and call the torch-free
// launchers in mix_rows_kernel.cu on the current stream of x's device. No
// host synchronisation: launch errors are checked, kernel faults surface
// asynchronously as usual in CUDA. Workspaces come from the caching
// allocator on the current stream, so freeing them when the wrapper returns
// is ordered after the kernels that use them.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "mixkernels/mix_checks.h"

#include "mix_rows_kernel.h"
#include "op_utils.h"

namespace mixkernels {
namespace {

gpu::MixRowsArgs mix_rows_args(const at::Tensor& x, const at::Tensor& src,
                               const at::Tensor& w_self, const at::Tensor& w_src) {
  gpu::MixRowsArgs args{};
  args.dtype = kernel_dtype(x.scalar_type());
  args.x = x.const_data_ptr();
  args.x_row_stride = x.stride(0);
  args.src = src.const_data_ptr<int64_t>();
  args.w_self = w_self.const_data_ptr<float>();
  args.w_src = w_src.const_data_ptr<float>();
  args.batch = x.size(0);
  args.num_columns = x.size(1);
  return args;
}

int max_shared_bytes_per_block() {
  return static_cast<int>(at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin);
}

at::Tensor mix_rows_cuda(const at::Tensor& x, const at::Tensor& src, const at::Tensor& w_self,
                         const at::Tensor& w_src) {
  check_mix_rows_inputs(x, src, w_self, w_src);
  check_on_cuda(x, "x");
  const c10::cuda::CUDAGuard device_guard(x.device());
  at::Tensor out = at::empty({x.size(0), x.size(1)}, x.options());
  C10_CUDA_CHECK(gpu::mix_rows(mix_rows_args(x, src, w_self, w_src), out.mutable_data_ptr(),
                               multiprocessor_count(), at::cuda::getCurrentCUDAStream()));
  return out;
}

void mix_rows_inplace_cuda(const at::Tensor& x, const at::Tensor& src, const at::Tensor& w_self,
                           const at::Tensor& w_src) {
  check_mix_rows_inputs(x, src, w_self, w_src);
  check_mix_rows_inplace_target(x);
  check_on_cuda(x, "x");
  const c10::cuda::CUDAGuard device_guard(x.device());
  const gpu::MixRowsArgs args = mix_rows_args(x, src, w_self, w_src);
  const int max_shared_bytes = max_shared_bytes_per_block();
  // Nonzero only for batches too tall for the in-place strip kernel: then the
  // GPU in-place path goes through a temporary batch (see mix_rows_kernel.cu).
  const int64_t workspace_bytes = gpu::mix_rows_inplace_workspace_bytes(args, max_shared_bytes);
  at::Tensor workspace;
  if (workspace_bytes > 0) workspace = at::empty({workspace_bytes}, x.options().dtype(at::kByte));
  C10_CUDA_CHECK(gpu::mix_rows_inplace(x.mutable_data_ptr(), args,
                                       workspace_bytes > 0 ? workspace.mutable_data_ptr() : nullptr,
                                       multiprocessor_count(), max_shared_bytes,
                                       at::cuda::getCurrentCUDAStream()));
}

at::Tensor mix_rows_dots_cuda(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& src) {
  check_mix_rows_dots_inputs(grad, x, src);
  check_on_cuda(x, "x");
  const c10::cuda::CUDAGuard device_guard(x.device());
  at::Tensor out = at::empty({x.size(0), 2}, x.options().dtype(at::kFloat));

  gpu::MixRowsDotsArgs args{};
  args.dtype = kernel_dtype(x.scalar_type());
  args.grad = grad.const_data_ptr();
  args.grad_row_stride = grad.stride(0);
  args.x = x.const_data_ptr();
  args.x_row_stride = x.stride(0);
  args.src = src.const_data_ptr<int64_t>();
  args.batch = x.size(0);
  args.num_columns = x.size(1);
  args.out = out.mutable_data_ptr<float>();
  // Split-N partial sums; the split count depends on (B, N) only.
  const int64_t workspace_bytes = gpu::mix_rows_dots_workspace_bytes(args);
  at::Tensor workspace;
  if (workspace_bytes > 0) {
    workspace = at::empty({workspace_bytes / static_cast<int64_t>(sizeof(float))},
                          x.options().dtype(at::kFloat));
  }
  C10_CUDA_CHECK(gpu::mix_rows_dots(
      args, workspace_bytes > 0 ? workspace.mutable_data_ptr<float>() : nullptr,
      at::cuda::getCurrentCUDAStream()));
  return out;
}

}  // namespace
}  // namespace mixkernels

TORCH_LIBRARY_IMPL(mixkernels, CUDA, m) {
  m.impl("mix_rows", &mixkernels::mix_rows_cuda);
  m.impl("mix_rows_", &mixkernels::mix_rows_inplace_cuda);
  m.impl("mix_rows_dots", &mixkernels::mix_rows_dots_cuda);
}
