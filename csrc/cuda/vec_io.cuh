// Element and 16-byte vector access for the memory-bound CUDA kernels
// (mix_rows, mix_images, mask_mix; the cross-entropy kernels use the
// alignment helpers and the column visitor). Torch-free.
//
// Loads and stores move raw bits, so a kept or pasted element is copied bit
// for bit; conversions to and from fp32 are explicit (torch builds with
// __CUDA_NO_HALF_CONVERSIONS__). 16 bytes travel as four 32-bit words, one
// element as 16 or 32 bits.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace mixkernels::gpu {

constexpr int kVectorBytes = 16;

template <typename T>
struct Storage;
template <>
struct Storage<float> {
  using Bits = unsigned int;
  __device__ static float to_float(unsigned int bits) { return __uint_as_float(bits); }
  __device__ static unsigned int from_float(float v) { return __float_as_uint(v); }
};
template <>
struct Storage<__half> {
  using Bits = unsigned short;
  __device__ static float to_float(unsigned int bits) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(bits)));
  }
  // Round to nearest even, as torch's .to(float16) does.
  __device__ static unsigned int from_float(float v) { return __half_as_ushort(__float2half_rn(v)); }
};
template <>
struct Storage<__nv_bfloat16> {
  using Bits = unsigned short;
  // Exact: a bfloat16 is the upper half of a float32.
  __device__ static float to_float(unsigned int bits) { return __uint_as_float(bits << 16); }
  __device__ static unsigned int from_float(float v) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(v));
  }
};

template <typename T>
constexpr int kVec = kVectorBytes / static_cast<int>(sizeof(T));  // elements per 16 bytes
template <typename T>
constexpr int kPerWord = 4 / static_cast<int>(sizeof(T));  // elements per 32-bit word

// 16 bytes of elements; element k lives in word k / kPerWord, lower columns in
// lower bits (little endian).
struct alignas(16) Words {
  unsigned int w[4];
};

template <typename T>
__device__ __forceinline__ unsigned int element_bits(const Words& v, int k) {
  const unsigned int word = v.w[k / kPerWord<T>];
  if constexpr (kPerWord<T> == 1) {
    return word;
  } else {
    return (word >> (16 * (k % kPerWord<T>))) & 0xffffu;
  }
}

// `v` must start zeroed.
template <typename T>
__device__ __forceinline__ void put_element_bits(Words& v, int k, unsigned int bits) {
  v.w[k / kPerWord<T>] |= bits << (kPerWord<T> == 1 ? 0 : 16 * (k % kPerWord<T>));
}

template <typename T>
__device__ __forceinline__ float unpack(const Words& v, int k) {
  return Storage<T>::to_float(element_bits<T>(v, k));
}

// `v` must start zeroed.
template <typename T>
__device__ __forceinline__ void pack(Words& v, int k, float value) {
  put_element_bits<T>(v, k, Storage<T>::from_float(value));
}

// Read-only path (ld.global.nc): for inputs that no thread writes while the
// kernel runs (the out-of-place kernels write only fresh outputs).
__device__ __forceinline__ Words load_words_readonly(const void* p) {
  const uint4 u = __ldg(reinterpret_cast<const uint4*>(p));
  return Words{{u.x, u.y, u.z, u.w}};
}

template <typename T>
__device__ __forceinline__ unsigned int load_bits_readonly(const T* p) {
  return __ldg(reinterpret_cast<const typename Storage<T>::Bits*>(p));
}

template <typename T>
__device__ __forceinline__ float load_readonly(const T* p) {
  return Storage<T>::to_float(load_bits_readonly(p));
}

// One st.global.v4.b32 in inline PTX: NVVM splits a uint4 or struct store
// into per-element stores when the words were assembled from narrower values
// (seen with CUDA 13.0, see cross_entropy_kernel.cu). No memory clobber: the
// asm has no other effect the compiler must order.
__device__ __forceinline__ void store_words(void* p, const Words& v) {
  const size_t address = __cvta_generic_to_global(p);
  asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(address), "r"(v.w[0]),
               "r"(v.w[1]), "r"(v.w[2]), "r"(v.w[3]));
}

template <typename T>
__device__ __forceinline__ void store_bits(T* p, unsigned int bits) {
  using Bits = typename Storage<T>::Bits;
  *reinterpret_cast<Bits*>(p) = static_cast<Bits>(bits);
}

template <typename T>
__device__ __forceinline__ void store(T* p, float value) {
  store_bits(p, Storage<T>::from_float(value));
}

// Elements from p to the first address that is a multiple of kAlign bytes
// (0 when aligned). Tensor data is always element-aligned, so this is exact.
template <int kAlign = kVectorBytes, typename T>
__host__ __device__ __forceinline__ int64_t elements_to_alignment(const T* p) {
  const auto misalignment = static_cast<unsigned>(reinterpret_cast<uintptr_t>(p) % kAlign);
  return misalignment == 0 ? 0 : static_cast<int64_t>((kAlign - misalignment) / sizeof(T));
}

template <int kAlign = kVectorBytes>
__device__ __forceinline__ bool is_aligned(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % kAlign == 0;
}

// Tag carrying the number of columns a visitor call covers.
template <int N>
struct Width {
  static constexpr int value = N;
};

// Visits the columns [begin, end) of a row, shared by `num_lanes` threads of
// which this one is `lane`: visit(c, Width<1>{}) handles column c,
// visit(c, Width<V>{}) columns c .. c+V-1 starting at an aligned column. The
// aligned columns are those congruent to `head` modulo V; with
// vectorized == false every column goes one at a time. The vector loop is
// unrolled kUnroll times so that each thread has several loads in flight.
template <int V, int kUnroll, typename Visit>
__device__ __forceinline__ void for_each_column(int64_t begin, int64_t end, int64_t head,
                                                bool vectorized, int64_t lane, int64_t num_lanes,
                                                Visit&& visit) {
  static_assert((V & (V - 1)) == 0, "V is a power of two");
  int64_t vector_begin = end, vector_end = end;
  if (vectorized && begin < end) {
    // (head - begin) mod V, non-negative for either sign (two's complement).
    const int64_t to_aligned = (head - begin) & (V - 1);
    vector_begin = begin + to_aligned < end ? begin + to_aligned : end;
    vector_end = vector_begin + (end - vector_begin) / V * V;
  }
  for (int64_t c = begin + lane; c < vector_begin; c += num_lanes) visit(c, Width<1>{});
  const int64_t num_vectors = (vector_end - vector_begin) / V;
#pragma unroll kUnroll
  for (int64_t v = lane; v < num_vectors; v += num_lanes) visit(vector_begin + v * V, Width<V>{});
  for (int64_t c = vector_end + lane; c < end; c += num_lanes) visit(c, Width<1>{});
}

}  // namespace mixkernels::gpu
