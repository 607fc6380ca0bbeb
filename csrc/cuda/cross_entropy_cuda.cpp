// CUDA implementations of the cross-entropy ops (schemas in csrc/ops.cpp).
//
// Thin ATen wrappers: check the inputs (mixkernels/checks.h, shared with the
// CPU kernels), allocate the outputs, and call the torch-free launchers in
// cross_entropy_kernel.cu on the current stream of the inputs' device. No
// host synchronisation: launch errors are checked, kernel faults surface
// asynchronously as usual in CUDA.
#include <tuple>

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "mixkernels/checks.h"

#include "cross_entropy_kernel.h"
#include "op_utils.h"

namespace mixkernels {
namespace {

at::Tensor row_output(const at::Tensor& logits) {
  return at::empty({logits.size(0)}, logits.options().dtype(at::kFloat));
}

std::tuple<at::Tensor, at::Tensor> mixup_cross_entropy_cuda(const at::Tensor& logits,
                                                            const at::Tensor& y_a,
                                                            const at::Tensor& y_b,
                                                            const at::Tensor& lam,
                                                            double label_smoothing) {
  check_mixup_ce_inputs(logits, y_a, y_b, lam);
  check_on_cuda(logits, "logits");
  const c10::cuda::CUDAGuard device_guard(logits.device());
  at::Tensor loss = row_output(logits);
  at::Tensor lse = row_output(logits);

  gpu::MixupCeForwardArgs args{};
  args.dtype = kernel_dtype(logits.scalar_type());
  args.logits = logits.const_data_ptr();
  args.logits_row_stride = logits.stride(0);
  args.y_a = y_a.const_data_ptr<int64_t>();
  args.y_b = y_b.const_data_ptr<int64_t>();
  args.lam = lam.const_data_ptr<float>();
  args.label_smoothing = static_cast<float>(label_smoothing);
  args.batch = logits.size(0);
  args.num_classes = logits.size(1);
  args.loss = loss.mutable_data_ptr<float>();
  args.lse = lse.mutable_data_ptr<float>();
  C10_CUDA_CHECK(gpu::mixup_ce_forward(args, at::cuda::getCurrentCUDAStream()));
  return {loss, lse};
}

at::Tensor mixup_cross_entropy_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& logits,
                                             const at::Tensor& y_a, const at::Tensor& y_b,
                                             const at::Tensor& lam, const at::Tensor& lse,
                                             double label_smoothing) {
  check_mixup_ce_inputs(logits, y_a, y_b, lam);
  check_on_cuda(logits, "logits");
  const int64_t batch = logits.size(0);
  check_row_vector(grad_loss, "grad_loss", batch, at::kFloat, logits);
  check_row_vector(lse, "lse", batch, at::kFloat, logits);
  const c10::cuda::CUDAGuard device_guard(logits.device());
  at::Tensor grad_logits = at::empty(logits.sizes(), logits.options());

  gpu::MixupCeBackwardArgs args{};
  args.dtype = kernel_dtype(logits.scalar_type());
  args.grad_loss = grad_loss.const_data_ptr<float>();
  args.logits = logits.const_data_ptr();
  args.logits_row_stride = logits.stride(0);
  args.y_a = y_a.const_data_ptr<int64_t>();
  args.y_b = y_b.const_data_ptr<int64_t>();
  args.lam = lam.const_data_ptr<float>();
  args.lse = lse.const_data_ptr<float>();
  args.label_smoothing = static_cast<float>(label_smoothing);
  args.batch = batch;
  args.num_classes = logits.size(1);
  args.grad_logits = grad_logits.mutable_data_ptr();
  C10_CUDA_CHECK(
      gpu::mixup_ce_backward(args, multiprocessor_count(), at::cuda::getCurrentCUDAStream()));
  return grad_logits;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> soft_target_cross_entropy_cuda(
    const at::Tensor& logits, const at::Tensor& target) {
  check_soft_target_inputs(logits, target);
  check_on_cuda(logits, "logits");
  const c10::cuda::CUDAGuard device_guard(logits.device());
  at::Tensor loss = row_output(logits);
  at::Tensor lse = row_output(logits);
  at::Tensor target_sum = row_output(logits);

  gpu::SoftTargetCeForwardArgs args{};
  args.logits_dtype = kernel_dtype(logits.scalar_type());
  args.logits = logits.const_data_ptr();
  args.logits_row_stride = logits.stride(0);
  args.target_dtype = kernel_dtype(target.scalar_type());
  args.target = target.const_data_ptr();
  args.target_row_stride = target.stride(0);
  args.batch = logits.size(0);
  args.num_classes = logits.size(1);
  args.loss = loss.mutable_data_ptr<float>();
  args.lse = lse.mutable_data_ptr<float>();
  args.target_sum = target_sum.mutable_data_ptr<float>();
  C10_CUDA_CHECK(gpu::soft_target_ce_forward(args, at::cuda::getCurrentCUDAStream()));
  return {loss, lse, target_sum};
}

std::tuple<at::Tensor, at::Tensor> soft_target_cross_entropy_backward_cuda(
    const at::Tensor& grad_loss, const at::Tensor& logits, const at::Tensor& target,
    const at::Tensor& lse, const at::Tensor& target_sum, bool needs_target_grad) {
  check_soft_target_inputs(logits, target);
  check_on_cuda(logits, "logits");
  const int64_t batch = logits.size(0);
  check_row_vector(grad_loss, "grad_loss", batch, at::kFloat, logits);
  check_row_vector(lse, "lse", batch, at::kFloat, logits);
  check_row_vector(target_sum, "target_sum", batch, at::kFloat, logits);
  const c10::cuda::CUDAGuard device_guard(logits.device());
  at::Tensor grad_logits = at::empty(logits.sizes(), logits.options());
  at::Tensor grad_target = needs_target_grad ? at::empty(target.sizes(), target.options())
                                             : at::empty({0}, target.options());

  gpu::SoftTargetCeBackwardArgs args{};
  args.logits_dtype = kernel_dtype(logits.scalar_type());
  args.grad_loss = grad_loss.const_data_ptr<float>();
  args.logits = logits.const_data_ptr();
  args.logits_row_stride = logits.stride(0);
  args.target_dtype = kernel_dtype(target.scalar_type());
  args.target = target.const_data_ptr();
  args.target_row_stride = target.stride(0);
  args.lse = lse.const_data_ptr<float>();
  args.target_sum = target_sum.const_data_ptr<float>();
  args.batch = batch;
  args.num_classes = logits.size(1);
  args.grad_logits = grad_logits.mutable_data_ptr();
  args.grad_target = needs_target_grad ? grad_target.mutable_data_ptr() : nullptr;
  C10_CUDA_CHECK(
      gpu::soft_target_ce_backward(args, multiprocessor_count(), at::cuda::getCurrentCUDAStream()));
  return {grad_logits, grad_target};
}

}  // namespace
}  // namespace mixkernels

TORCH_LIBRARY_IMPL(mixkernels, CUDA, m) {
  m.impl("mixup_cross_entropy", &mixkernels::mixup_cross_entropy_cuda);
  m.impl("mixup_cross_entropy_backward", &mixkernels::mixup_cross_entropy_backward_cuda);
  m.impl("soft_target_cross_entropy", &mixkernels::soft_target_cross_entropy_cuda);
  m.impl("soft_target_cross_entropy_backward", &mixkernels::soft_target_cross_entropy_backward_cuda);
}
