// CUDA kernels of the image-mixing ops: mix_images (out of place) and
// mix_images_ (in place), the primitive of cutmix_batch and of Mixup's
// per-sample mixup-or-cutmix.
//
// This file includes no torch header (it compiles in seconds); the per-element
// math is mixkernels/mix_math.h's image_box_span, image_box_contains and
// mix_image_element. The access pattern is that of mix_rows_kernel.cu, with
// images as rows: a dense (B, C, H, W) batch, NCHW or channels-last, is B rows
// of S = C * H * W contiguous elements, S apart. Only the weights depend on
// the layout: element e of an image lies on line e / L (L = W for NCHW,
// W * C for channels-last), image row (e / L) % H, at element e % L along the
// line, inside a box (y0, y1, x0, x1) when y0 <= row < y1 and
// x0 * inner <= e % L < x1 * inner (inner = 1 for NCHW, C for channels-last).
// One division pair per 16-byte vector locates its first element; the others
// follow by increments (a vector may cross lines when L is not a multiple of
// it). The index arithmetic within an image is 32-bit when S < 2^31 (a
// template parameter chosen on the host), 64-bit otherwise; image offsets
// i * S are always 64-bit (B * S passes 2^31 for large image batches).
//
// Launch rules:
//
// mix_images: the 2-D grid of mix_rows (columns of the flattened image on x,
//   images on y, grid.y capped at 65535 with a grid-stride loop over images;
//   256-thread blocks, threads_x the power of two covering an image's vectors;
//   up to 4 vectors per thread once the grid has 8 blocks per SM without
//   that). Vectors of 16 bytes aligned to the output image, when the image's
//   and its partner's starts have the output's misalignment (always for a
//   batch with S * sizeof(T) a multiple of 16), scalar otherwise. A vector
//   loads only the operands it uses: where every element's own weight is 0
//   (inside the own box) x[i] is not read, where every partner weight is 0
//   (plain CutMix outside the box) x[src[i]] is not read; CutMix thus moves
//   2 bytes per output byte, not 3.
//
// mix_images_ (in place): the column-strip kernel of mix_rows_ over images:
//   each block owns a strip of the flattened image for ALL B images, copies
//   x[:, strip] into shared memory (cp.async, 16 bytes a slot), waits, then
//   writes the mixed strip back, reading both operands from shared memory, so
//   no value is overwritten before every block that needs it has read it, for
//   any permutation (cycles included), without a temporary batch. A strip is
//   2^k 16-byte slots per image: the widest that keeps B * strip within
//   32 KiB of shared memory while leaving at least 2 strips per SM; B > 2048
//   takes one slot per image and B * 16 bytes, opting in beyond 48 KiB. A
//   slot whose every element keeps its own value (own weight 1, partner
//   weight 0: CutMix outside the box) is not written back. Beyond the
//   device's opt-in shared memory per block (B > ~14.5k on H100, ~10.4k on
//   A100), mix_images into the caller's workspace, then one device-to-device
//   copy back into x. Images whose starts differ in 16-byte misalignment
//   (S * sizeof(T) not a multiple of 16) move slot by slot element-wise.
#include <cstdint>

#include <cuda_runtime.h>
#include <math_constants.h>

#include "dtype_dispatch.cuh"
#include "launch_config.cuh"
#include "mixkernels/mix_math.h"
#include "strip_plan.cuh"
#include "vec_io.cuh"

#include "mix_images_kernel.h"

