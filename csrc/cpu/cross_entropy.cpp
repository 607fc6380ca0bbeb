// CPU implementations of the cross-entropy ops: checks, allocation and the
// run-time choice of the kernel build for this CPU (DEFAULT, AVX2, AVX512).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>

#include "cpu/cross_entropy_kernel.h"
#include "cpu/op_utils.h"
#include "mixkernels/checks.h"

namespace mixkernels::cpu {
namespace {

// Labels are read as indices, so they are checked here too (a pass over B
// integers, no cost next to the B x C kernel).
void check_labels(const at::Tensor& y, const char* name, int64_t num_classes) {
  const int64_t* p = y.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < y.numel(); ++i) {
    TORCH_CHECK_INDEX(p[i] >= 0 && p[i] < num_classes, "mixkernels: ", name, "[", i, "] = ", p[i],
                      " is outside [0, ", num_classes, ")");
  }
}


std::tuple<at::Tensor, at::Tensor> mixup_cross_entropy_cpu(const at::Tensor& logits, const at::Tensor& y_a,
                                                           const at::Tensor& y_b, const at::Tensor& lam,
                                                           double label_smoothing) {
  check_cpu(logits, "logits");
  check_mixup_ce_inputs(logits, y_a, y_b, lam);
  const int64_t batch = logits.size(0), num_classes = logits.size(1);
  check_labels(y_a, "y_a", num_classes);
  check_labels(y_b, "y_b", num_classes);
  auto opts = logits.options().dtype(at::kFloat);
  at::Tensor loss = at::empty({batch}, opts), lse = at::empty({batch}, opts);
  MixupCEForwardArgs args{logits.const_data_ptr(), to_dtype(logits.scalar_type()), batch, num_classes,
                          logits.stride(0), y_a.const_data_ptr<int64_t>(), y_b.const_data_ptr<int64_t>(),
                          lam.const_data_ptr<float>(), static_cast<float>(label_smoothing),
                          loss.mutable_data_ptr<float>(), lse.mutable_data_ptr<float>()};
  MIXKERNELS_CPU_KERNEL(mixup_cross_entropy_forward)(args);
  return {loss, lse};
}

at::Tensor mixup_cross_entropy_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& logits,
                                            const at::Tensor& y_a, const at::Tensor& y_b, const at::Tensor& lam,
                                            const at::Tensor& lse, double label_smoothing) {
  check_cpu(logits, "logits");
  check_mixup_ce_inputs(logits, y_a, y_b, lam);
  const int64_t batch = logits.size(0), num_classes = logits.size(1);
  check_row_vector(grad_loss, "grad_loss", batch, at::kFloat, logits);
  check_row_vector(lse, "lse", batch, at::kFloat, logits);
  check_labels(y_a, "y_a", num_classes);
  check_labels(y_b, "y_b", num_classes);
  at::Tensor grad = empty_for_writing({batch, num_classes}, logits.options());
  MixupCEBackwardArgs args{grad_loss.const_data_ptr<float>(), logits.const_data_ptr(),
                           to_dtype(logits.scalar_type()), batch, num_classes, logits.stride(0),
                           y_a.const_data_ptr<int64_t>(), y_b.const_data_ptr<int64_t>(),
                           lam.const_data_ptr<float>(), lse.const_data_ptr<float>(),
                           static_cast<float>(label_smoothing), grad.mutable_data_ptr()};
  MIXKERNELS_CPU_KERNEL(mixup_cross_entropy_backward)(args);
  return grad;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> soft_target_cross_entropy_cpu(const at::Tensor& logits,
                                                                             const at::Tensor& target) {
  check_cpu(logits, "logits");
  check_soft_target_inputs(logits, target);
  const int64_t batch = logits.size(0), num_classes = logits.size(1);
  auto opts = logits.options().dtype(at::kFloat);
  at::Tensor loss = at::empty({batch}, opts), lse = at::empty({batch}, opts),
             target_sum = at::empty({batch}, opts);
  SoftTargetForwardArgs args{logits.const_data_ptr(), to_dtype(logits.scalar_type()), target.const_data_ptr(),
                             to_dtype(target.scalar_type()), batch, num_classes, logits.stride(0),
                             target.stride(0), loss.mutable_data_ptr<float>(), lse.mutable_data_ptr<float>(),
                             target_sum.mutable_data_ptr<float>()};
  MIXKERNELS_CPU_KERNEL(soft_target_cross_entropy_forward)(args);
  return {loss, lse, target_sum};
}

std::tuple<at::Tensor, at::Tensor> soft_target_cross_entropy_backward_cpu(
    const at::Tensor& grad_loss, const at::Tensor& logits, const at::Tensor& target, const at::Tensor& lse,
    const at::Tensor& target_sum, bool needs_target_grad) {
  check_cpu(logits, "logits");
  check_soft_target_inputs(logits, target);
  const int64_t batch = logits.size(0), num_classes = logits.size(1);
  check_row_vector(grad_loss, "grad_loss", batch, at::kFloat, logits);
  check_row_vector(lse, "lse", batch, at::kFloat, logits);
  check_row_vector(target_sum, "target_sum", batch, at::kFloat, logits);
  at::Tensor grad = empty_for_writing({batch, num_classes}, logits.options());
  at::Tensor grad_target = needs_target_grad ? empty_for_writing({batch, num_classes}, target.options())
                                             : at::empty({0}, target.options());
  SoftTargetBackwardArgs args{grad_loss.const_data_ptr<float>(), logits.const_data_ptr(),
                              to_dtype(logits.scalar_type()), target.const_data_ptr(),
                              to_dtype(target.scalar_type()), batch, num_classes, logits.stride(0),
                              target.stride(0), lse.const_data_ptr<float>(), target_sum.const_data_ptr<float>(),
                              grad.mutable_data_ptr(), needs_target_grad ? grad_target.mutable_data_ptr() : nullptr};
  MIXKERNELS_CPU_KERNEL(soft_target_cross_entropy_backward)(args);
  return {grad, grad_target};
}

}  // namespace

TORCH_LIBRARY_IMPL(mixkernels, CPU, m) {
  m.impl("mixup_cross_entropy", &mixup_cross_entropy_cpu);
  m.impl("mixup_cross_entropy_backward", &mixup_cross_entropy_backward_cpu);
  m.impl("soft_target_cross_entropy", &soft_target_cross_entropy_cpu);
  m.impl("soft_target_cross_entropy_backward", &soft_target_cross_entropy_backward_cpu);
}

}  // namespace mixkernels::cpu

// Which kernel build this process uses, for mixkernels.backends() and tests.
TORCH_LIBRARY_FRAGMENT(mixkernels, m) {
  m.def("cpu_kernel_capability() -> str", []() -> std::string {
    switch (mixkernels::cpu::kernel_capability()) {
      case at::native::CPUCapability::AVX512: return "AVX512";
      case at::native::CPUCapability::AVX2: return "AVX2";
      default: return "DEFAULT";
    }
  });
}
