// CUDA kernels of mask_mix and mask_mix_backward (AutoMix, SAMix): images
// mixed per pixel through a low-resolution mask that is upsampled inside the
// kernels, never stored.
//
// This file includes no torch header (it compiles in seconds); the per-pixel
// math (which mask cells a pixel reads, with which weights, and their blend)
// is mixkernels/mask_math.h's, which the CPU kernels use too, and the mix is
// mix_math.h's mix_element: the forward and grad_x round exactly as the CPU
// kernels do (every product and sum rounded to fp32, no fused multiply-add).
//
// Mixing (the forward, and grad_x: the same mix of grad through the inverse
// permutation, with the partner's own mask): 1-D grid over tiles of
// `tile_rows` image rows (of the flattened (sample, row) space) by
// `tile_pixels` pixel columns. A block first computes the upsampled mask of
// its tile into shared memory (for grad_x, the partner's too), then mixes
// every line of the tile's rows: 256 threads as threads_x (the power of two
// covering a line's span of 16-byte vectors) by threads_y (lines of the tile,
// every channel's line for NCHW), so a mask value costs its taps once per
// tile, not once per channel, whatever the layout. Vectors of 16 bytes are
// aligned to the output line; both operands join in when they share its
// misalignment (else that line goes element by element). Tiles hold about
// 4 vectors per thread, at most 1024 pixels (64 rows, 512 columns), and at
// most a quarter of an SM's share of the batch, so small batches still fill
// the GPU.
//
// Mask gradient, deterministic without atomics, in three passes:
//   1. d(i, y, x) = sum_c grad * (x[i] - x[src[i]]) per pixel, summed in
//      channel order, into fp32 scratch (B, H, W): a thread owns a 16-byte
//      vector of pixels across all channels (NCHW) or one pixel (its channels
//      are contiguous, read 16 bytes at a time where aligned) (channels-last);
//      the 2-D elementwise grid of mix_images (image rows on y).
//   2. U's row taps transposed: e(i, r, x) = sum over the image rows y that
//      read mask row r of w(y, r) * d(i, y, x), into fp32 scratch (B, h, W).
//   3. U's column taps transposed: grad_mask(i, r, s) = sum over the columns x
//      that read mask column s of w(x, s) * e(i, r, x).
//   Passes 2 and 3 are one gather kernel: a thread per output sums its
//   readers in ascending order (they are a contiguous range, taps being
//   monotone: the first found by bisection over the taps themselves), so
//   every sum has a fixed order independent of the launch.
// The index arithmetic within an image is 32-bit when C * H * W < 2^31 (a
// template parameter chosen on the host), 64-bit otherwise; sample offsets
// i * C * H * W are always 64-bit.
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math_constants.h>

#include "dtype_dispatch.cuh"
#include "launch_config.cuh"
#include "mixkernels/mask_math.h"
#include "mixkernels/mix_math.h"
#include "vec_io.cuh"

#include "mask_mix_kernel.h"