namespace mixkernels::gpu {
namespace {

using launch::capped;
using launch::ceil_div;
using launch::kMaxGridX;
using launch::kMinBlocksPerSm;
using launch::kThreads;

// Vectors in flight per thread in mix_images (2 loads each): 4 fit in 64
// registers with 32-bit index arithmetic, 2 with 64-bit (4 spill on sm_90).
template <typename Index>
constexpr int kMixUnroll = sizeof(Index) == 4 ? 4 : 2;

// ---------------------------------------------------------------------------
// Weights: which elements lie in which box.

// One image's partner, weights and clamped boxes, in the index type of the
// launch (uint32_t when S < 2^31, else uint64_t). An index outside [0, B)
// makes the image NaN: the partner becomes the image itself, both weights
// NaN and both boxes empty, so nothing is read out of bounds.
template <typename Index>
struct ImageParams {
  int64_t partner;
  float w_self;
  float w_src;
  Index self_y0, self_y1, self_c0, self_c1;  // box_self: image rows, elements along a line
  Index src_y0, src_y1, src_c0, src_c1;      // box_src
};

template <typename Index>
__device__ __forceinline__ ImageParams<Index> image_params(const MixImagesArgs& args, int64_t image) {
  const int64_t src = __ldg(args.src + image);
  const bool valid = src >= 0 && src < args.batch;
  const int64_t* box_self = args.box_self + 4 * image;
  const int64_t* box_src = args.box_src + 4 * image;
  const ImageBoxSpan own = image_box_span(__ldg(box_self), __ldg(box_self + 1), __ldg(box_self + 2),
                                          __ldg(box_self + 3), args.height, args.width, args.inner);
  const ImageBoxSpan other = image_box_span(__ldg(box_src), __ldg(box_src + 1), __ldg(box_src + 2),
                                            __ldg(box_src + 3), args.height, args.width, args.inner);
  ImageParams<Index> p;
  p.partner = valid ? src : image;
  p.w_self = valid ? __ldg(args.w_self + image) : CUDART_NAN_F;
  p.w_src = valid ? __ldg(args.w_src + image) : CUDART_NAN_F;
  // An empty row range empties a box.
  p.self_y0 = static_cast<Index>(own.y0);
  p.self_y1 = static_cast<Index>(valid ? own.y1 : 0);
  p.self_c0 = static_cast<Index>(own.c0);
  p.self_c1 = static_cast<Index>(own.c1);
  p.src_y0 = static_cast<Index>(other.y0);
  p.src_y1 = static_cast<Index>(valid ? other.y1 : 0);
  p.src_c0 = static_cast<Index>(other.c0);
  p.src_c1 = static_cast<Index>(other.c1);
  return p;
}

// Where an element of an image lies: image row (line % H) and element along
// its line.
template <typename Index>
struct Pixel {
  Index row;
  Index column;
};

template <typename Index>
__device__ __forceinline__ Pixel<Index> pixel_at(Index element, Index line_length, Index height) {
  const Index line = element / line_length;
  return Pixel<Index>{line % height, element - line * line_length};
}

// The next element of the image (the first of the next line past a line's end).
template <typename Index>
__device__ __forceinline__ void next_element(Pixel<Index>& p, Index line_length, Index height) {
  if (++p.column == line_length) {
    p.column = 0;
    if (++p.row == height) p.row = 0;
  }
}

template <typename Index>
__device__ __forceinline__ bool in_box(Index y0, Index y1, Index c0, Index c1, const Pixel<Index>& p) {
  return p.row >= y0 && p.row < y1 && p.column >= c0 && p.column < c1;
}

// Bit k set for the elements column + k (k < V) of one line inside [c0, c1).
template <int V, typename Index>
__device__ __forceinline__ unsigned int span_mask(Index column, Index c0, Index c1) {
  const Index lo = c0 > column ? (c0 - column < Index{V} ? c0 - column : Index{V}) : Index{0};
  const Index hi = c1 > column ? (c1 - column < Index{V} ? c1 - column : Index{V}) : Index{0};
  // Empty (0) when hi <= lo.
  return ((1u << static_cast<unsigned>(hi)) - 1u) & ~((1u << static_cast<unsigned>(lo)) - 1u);
}

// Which of the V elements from `p` on lie inside box_self (own) and box_src
// (partner), bit k for element k.
struct BoxMasks {
  unsigned int own;
  unsigned int partner;
};

template <int V, typename Index>
__device__ __forceinline__ BoxMasks box_masks(const ImageParams<Index>& img, Pixel<Index> p,
                                              Index line_length, Index height) {
  BoxMasks m{0u, 0u};
  if (p.column + Index{V} <= line_length) {
    // All on one line (always so when L is a multiple of V): two range tests.
    if (p.row >= img.self_y0 && p.row < img.self_y1) m.own = span_mask<V>(p.column, img.self_c0, img.self_c1);
    if (p.row >= img.src_y0 && p.row < img.src_y1) m.partner = span_mask<V>(p.column, img.src_c0, img.src_c1);
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) {
      if (in_box(img.self_y0, img.self_y1, img.self_c0, img.self_c1, p)) m.own |= 1u << k;
      if (in_box(img.src_y0, img.src_y1, img.src_c0, img.src_c1, p)) m.partner |= 1u << k;
      next_element(p, line_length, height);
    }
  }
  return m;
}

// One output element from the stored bits of its operands and its weights:
// a bit-exact copy where the mix is a copy (w_own, w_partner) = (0, 1) or
// (1, 0), else mix_image_element rounded to T. An operand whose weight is 0
// is never used (it may not have been loaded).
template <typename T>
__device__ __forceinline__ unsigned int mixed_bits(unsigned int own, unsigned int partner, float w_own,
                                                   float w_partner) {
  const unsigned int mixed = Storage<T>::from_float(mix_image_element(
      Storage<T>::to_float(own), Storage<T>::to_float(partner), w_own, w_partner));
  if (w_own == 0.0f && w_partner == 1.0f) return partner;
  if (w_own == 1.0f && w_partner == 0.0f) return own;
  return mixed;
}

template <typename Index>
__device__ __forceinline__ float own_weight(const ImageParams<Index>& img, bool in_own_box) {
  return in_own_box ? 0.0f : img.w_self;
}

template <typename Index>
__device__ __forceinline__ float partner_weight(const ImageParams<Index>& img, bool in_partner_box) {
  return in_partner_box ? 1.0f : img.w_src;
}

// The V elements mixed; own and other hold the operands' bits (zeros where
// not loaded, i.e. where no element uses them).
template <typename T, typename Index>
__device__ __forceinline__ Words mix_vector(const ImageParams<Index>& img, const BoxMasks& m,
                                            const Words& own, const Words& other) {
  constexpr int V = kVec<T>;
  Words mixed{{0u, 0u, 0u, 0u}};
#pragma unroll
  for (int k = 0; k < V; ++k) {
    put_element_bits<T>(mixed, k,
                        mixed_bits<T>(element_bits<T>(own, k), element_bits<T>(other, k),
                                      own_weight(img, (m.own >> k) & 1u),
                                      partner_weight(img, (m.partner >> k) & 1u)));
  }
  return mixed;
}

// ---------------------------------------------------------------------------
// mix_images: out-of-place, elementwise on a 2-D grid (images on y).

template <typename T, typename Index>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    mix_images_kernel(const MixImagesArgs args, T* __restrict__ out) {
  constexpr int V = kVec<T>;
  constexpr unsigned int kAll = (1u << V) - 1u;
  const T* __restrict__ x = static_cast<const T*>(args.x);
  const int64_t sample = args.sample_elements;
  const Index line_length = static_cast<Index>(args.line_length);
  const Index height = static_cast<Index>(args.height);
  const int64_t lane = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t num_lanes = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t image_step = static_cast<int64_t>(gridDim.y) * blockDim.y;

  for (int64_t image = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; image < args.batch;
       image += image_step) {
    const ImageParams<Index> img = image_params<Index>(args, image);
    const T* __restrict__ own_image = x + image * sample;
    const T* __restrict__ partner_image = x + img.partner * sample;
    T* __restrict__ out_image = out + image * sample;

    // Vectors are aligned to the output image; the input images join in when
    // they have the same misalignment (always so when S * sizeof(T) % 16 == 0).
    const int64_t head = elements_to_alignment(out_image);
    const bool vectorized = is_aligned(own_image + head) && is_aligned(partner_image + head);
    for_each_column<V, kMixUnroll<Index>>(0, sample, head, vectorized, lane, num_lanes, [&](int64_t c0, auto width) {
      const Pixel<Index> p = pixel_at(static_cast<Index>(c0), line_length, height);
      if constexpr (decltype(width)::value == 1) {
        const float w_own = own_weight(img, in_box(img.self_y0, img.self_y1, img.self_c0, img.self_c1, p));
        const float w_partner =
            partner_weight(img, in_box(img.src_y0, img.src_y1, img.src_c0, img.src_c1, p));
        const unsigned int own = w_own != 0.0f ? load_bits_readonly(own_image + c0) : 0u;
        const unsigned int other = w_partner != 0.0f ? load_bits_readonly(partner_image + c0) : 0u;
        store_bits(out_image + c0, mixed_bits<T>(own, other, w_own, w_partner));
      } else {
        const BoxMasks m = box_masks<V>(img, p, line_length, height);
        // Load an operand only if some element of the vector weighs it.
        const bool need_own = img.w_self != 0.0f && m.own != kAll;
        const bool need_partner = m.partner != 0u || img.w_src != 0.0f;
        const Words own = need_own ? load_words_readonly(own_image + c0) : Words{{0u, 0u, 0u, 0u}};
        const Words other =
            need_partner ? load_words_readonly(partner_image + c0) : Words{{0u, 0u, 0u, 0u}};
        store_words(out_image + c0, mix_vector<T>(img, m, own, other));
      }
    });
  }
}

// ---------------------------------------------------------------------------
// mix_images_: in place, one strip of every image per block.

// Slot (i, j) of strip s holds elements c0 .. c0+V-1 of image i, with
// c0 = s * strip_elements - misalignment + j * V; in vectorized mode every c0
// is an aligned element. Slots that reach outside [0, S) are filled and
// written element by element (the image's head and tail), as are all slots
// when !vectorized.
template <typename T, typename Index>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    mix_images_inplace_kernel(const MixImagesArgs args, T* __restrict__ x, const StripPlan plan) {
  constexpr int V = kVec<T>;
  extern __shared__ Words tile[];  // [B][2^log2_strip_vectors]

  const int64_t sample = args.sample_elements;
  const Index line_length = static_cast<Index>(args.line_length);
  const Index height = static_cast<Index>(args.height);
  const int log2_vectors = plan.log2_strip_vectors;
  const int strip_mask = (1 << log2_vectors) - 1;
  // The plan keeps B * strip within the launch's shared memory (< 2^31 bytes).
  const int num_slots = static_cast<int>(args.batch) << log2_vectors;
  const int64_t strip_elements = static_cast<int64_t>(V) << log2_vectors;

  for (int64_t strip = blockIdx.x; strip < plan.num_strips; strip += gridDim.x) {
    const int64_t strip_begin = strip * strip_elements - plan.misalignment;

    load_strip(tile, x, sample, sample, strip_begin, num_slots, plan);

    // Write the mixed strip back; both operands come from the tile.
    for (int slot = threadIdx.x; slot < num_slots; slot += blockDim.x) {
      const int64_t image = slot >> log2_vectors;
      const int j = slot & strip_mask;
      const int64_t c0 = strip_begin + static_cast<int64_t>(j) * V;
      const ImageParams<Index> img = image_params<Index>(args, image);
      const Words own = tile[slot];
      const Words other = tile[(static_cast<int>(img.partner) << log2_vectors) | j];
      T* image_ptr = x + image * sample;
      if (c0 >= 0 && c0 + V <= sample) {
        const BoxMasks m = box_masks<V>(img, pixel_at(static_cast<Index>(c0), line_length, height),
                                        line_length, height);
        // Every element keeps its own value: nothing to write.
        if (m.own == 0u && m.partner == 0u && img.w_self == 1.0f && img.w_src == 0.0f) continue;
        const Words mixed = mix_vector<T>(img, m, own, other);
        if (plan.vectorized) {
          store_words(image_ptr + c0, mixed);
        } else {
#pragma unroll
          for (int k = 0; k < V; ++k) store_bits(image_ptr + c0 + k, element_bits<T>(mixed, k));
        }
      } else {
#pragma unroll
        for (int k = 0; k < V; ++k) {
          const int64_t c = c0 + k;
          if (c < 0 || c >= sample) continue;
          const Pixel<Index> p = pixel_at(static_cast<Index>(c), line_length, height);
          const float w_own = own_weight(img, in_box(img.self_y0, img.self_y1, img.self_c0, img.self_c1, p));
          const float w_partner =
              partner_weight(img, in_box(img.src_y0, img.src_y1, img.src_c0, img.src_c1, p));
          if (w_own == 1.0f && w_partner == 0.0f) continue;  // keeps its value
          store_bits(image_ptr + c,
                     mixed_bits<T>(element_bits<T>(own, k), element_bits<T>(other, k), w_own, w_partner));
        }
      }
    }
    // The next strip (if this block has one) overwrites the tile.
    __syncthreads();
  }
}

// ---------------------------------------------------------------------------
// Launch configuration (host).

// The in-place strip plan (strip_plan.cuh, images as rows); false when one
// 16-byte slot per image does not fit the device's shared memory (then the
// caller needs a temporary batch).
bool plan_image_strips(const MixImagesArgs& args, int max_shared_bytes, int num_sms, StripPlan* plan) {
  return plan_strips(args.dtype, args.x, args.batch, args.sample_elements, args.sample_elements, max_shared_bytes,
                     num_sms, plan);
}

bool empty_problem(const MixImagesArgs& args) { return args.batch <= 0 || args.sample_elements <= 0; }

}  // namespace

