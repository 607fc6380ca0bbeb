// CPU implementations of the cross-entropy ops: checks, allocation and the
// run-time choice of the kernel build for this CPU (DEFAULT, AVX2, AVX512).
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/native/DispatchStub.h>

#include <string>

#ifdef __linux__
#include <sys/mman.h>
#endif
#include <torch/library.h>

#include "cpu/cross_entropy_kernel.h"
#include "mixkernels/checks.h"

namespace mixkernels::cpu {
namespace {

Dtype to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return Dtype::Float;
    case at::kBFloat16: return Dtype::BFloat16;
    case at::kHalf: return Dtype::Half;
    default: TORCH_CHECK(false, "mixkernels: unsupported dtype ", t);
  }
}

// The kernels built for each capability, chosen as ATen chooses its own:
// at::get_cpu_capability() reads the CPU and honours ATEN_CPU_CAPABILITY.
struct Kernels {
  void (*mixup_forward)(const MixupCEForwardArgs&);
  void (*mixup_backward)(const MixupCEBackwardArgs&);
  void (*soft_forward)(const SoftTargetForwardArgs&);
  void (*soft_backward)(const SoftTargetBackwardArgs&);
};

#define MIXKERNELS_KERNELS_OF(capability)                                                   \
  Kernels {                                                                                 \
    &capability::mixup_cross_entropy_forward, &capability::mixup_cross_entropy_backward,    \
        &capability::soft_target_cross_entropy_forward,                                     \
        &capability::soft_target_cross_entropy_backward                                     \
  }

// The capability whose kernel build this process uses.
at::native::CPUCapability kernel_capability() {
#if defined(__x86_64__) || defined(_M_X64)
  // The string form is the one libtorch exports ("DEFAULT", "AVX2", "AVX512").
  const std::string name = at::get_cpu_capability();
  if (name == "AVX512") return at::native::CPUCapability::AVX512;
  if (name == "AVX2") return at::native::CPUCapability::AVX2;
  return at::native::CPUCapability::DEFAULT;
#else
  return at::native::CPUCapability::DEFAULT;  // only the DEFAULT build exists here
#endif
}

const Kernels& kernels() {
  static const Kernels chosen = [] {
    switch (kernel_capability()) {
#if defined(__x86_64__) || defined(_M_X64)
      case at::native::CPUCapability::AVX512: return MIXKERNELS_KERNELS_OF(AVX512);
      case at::native::CPUCapability::AVX2: return MIXKERNELS_KERNELS_OF(AVX2);
#endif
      default: return MIXKERNELS_KERNELS_OF(DEFAULT);
    }
  }();
  return chosen;
}

// A fresh (B, C) gradient is written once, and on Linux its first touch costs
// a page fault per 4 KiB page: for a 128 MiB gradient that was 30-40 ms here,
// more than the arithmetic. Asking for transparent huge pages on the aligned
// interior of the new block cuts the faults 512-fold (the allocator hands out
// fresh mmap-ed memory for blocks this large, so no other tensor shares it).
at::Tensor empty_gradient(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor grad = at::empty(sizes, options);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t{2} << 20;
  const size_t bytes = grad.nbytes();
  if (bytes >= 4 * kHugePage) {
    const auto begin = reinterpret_cast<uintptr_t>(grad.data_ptr());
    const uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1);
    const uintptr_t last = (begin + bytes) & ~(kHugePage - 1);
    if (last > first) {
      // Advice only: if the kernel declines, the memory is used as it is.
      (void)madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
    }
  }
#endif
  return grad;
}

// Labels are read as indices, so they are checked here too (a pass over B
// integers, no cost next to the B x C kernel).
void check_labels(const at::Tensor& y, const char* name, int64_t num_classes) {
  const int64_t* p = y.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < y.numel(); ++i) {
    TORCH_CHECK_INDEX(p[i] >= 0 && p[i] < num_classes, "mixkernels: ", name, "[", i, "] = ", p[i],
                      " is outside [0, ", num_classes, ")");
  }
}

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "mixkernels: ", name, " must be a CPU tensor for the cpu backend");
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
  kernels().mixup_forward(args);
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
  at::Tensor grad = empty_gradient({batch, num_classes}, logits.options());
  MixupCEBackwardArgs args{grad_loss.const_data_ptr<float>(), logits.const_data_ptr(),
                           to_dtype(logits.scalar_type()), batch, num_classes, logits.stride(0),
                           y_a.const_data_ptr<int64_t>(), y_b.const_data_ptr<int64_t>(),
                           lam.const_data_ptr<float>(), lse.const_data_ptr<float>(),
                           static_cast<float>(label_smoothing), grad.mutable_data_ptr()};
  kernels().mixup_backward(args);
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
  kernels().soft_forward(args);
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
  at::Tensor grad = empty_gradient({batch, num_classes}, logits.options());
  at::Tensor grad_target = needs_target_grad ? empty_gradient({batch, num_classes}, target.options())
                                             : at::empty({0}, target.options());
  SoftTargetBackwardArgs args{grad_loss.const_data_ptr<float>(), logits.const_data_ptr(),
                              to_dtype(logits.scalar_type()), target.const_data_ptr(),
                              to_dtype(target.scalar_type()), batch, num_classes, logits.stride(0),
                              target.stride(0), lse.const_data_ptr<float>(), target_sum.const_data_ptr<float>(),
                              grad.mutable_data_ptr(), needs_target_grad ? grad_target.mutable_data_ptr() : nullptr};
  kernels().soft_backward(args);
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
