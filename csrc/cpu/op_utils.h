// Helpers for the CPU op implementations (the ATen side of the kernels):
// dtype mapping, the run-time choice of kernel build, and allocation.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/native/DispatchStub.h>

#include <cstdint>
#include <string>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#endif

#include "cpu/dtype.h"

namespace mixkernels::cpu {

inline Dtype to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return Dtype::Float;
    case at::kBFloat16: return Dtype::BFloat16;
    case at::kHalf: return Dtype::Half;
    default: TORCH_CHECK(false, "mixkernels: unsupported dtype ", t);
  }
}

// The capability whose kernel build this process uses, chosen as ATen chooses
// its own: at::get_cpu_capability() reads the CPU and honours ATEN_CPU_CAPABILITY.
inline at::native::CPUCapability kernel_capability() {
#if defined(__x86_64__) || defined(_M_X64)
  // The string form is the one libtorch exports ("DEFAULT", "AVX2", "AVX512").
  static const at::native::CPUCapability chosen = [] {
    const std::string name = at::get_cpu_capability();
    if (name == "AVX512") return at::native::CPUCapability::AVX512;
    if (name == "AVX2") return at::native::CPUCapability::AVX2;
    return at::native::CPUCapability::DEFAULT;
  }();
  return chosen;
#else
  return at::native::CPUCapability::DEFAULT;  // only the DEFAULT build exists here
#endif
}

// The build of kernel `name` for this CPU: every *_kernel.cpp is compiled once
// per capability into namespace mixkernels::cpu::<capability> (see setup.py).
#if defined(__x86_64__) || defined(_M_X64)
#define MIXKERNELS_CPU_KERNEL(name)                                                  \
  (::mixkernels::cpu::kernel_capability() == at::native::CPUCapability::AVX512       \
       ? &::mixkernels::cpu::AVX512::name                                            \
   : ::mixkernels::cpu::kernel_capability() == at::native::CPUCapability::AVX2       \
       ? &::mixkernels::cpu::AVX2::name                                              \
       : &::mixkernels::cpu::DEFAULT::name)
#else
#define MIXKERNELS_CPU_KERNEL(name) (&::mixkernels::cpu::DEFAULT::name)
#endif

// A new tensor for a kernel to write in full. On Linux, the first touch of
// fresh memory costs a page fault per 4 KiB page: for a 128 MiB output that
// was 30-40 ms here, more than the arithmetic. Asking for transparent huge
// pages on the aligned interior of a large block cuts the faults 512-fold (the
// allocator hands out fresh mmap-ed memory for blocks this large, so no other
// tensor shares it).
inline void advise_huge_pages(const at::Tensor& fresh) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t{2} << 20;
  const size_t bytes = fresh.nbytes();
  if (bytes >= 4 * kHugePage) {
    const auto begin = reinterpret_cast<uintptr_t>(fresh.data_ptr());
    const uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1);
    const uintptr_t last = (begin + bytes) & ~(kHugePage - 1);
    if (last > first) {
      // Advice only: if the kernel declines, the memory is used as it is.
      (void)madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
    }
  }
#endif
}

inline at::Tensor empty_for_writing(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor out = at::empty(sizes, options);
  advise_huge_pages(out);
  return out;
}

// The same, with the shape, dtype and memory format (dense layout) of `like`.
inline at::Tensor empty_like_for_writing(const at::Tensor& like) {
  at::Tensor out = at::empty_like(like, at::MemoryFormat::Preserve);
  advise_huge_pages(out);
  return out;
}

inline void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "mixkernels: ", name, " must be a CPU tensor for the cpu backend");
}

// src must be a permutation of [0, B): every kernel reads x[src[i]], and the
// gradients and the in-place paths rely on each sample being read exactly
// once. O(B) on the host, no cost next to the (B, N) kernels. src: int64 (B,),
// contiguous, on the CPU (checked by the caller).
inline void check_permutation(const at::Tensor& src) {
  const int64_t batch = src.size(0);
  const int64_t* p = src.const_data_ptr<int64_t>();
  std::vector<char> seen(static_cast<size_t>(batch), 0);
  for (int64_t i = 0; i < batch; ++i) {
    TORCH_CHECK_INDEX(p[i] >= 0 && p[i] < batch, "mixkernels: src[", i, "] = ", p[i], " is outside [0, ",
                      batch, ")");
    TORCH_CHECK_VALUE(!seen[p[i]], "mixkernels: src is not a permutation: ", p[i], " appears twice");
    seen[p[i]] = 1;
  }
}

}  // namespace mixkernels::cpu