cudaError_t mix_images(const MixImagesArgs& args, void* out, int num_sms, cudaStream_t stream) {
  if (empty_problem(args)) return cudaSuccess;
  return dispatch_dtype_and_index(args.dtype, args.sample_elements, [&](auto storage, auto index) {
    using T = typename decltype(storage)::type;
    using Index = typename decltype(index)::type;
    const launch::LaunchConfig config = launch::elementwise_config(args.batch, args.sample_elements, kVec<T>,
                                                                   num_sms, kThreads);
    mix_images_kernel<T, Index><<<config.grid, config.block, 0, stream>>>(args, static_cast<T*>(out));
    return cudaGetLastError();
  });
}

int64_t mix_images_inplace_workspace_bytes(const MixImagesArgs& args, int max_shared_bytes) {
  if (empty_problem(args)) return 0;
  StripPlan plan;
  if (plan_image_strips(args, max_shared_bytes, 1, &plan)) return 0;
  return args.batch * args.sample_elements * element_size(args.dtype);
}

cudaError_t mix_images_inplace(void* x, const MixImagesArgs& args, void* workspace, int num_sms,
                               int max_shared_bytes, cudaStream_t stream) {
  if (empty_problem(args)) return cudaSuccess;
  if (x != args.x) return cudaErrorInvalidValue;
  StripPlan plan;
  if (!plan_image_strips(args, max_shared_bytes, num_sms, &plan)) {
    // The batch is too tall for a strip of every image in shared memory: mix
    // into the temporary batch (x's layout, packed), then copy it back.
    if (workspace == nullptr) return cudaErrorInvalidValue;
    const cudaError_t status = mix_images(args, workspace, num_sms, stream);
    if (status != cudaSuccess) return status;
    const size_t bytes =
        static_cast<size_t>(args.batch * args.sample_elements * element_size(args.dtype));
    return cudaMemcpyAsync(x, workspace, bytes, cudaMemcpyDeviceToDevice, stream);
  }
  return dispatch_dtype_and_index(args.dtype, args.sample_elements, [&](auto storage, auto index) {
    using T = typename decltype(storage)::type;
    using Index = typename decltype(index)::type;
    const cudaError_t status = allow_strip_shared_memory(mix_images_inplace_kernel<T, Index>, plan.shared_bytes);
    if (status != cudaSuccess) return status;
    const dim3 grid(static_cast<unsigned>(capped(plan.num_strips, kMaxGridX)));
    mix_images_inplace_kernel<T, Index>
        <<<grid, kThreads, plan.shared_bytes, stream>>>(args, static_cast<T*>(x), plan);
    return cudaGetLastError();
  });
}

}  // namespace mixkernels::gpu
