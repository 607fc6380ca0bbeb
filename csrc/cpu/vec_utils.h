// Vector helpers for the CPU kernel files (*_kernel.cpp), which are compiled
// once per capability: everything here lands in mixkernels::cpu::<capability>.
#pragma once

#ifndef CPU_CAPABILITY
#error "CPU kernel files must be compiled with -DCPU_CAPABILITY=<DEFAULT|AVX2|AVX512> (see setup.py)"
#endif

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <tuple>

#include "cpu/dtype.h"

namespace mixkernels::cpu::CPU_CAPABILITY {
namespace {

using Vec = at::vec::Vectorized<float>;

// Loads and stores kChunk consecutive elements as two fp32 vectors, whatever
// the storage type. A chunk is one Vectorized<BFloat16/Half>, which holds
// exactly two float vectors' worth of elements.
constexpr int64_t kChunk = 2 * Vec::size();

template <typename T>
struct Chunk {
  static_assert(at::vec::Vectorized<T>::size() == kChunk, "reduced-float vector must hold 2 float vectors");
  static inline void load(const T* p, Vec& lo, Vec& hi) {
    std::tie(lo, hi) = at::vec::convert_to_float<T>(at::vec::Vectorized<T>::loadu(p));
  }
  static inline void store(T* p, const Vec& lo, const Vec& hi) {
    at::vec::convert_from_float<T>(lo, hi).store(p);
  }
};

template <>
struct Chunk<float> {
  static inline void load(const float* p, Vec& lo, Vec& hi) {
    lo = Vec::loadu(p);
    hi = Vec::loadu(p + Vec::size());
  }
  static inline void store(float* p, const Vec& lo, const Vec& hi) {
    lo.store(p);
    hi.store(p + Vec::size());
  }
};

// exp of a vector. ATen's exp_u20 (a polynomial, at most 20 ulp off, the one
// ATen's own softmax kernels use) rather than Sleef's 1-ulp expf: exp is the
// whole arithmetic cost of these kernels, and the 1-ulp version was about twice
// as slow for no difference that survives the fp32 sum over a row. exp_u20
// does not return NaN for NaN; the blend restores it, so NaN and inf in the
// logits propagate as they do in torch.
inline Vec vexp(const Vec& x) {
  return Vec::blendv(x.exp_u20(), x, x.isnan());
}

template <typename T>
inline float to_float(T v) {
  return static_cast<float>(v);
}

// Calls f(T{}) with T the C++ storage type of `dtype`.
template <typename F>
inline void dispatch_dtype(Dtype dtype, F&& f) {
  switch (dtype) {
    case Dtype::Float: f(float{}); break;
    case Dtype::BFloat16: f(c10::BFloat16{}); break;
    case Dtype::Half: f(c10::Half{}); break;
  }
}

// Rows per parallel task: enough elements per task to amortise scheduling.
inline int64_t row_grain(int64_t row_length) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, row_length));
}

}  // namespace
}  // namespace mixkernels::cpu::CPU_CAPABILITY