namespace mixkernels::gpu {
namespace {

using launch::capped;
using launch::ceil_div;
using launch::kMinBlocksPerSm;
using launch::kThreads;

// Shape limits of a mixing tile, whose row and column taps and mask values
// live in shared memory (about 16 KiB; grad_x keeps the partner's mask too).
constexpr int kMaxTilePixels = 1024;
constexpr int kMaxTileRows = 64;
constexpr int kMaxTileColumns = 512;
// Vectors per thread a mixing tile aims for.
constexpr int kTileVectorsPerThread = 4;
// Tiles per SM below which tiles shrink (small batches).
constexpr int kTilesPerSm = 4;

// ---------------------------------------------------------------------------
// Mixing: out[i] = m_i * in[i] + w_partner * in[p], p = partner[i].
// Forward: in = x, partner = src, w_partner = 1 - m_i.
// grad_x:  in = grad, partner = inv, w_partner = 1 - m_p (kPartnerMask).

struct MixPass {
  const void* in;
  const int64_t* partner;
  MaskMixImage image;
  MaskMixMask mask;
  void* out;
};

struct TilePlan {
  int64_t num_tiles;
  int64_t column_tiles;  // tiles across an image row
  int tile_rows;         // at most kMaxTileRows
  int tile_pixels;       // at most kMaxTileColumns; a multiple of the vector width, or the image width
};

// What a tile needs of one of its image rows: where its line k starts in the
// images (base + k * line_stride, own and partner), the mask rows it blends
// (offsets into the mask data, own and partner) and its row tap's weights.
// An image whose partner index is bad has valid == 0 and reads itself.
struct TileRow {
  int64_t base, partner_base;
  int64_t mask_first, mask_second, partner_mask_first, partner_mask_second;
  float w_first, w_second;
  int valid;
};

// A tile column's tap along W (mask columns fit 32 bits: the launcher checks).
struct TileColumn {
  int first, second;
  float w_first, w_second;
};

// The upsampled mask at one pixel, in fp32, as the CPU kernel computes it:
// the pixel's two mask rows (`first_row`, `second_row`) each interpolated
// along W with the column's tap, then the two blended along H with the row's.
__device__ __forceinline__ float upsampled_mask(bool bilinear, const float* __restrict__ first_row,
                                                const float* __restrict__ second_row, const AxisTap& row,
                                                const AxisTap& column) {
  if (!bilinear) return __ldg(first_row + column.first);
  const float top = blend_taps(true, __ldg(first_row + column.first), __ldg(first_row + column.second), column);
  const float bottom = blend_taps(true, __ldg(second_row + column.first), __ldg(second_row + column.second), column);
  return blend_taps(true, top, bottom, row);
}

template <typename T, typename Index, bool kPartnerMask>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    mask_mix_kernel(const MixPass pass, const TilePlan plan) {
  constexpr int V = kVec<T>;
  __shared__ TileRow tile_rows[kMaxTileRows];
  __shared__ TileColumn tile_columns[kMaxTileColumns];
  // Per tile pixel (r, px) at r * pixels + px: the own weight m_i, and for
  // grad_x the partner's 1 - m_p (the forward derives 1 - m_i); NaN for an
  // image whose partner index is bad.
  __shared__ float own_weights[kMaxTilePixels];
  __shared__ float partner_weights[kPartnerMask ? kMaxTilePixels : 1];

  const MaskMixImage& im = pass.image;
  const MaskMixMask& mask = pass.mask;
  const T* __restrict__ in = static_cast<const T*>(pass.in);
  T* __restrict__ out = static_cast<T*>(pass.out);
  const int64_t total_rows = im.batch * im.height;
  const int threads = static_cast<int>(blockDim.x * blockDim.y);
  const int thread = static_cast<int>(threadIdx.y * blockDim.x + threadIdx.x);
  const Index inner = static_cast<Index>(im.inner);

  for (int64_t tile = blockIdx.x; tile < plan.num_tiles; tile += gridDim.x) {
    const int64_t first_row = tile / plan.column_tiles * plan.tile_rows;
    const int64_t x0 = tile % plan.column_tiles * plan.tile_pixels;
    const int rows = static_cast<int>(capped(plan.tile_rows, total_rows - first_row));
    const int pixels = static_cast<int>(capped(plan.tile_pixels, im.width - x0));

    // The taps of the tile's rows and columns, each computed once per tile.
    for (int r = thread; r < rows; r += threads) {
      const int64_t row = first_row + r;
      const int64_t sample = row / im.height;
      const int64_t y = row - sample * im.height;
      const int64_t partner = __ldg(pass.partner + sample);
      const bool valid = partner >= 0 && partner < im.batch;
      const int64_t other = valid ? partner : sample;
      const AxisTap tap = axis_tap(mask.bilinear, y, mask.height, im.height);
      const int64_t line = y * im.row_stride;
      tile_rows[r] = TileRow{sample * im.sample_elements + line,
                             other * im.sample_elements + line,
                             (sample * mask.height + tap.first) * mask.width,
                             (sample * mask.height + tap.second) * mask.width,
                             (other * mask.height + tap.first) * mask.width,
                             (other * mask.height + tap.second) * mask.width,
                             tap.w_first,
                             tap.w_second,
                             valid ? 1 : 0};
    }
    for (int px = thread; px < pixels; px += threads) {
      const AxisTap tap = axis_tap(mask.bilinear, x0 + px, mask.width, im.width);
      tile_columns[px] = TileColumn{static_cast<int>(tap.first), static_cast<int>(tap.second), tap.w_first,
                                    tap.w_second};
    }
    __syncthreads();

    // The tile's mask weights.
    for (int r = threadIdx.y; r < rows; r += blockDim.y) {
      const TileRow& row = tile_rows[r];
      const AxisTap row_tap{0, 0, row.w_first, row.w_second};
      for (int px = threadIdx.x; px < pixels; px += blockDim.x) {
        const TileColumn& column = tile_columns[px];
        const AxisTap column_tap{column.first, column.second, column.w_first, column.w_second};
        const float m = upsampled_mask(mask.bilinear, mask.data + row.mask_first, mask.data + row.mask_second,
                                       row_tap, column_tap);
        own_weights[r * pixels + px] = row.valid ? m : CUDART_NAN_F;
        if constexpr (kPartnerMask) {
          const float m_partner = upsampled_mask(mask.bilinear, mask.data + row.partner_mask_first,
                                                 mask.data + row.partner_mask_second, row_tap, column_tap);
          partner_weights[r * pixels + px] = row.valid ? 1.0f - m_partner : CUDART_NAN_F;
        }
      }
    }
    __syncthreads();

    // Every line of the tile's rows over the tile's columns.
    const int64_t span_begin = x0 * im.inner;
    const int64_t span_end = span_begin + pixels * im.inner;
    // Line k of tile row r for (r, k) = threadIdx.y, threadIdx.y + blockDim.y,
    // ... in row-major order, stepped without a division per line.
    int r = static_cast<int>(threadIdx.y / im.row_lines);
    int64_t k = threadIdx.y - r * im.row_lines;
    for (; r < rows; k += blockDim.y) {
      while (k >= im.row_lines) {
        k -= im.row_lines;
        ++r;
      }
      if (r >= rows) break;
      const int64_t line = k * im.line_stride;
      const TileRow& row = tile_rows[r];
      const T* __restrict__ own_line = in + row.base + line;
      const T* __restrict__ partner_line = in + row.partner_base + line;
      T* __restrict__ out_line = out + row.base + line;
      const float* __restrict__ w_own = own_weights + r * pixels;
      const float* __restrict__ w_partner = kPartnerMask ? partner_weights + r * pixels : nullptr;

      const int64_t head = elements_to_alignment(out_line);
      const bool vectorized = is_aligned(own_line + head) && is_aligned(partner_line + head);
      for_each_column<V, 1>(span_begin, span_end, head, vectorized, threadIdx.x, blockDim.x,
                            [&](int64_t c0, auto width) {
        constexpr int N = decltype(width)::value;
        // The tile pixel of element c0 and its channel (always 0 on NCHW lines).
        const Index e = static_cast<Index>(c0 - span_begin);
        Index pixel = inner == 1 ? e : e / inner;
        Index channel = e - pixel * inner;
        if constexpr (N == 1) {
          const float m = w_own[pixel];
          const float w = kPartnerMask ? w_partner[pixel] : 1.0f - m;
          store(out_line + c0, mix_element(load_readonly(own_line + c0), load_readonly(partner_line + c0), m, w));
        } else {
          const Words own = load_words_readonly(own_line + c0);
          const Words other = load_words_readonly(partner_line + c0);
          Words mixed{{0u, 0u, 0u, 0u}};
#pragma unroll
          for (int j = 0; j < N; ++j) {
            const float m = w_own[pixel];
            const float w = kPartnerMask ? w_partner[pixel] : 1.0f - m;
            pack<T>(mixed, j, mix_element(unpack<T>(own, j), unpack<T>(other, j), m, w));
            if (++channel == inner) {
              channel = 0;
              ++pixel;
            }
          }
          store_words(out_line + c0, mixed);
        }
      });
    }
    // The next tile (if this block has one) overwrites the shared tables.
    __syncthreads();
  }
}

// ---------------------------------------------------------------------------
// Mask gradient, pass 1: d(i, y, x) per pixel into `pixels` (B, H, W).

template <typename T, typename Index>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    mask_grad_pixels_kernel(const MaskMixBackwardArgs args, float* __restrict__ pixels) {
  constexpr int V = kVec<T>;
  const MaskMixImage& im = args.image;
  const T* __restrict__ grad = static_cast<const T*>(args.grad);
  const T* __restrict__ x = static_cast<const T*>(args.x);
  const int64_t lane = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t num_lanes = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t row_step = static_cast<int64_t>(gridDim.y) * blockDim.y;
  const int64_t total_rows = im.batch * im.height;
  const Index channels = static_cast<Index>(im.inner == 1 ? im.row_lines : im.inner);
  const Index line_stride = static_cast<Index>(im.line_stride);

  for (int64_t row = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; row < total_rows;
       row += row_step) {
    const int64_t sample = row / im.height;
    const int64_t y = row - sample * im.height;
    const int64_t partner = __ldg(args.src + sample);
    const bool valid = partner >= 0 && partner < im.batch;
    const int64_t offset = y * im.row_stride;
    const T* __restrict__ g_row = grad + sample * im.sample_elements + offset;
    const T* __restrict__ own_row = x + sample * im.sample_elements + offset;
    const T* __restrict__ partner_row = x + (valid ? partner : sample) * im.sample_elements + offset;
    float* __restrict__ d_row = pixels + row * im.width;

    if (im.inner == 1) {
      // NCHW: vectors of pixels along the row, every channel's line in turn.
      // Lines of all channels share the row's misalignment when a channel
      // plane is a multiple of 16 bytes.
      const int64_t head = elements_to_alignment(g_row);
      const bool vectorized = (channels == 1 || (im.line_stride * static_cast<int64_t>(sizeof(T))) % kVectorBytes == 0) &&
                              is_aligned(own_row + head) && is_aligned(partner_row + head);
      for_each_column<V, 1>(0, im.width, head, vectorized, lane, num_lanes, [&](int64_t c0, auto width) {
        constexpr int N = decltype(width)::value;
        float d[N];
#pragma unroll
        for (int j = 0; j < N; ++j) d[j] = 0.0f;
        // Two channels' loads in flight fit the register budget.
#pragma unroll 2
        for (Index c = 0; c < channels; ++c) {
          const Index at = c * line_stride + static_cast<Index>(c0);
          if constexpr (N == 1) {
            d[0] += mask_grad_element(load_readonly(g_row + at), load_readonly(own_row + at),
                                      load_readonly(partner_row + at));
          } else {
            const Words g = load_words_readonly(g_row + at);
            const Words own = load_words_readonly(own_row + at);
            const Words other = load_words_readonly(partner_row + at);
#pragma unroll
            for (int j = 0; j < N; ++j) {
              d[j] += mask_grad_element(unpack<T>(g, j), unpack<T>(own, j), unpack<T>(other, j));
            }
          }
        }
#pragma unroll
        for (int j = 0; j < N; ++j) d_row[c0 + j] = valid ? d[j] : CUDART_NAN_F;
      });
    } else {
      // Channels-last: a pixel's channels are contiguous; 16 bytes at a time
      // when every pixel starts aligned.
      const bool vectorized = (channels * static_cast<Index>(sizeof(T))) % kVectorBytes == 0 &&
                              is_aligned(g_row) && is_aligned(own_row) && is_aligned(partner_row);
      for (int64_t px = lane; px < im.width; px += num_lanes) {
        const Index at = static_cast<Index>(px) * channels;
        float d = 0.0f;
        if (vectorized) {
#pragma unroll 1
          for (Index c = 0; c < channels; c += V) {
            const Words g = load_words_readonly(g_row + at + c);
            const Words own = load_words_readonly(own_row + at + c);
            const Words other = load_words_readonly(partner_row + at + c);
#pragma unroll
            for (int j = 0; j < V; ++j) d += mask_grad_element(unpack<T>(g, j), unpack<T>(own, j), unpack<T>(other, j));
          }
        } else {
#pragma unroll 4
          for (Index c = 0; c < channels; ++c) {
            d += mask_grad_element(load_readonly(g_row + at + c), load_readonly(own_row + at + c),
                                   load_readonly(partner_row + at + c));
          }
        }
        d_row[px] = valid ? d : CUDART_NAN_F;
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Mask gradient, passes 2 and 3: one axis of U transposed, as a gather.

// The first image index whose taps reach mask index r (image_size when none
// does): taps are monotone in the image index, so bisection over them finds it.
__device__ __forceinline__ int64_t first_reader(bool bilinear, int64_t r, int64_t mask_size, int64_t image_size) {
  int64_t lo = 0, hi = image_size;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (axis_tap(bilinear, mid, mask_size, image_size).second < r) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// in: fp32 (outer, image_size, inner); out: fp32 (outer, mask_size, inner),
//   out[q, r, j] = sum over the image indices y that read mask index r, in
//   ascending order, of w(y, r) * in[q, y, j]
// (w_first when r is y's first tap, plus w_second when it is its second).
// 2-D grid: j on x, (q, r) on y, grid-stride beyond the grid.
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    mask_grad_gather_kernel(const float* __restrict__ in, float* __restrict__ out, int64_t outer,
                            int64_t image_size, int64_t mask_size, int64_t inner, bool bilinear) {
  const int64_t lane = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t num_lanes = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t row_step = static_cast<int64_t>(gridDim.y) * blockDim.y;
  for (int64_t row = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; row < outer * mask_size;
       row += row_step) {
    const int64_t q = row / mask_size;
    const int64_t r = row - q * mask_size;
    const int64_t begin = first_reader(bilinear, r, mask_size, image_size);
    const float* __restrict__ in_q = in + q * image_size * inner;
    for (int64_t j = lane; j < inner; j += num_lanes) {
      float sum = 0.0f;
      for (int64_t y = begin; y < image_size; ++y) {
        const AxisTap tap = axis_tap(bilinear, y, mask_size, image_size);
        if (tap.first > r) break;
        const float value = __ldg(in_q + y * inner + j);
        if (tap.first == r) sum += tap.w_first * value;
        if (bilinear && tap.second == r) sum += tap.w_second * value;
      }
      out[row * inner + j] = sum;
    }
  }
}

// ---------------------------------------------------------------------------
// Inverse permutation.

__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    inverse_permutation_kernel(const int64_t* __restrict__ src, int64_t batch, int64_t* __restrict__ inv) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < batch;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t s = __ldg(src + i);
    if (s >= 0 && s < batch) inv[s] = i;
  }
}

// ---------------------------------------------------------------------------
// Launch configuration (host).

// Tiles of about kTileVectorsPerThread vectors per thread, at most
// kMaxTilePixels pixels and at most 1 / kTilesPerSm of an SM's share of the
// batch: whole image rows when they fit (up to kMaxTileRows of them), else
// pieces of a row a multiple of the vector width wide. Threads: threads_x
// the power of two covering a line's span of vectors, threads_y lines.
struct MixLaunch {
  TilePlan plan;
  dim3 grid, block;
};

MixLaunch plan_mix(const MaskMixImage& im, int vec, int num_sms) {
  const int64_t channels = im.inner == 1 ? im.row_lines : im.inner;
  const int64_t total_pixels = im.batch * im.height * im.width;
  const int64_t sms = num_sms > 0 ? num_sms : 1;
  int64_t budget = int64_t{kThreads} * kTileVectorsPerThread * vec / channels;
  budget = capped(budget, ceil_div(total_pixels, sms * kTilesPerSm));
  budget = capped(budget, kMaxTilePixels);
  if (budget < 1) budget = 1;

  int64_t tile_pixels = im.width;
  if (tile_pixels > budget || tile_pixels > kMaxTileColumns) {
    tile_pixels = capped(budget, kMaxTileColumns) / vec * vec;
    if (tile_pixels < vec) tile_pixels = capped(vec, im.width);
  }
  const int64_t tile_rows = capped(budget > tile_pixels ? budget / tile_pixels : 1, kMaxTileRows);

  MixLaunch launch;
  launch.plan.tile_pixels = static_cast<int>(tile_pixels);
  launch.plan.tile_rows = static_cast<int>(tile_rows);
  launch.plan.column_tiles = ceil_div(im.width, tile_pixels);
  launch.plan.num_tiles = ceil_div(im.batch * im.height, tile_rows) * launch.plan.column_tiles;

  const int64_t span_vectors = ceil_div(tile_pixels * im.inner, vec);
  int threads_x = 1;
  while (threads_x < span_vectors && threads_x < kThreads) threads_x *= 2;
  launch.block = dim3(static_cast<unsigned>(threads_x), static_cast<unsigned>(kThreads / threads_x));
  launch.grid = dim3(static_cast<unsigned>(capped(launch.plan.num_tiles, launch::kMaxGridX)));
  return launch;
}

template <bool kPartnerMask>
cudaError_t launch_mix(DType dtype, const MixPass& pass, int num_sms, cudaStream_t stream) {
  return dispatch_dtype_and_index(dtype, pass.image.sample_elements, [&](auto storage, auto index) {
    using T = typename decltype(storage)::type;
    using Index = typename decltype(index)::type;
    const MixLaunch launch = plan_mix(pass.image, kVec<T>, num_sms);
    mask_mix_kernel<T, Index, kPartnerMask><<<launch.grid, launch.block, 0, stream>>>(pass, launch.plan);
    return cudaGetLastError();
  });
}

cudaError_t launch_gather(const float* in, float* out, int64_t outer, int64_t image_size, int64_t mask_size,
                          int64_t inner, bool bilinear, int num_sms, cudaStream_t stream) {
  const launch::LaunchConfig config = launch::elementwise_config(outer * mask_size, inner, 1, num_sms, kThreads);
  mask_grad_gather_kernel<<<config.grid, config.block, 0, stream>>>(in, out, outer, image_size, mask_size, inner,
                                                                   bilinear);
  return cudaGetLastError();
}

// Tile columns keep mask column indices in 32 bits.
bool mask_fits(const MaskMixMask& mask) { return mask.width <= INT32_MAX; }

int64_t pixel_scratch_elements(const MaskMixBackwardArgs& args) {
  return args.image.batch * args.image.height * args.image.width;
}

int64_t row_scratch_elements(const MaskMixBackwardArgs& args) {
  return args.image.batch * args.mask.height * args.image.width;
}

}  // namespace

cudaError_t mask_mix(const MaskMixArgs& args, void* out, int num_sms, cudaStream_t stream) {
  if (args.image.batch <= 0 || args.image.sample_elements <= 0) return cudaSuccess;
  if (!mask_fits(args.mask)) return cudaErrorInvalidValue;
  const MixPass pass{args.x, args.src, args.image, args.mask, out};
  return launch_mix<false>(args.dtype, pass, num_sms, stream);
}

cudaError_t inverse_permutation(const int64_t* src, int64_t batch, int64_t* inv, cudaStream_t stream) {
  if (batch <= 0) return cudaSuccess;
  // All bits set: -1, the bad partner, for every index no src names.
  cudaError_t status = cudaMemsetAsync(inv, 0xff, static_cast<size_t>(batch) * sizeof(int64_t), stream);
  if (status != cudaSuccess) return status;
  const unsigned blocks = static_cast<unsigned>(capped(ceil_div(batch, kThreads), launch::kMaxGridX));
  inverse_permutation_kernel<<<blocks, kThreads, 0, stream>>>(src, batch, inv);
  return cudaGetLastError();
}

int64_t mask_mix_backward_workspace_bytes(const MaskMixBackwardArgs& args) {
  if (args.grad_mask == nullptr || args.image.batch <= 0 || args.image.sample_elements <= 0) return 0;
  return (pixel_scratch_elements(args) + row_scratch_elements(args)) * static_cast<int64_t>(sizeof(float));
}

cudaError_t mask_mix_backward(const MaskMixBackwardArgs& args, void* workspace, int num_sms,
                              cudaStream_t stream) {
  if (args.image.batch <= 0 || args.image.sample_elements <= 0) return cudaSuccess;
  if (!mask_fits(args.mask)) return cudaErrorInvalidValue;
  if (args.grad_x != nullptr) {
    const MixPass pass{args.grad, args.inv, args.image, args.mask, args.grad_x};
    const cudaError_t status = launch_mix<true>(args.dtype, pass, num_sms, stream);
    if (status != cudaSuccess) return status;
  }
  if (args.grad_mask == nullptr) return cudaSuccess;
  if (workspace == nullptr) return cudaErrorInvalidValue;
  float* pixels = static_cast<float*>(workspace);
  float* rows = pixels + pixel_scratch_elements(args);
  const MaskMixImage& im = args.image;
  cudaError_t status = dispatch_dtype_and_index(args.dtype, im.sample_elements, [&](auto storage, auto index) {
    using T = typename decltype(storage)::type;
    using Index = typename decltype(index)::type;
    const int vec = im.inner == 1 ? kVec<T> : 1;
    const launch::LaunchConfig config =
        launch::elementwise_config(im.batch * im.height, im.width, vec, num_sms, kThreads);
    mask_grad_pixels_kernel<T, Index><<<config.grid, config.block, 0, stream>>>(args, pixels);
    return cudaGetLastError();
  });
  if (status != cudaSuccess) return status;
  // (B, H, W) -> (B, h, W): U's row taps, transposed.
  status = launch_gather(pixels, rows, im.batch, im.height, args.mask.height, im.width, args.mask.bilinear, num_sms,
                         stream);
  if (status != cudaSuccess) return status;
  // (B * h, W) -> (B * h, w): U's column taps, transposed.
  return launch_gather(rows, args.grad_mask, im.batch * args.mask.height, im.width, args.mask.width, 1,
                       args.mask.bilinear, num_sms, stream);
}

}  // namespace mixkernels::gpu
