// CPU kernels of the row-mixing ops, vectorised with at::vec (see
// cross_entropy_kernel.cpp for how the per-capability builds work).
//
// mix_rows is pure memory traffic: the work is split into equal runs of the
// flattened (B, N) output so that a small batch of large rows still uses every
// thread. The in-place version walks each permutation cycle column block by
// column block, keeping only the first row's block aside, so it needs no copy
// of the batch. Dots reduce one row per task, in a fixed order (deterministic).
#include "cpu/mix_rows_kernel.h"

#include <ATen/Parallel.h>

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>

#include "cpu/vec_utils.h"
#include "mixkernels/mix_math.h"

namespace mixkernels::cpu::CPU_CAPABILITY {
namespace {

// Elements per parallel task: large enough to amortise scheduling, small
// enough to balance two to a few dozen threads.
constexpr int64_t kElementsPerTask = 1 << 16;
// Columns processed together by the in-place kernel (the saved block of the
// cycle's first row lives on the stack).
constexpr int64_t kInplaceBlock = 2048;

// dst[n] = w_self * own[n] + w_src * partner[n] for n in [0, len). dst may be own.
template <typename T>
inline void mix_span(T* dst, const T* own, const T* partner, int64_t len, float w_self, float w_src) {
  const Vec vs(w_self), vp(w_src);
  int64_t n = 0;
  for (; n + kChunk <= len; n += kChunk) {
    Vec a_lo, a_hi, b_lo, b_hi;
    Chunk<T>::load(own + n, a_lo, a_hi);
    Chunk<T>::load(partner + n, b_lo, b_hi);
    // Two products, then a sum, as eager PyTorch rounds it (no fused multiply-add).
    Chunk<T>::store(dst + n, a_lo * vs + b_lo * vp, a_hi * vs + b_hi * vp);
  }
  for (; n < len; ++n) {
    dst[n] = static_cast<T>(mix_element(to_float(own[n]), to_float(partner[n]), w_self, w_src));
  }
}

// Like mix_span, but a term whose weight is exactly 0 is not read at all: a
// pasted CutMix box is a copy of the partner, whatever the own pixels hold.
template <typename T>
inline void mix_span_skipping_zero(T* dst, const T* own, const T* partner, int64_t len, float w_self,
                                   float w_src) {
  if (w_self == 0.0f && w_src == 1.0f) {
    std::copy(partner, partner + len, dst);
  } else if (w_self == 1.0f && w_src == 0.0f) {
    if (dst != own) std::copy(own, own + len, dst);
  } else if (w_self == 0.0f && w_src == 0.0f) {
    std::fill(dst, dst + len, static_cast<T>(0.0f));
  } else if (w_self == 0.0f || w_src == 0.0f) {
    const T* kept = w_self == 0.0f ? partner : own;
    const float w = w_self == 0.0f ? w_src : w_self;
    const Vec vw(w);
    int64_t n = 0;
    for (; n + kChunk <= len; n += kChunk) {
      Vec lo, hi;
      Chunk<T>::load(kept + n, lo, hi);
      Chunk<T>::store(dst + n, lo * vw, hi * vw);
    }
    for (; n < len; ++n) dst[n] = static_cast<T>(w * to_float(kept[n]));
  } else {
    mix_span(dst, own, partner, len, w_self, w_src);
  }
}

// The part [begin, end) of a line that a box covers (empty when the line's
// image row is outside the box).
inline void box_span(const int64_t* box, int64_t image_row, int64_t inner, int64_t line_length,
                     int64_t& begin, int64_t& end) {
  if (image_row < box[0] || image_row >= box[1] || box[2] >= box[3]) {
    begin = end = 0;
    return;
  }
  begin = std::min(box[2] * inner, line_length);
  end = std::min(box[3] * inner, line_length);
}

// One line of image i: pieces of constant weights, cut at both boxes' edges.
// dst may be own (in place); partner must not be dst.
template <typename T>
inline void mix_image_line(T* dst, const T* own, const T* partner, int64_t len, int64_t image_row, int64_t inner,
                           const int64_t* box_self, const int64_t* box_src, float w_self, float w_src) {
  int64_t self_lo, self_hi, src_lo, src_hi;
  box_span(box_self, image_row, inner, len, self_lo, self_hi);
  box_span(box_src, image_row, inner, len, src_lo, src_hi);
  int64_t cuts[6] = {0, self_lo, self_hi, src_lo, src_hi, len};
  std::sort(cuts, cuts + 6);
  for (int k = 0; k + 1 < 6; ++k) {
    const int64_t lo = cuts[k], hi = cuts[k + 1];
    if (lo >= hi) continue;
    const float w_own = (lo >= self_lo && lo < self_hi) ? 0.0f : w_self;
    const float w_partner = (lo >= src_lo && lo < src_hi) ? 1.0f : w_src;
    mix_span_skipping_zero(dst + lo, own + lo, partner + lo, hi - lo, w_own, w_partner);
  }
}

template <typename T>
void mix_images_typed(const MixImagesArgs& a) {
  const T* x = static_cast<const T*>(a.x);
  T* out = static_cast<T*>(a.out);
  const int64_t len = a.line_length, out_sample_stride = a.lines * len;
  const int64_t grain = std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(1, len));
  at::parallel_for(0, a.batch * a.lines, grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t i = task / a.lines, line = task % a.lines;
      mix_image_line(out + i * out_sample_stride + line * len, x + i * a.sample_stride + line * len,
                     x + a.src[i] * a.sample_stride + line * len, len, line % a.height, a.inner,
                     a.box_self + 4 * i, a.box_src + 4 * i, a.w_self[i], a.w_src[i]);
    }
  });
}

// In place: each task walks every permutation cycle on its lines, keeping the
// cycle's first line aside (see mix_rows_inplace_typed).
template <typename T>
void mix_images_inplace_typed(const MixImagesInplaceArgs& a) {
  T* x = static_cast<T*>(a.x);
  const int64_t len = a.line_length;
  const int64_t grain = std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(1, len * a.batch));
  at::parallel_for(0, a.lines, grain, [&](int64_t line_begin, int64_t line_end) {
    // A plain buffer: no container templates in per-capability code.
    T* first_line = static_cast<T*>(std::malloc(static_cast<size_t>(len) * sizeof(T)));
    TORCH_INTERNAL_ASSERT(first_line != nullptr, "mixkernels: out of memory for one image line");
    for (int64_t line = line_begin; line < line_end; ++line) {
      const int64_t image_row = line % a.height;
      for (int64_t k = 0; k < a.num_cycles; ++k) {
        const int64_t* cycle = a.cycles + a.cycle_offsets[k];
        const int64_t length = a.cycle_offsets[k + 1] - a.cycle_offsets[k];
        auto line_of = [&](int64_t i) { return x + i * a.sample_stride + line * len; };
        auto mix_row = [&](int64_t i, const T* partner) {
          mix_image_line(line_of(i), line_of(i), partner, len, image_row, a.inner, a.box_self + 4 * i,
                         a.box_src + 4 * i, a.w_self[i], a.w_src[i]);
        };
        std::copy(line_of(cycle[0]), line_of(cycle[0]) + len, first_line);
        for (int64_t j = 0; j + 1 < length; ++j) mix_row(cycle[j], line_of(cycle[j + 1]));
        mix_row(cycle[length - 1], first_line);
      }
    }
    std::free(first_line);
  });
}

template <typename T>
void mix_rows_typed(const MixRowsArgs& a) {
  const T* x = static_cast<const T*>(a.x);
  T* out = static_cast<T*>(a.out);
  const int64_t n_cols = a.row_length;
  at::parallel_for(0, a.batch * n_cols, kElementsPerTask, [&](int64_t begin, int64_t end) {
    // [begin, end) of the flattened output, cut at row boundaries.
    while (begin < end) {
      const int64_t row = begin / n_cols, col = begin % n_cols;
      const int64_t len = std::min(end - begin, n_cols - col);
      mix_span(out + row * n_cols + col, x + row * a.row_stride + col, x + a.src[row] * a.row_stride + col,
               len, a.w_self[row], a.w_src[row]);
      begin += len;
    }
  });
}

template <typename T>
void mix_rows_inplace_typed(const MixRowsInplaceArgs& a) {
  T* x = static_cast<T*>(a.x);
  const int64_t n_cols = a.row_length;
  const int64_t n_blocks = (n_cols + kInplaceBlock - 1) / kInplaceBlock;
  // Column blocks are independent: each task walks every cycle on its blocks.
  const int64_t grain = std::max<int64_t>(1, kElementsPerTask / (kInplaceBlock * std::max<int64_t>(1, a.batch)));
  at::parallel_for(0, n_blocks, grain, [&](int64_t block_begin, int64_t block_end) {
    T first_row[kInplaceBlock];
    for (int64_t block = block_begin; block < block_end; ++block) {
      const int64_t col = block * kInplaceBlock;
      const int64_t len = std::min(kInplaceBlock, n_cols - col);
      for (int64_t k = 0; k < a.num_cycles; ++k) {
        const int64_t* cycle = a.cycles + a.cycle_offsets[k];
        const int64_t length = a.cycle_offsets[k + 1] - a.cycle_offsets[k];
        T* head = x + cycle[0] * a.row_stride + col;
        if (length == 1) {  // a fixed point mixes with itself
          mix_span(head, head, head, len, a.w_self[cycle[0]], a.w_src[cycle[0]]);
          continue;
        }
        // Row c_j takes c_{j+1}, which is still unwritten when walking forward;
        // the last row takes c_0, whose original block is kept aside.
        std::copy(head, head + len, first_row);
        for (int64_t j = 0; j + 1 < length; ++j) {
          T* row = x + cycle[j] * a.row_stride + col;
          const T* next = x + cycle[j + 1] * a.row_stride + col;
          mix_span(row, row, next, len, a.w_self[cycle[j]], a.w_src[cycle[j]]);
        }
        T* last = x + cycle[length - 1] * a.row_stride + col;
        mix_span(last, last, first_row, len, a.w_self[cycle[length - 1]], a.w_src[cycle[length - 1]]);
      }
    }
  });
}

template <typename T>
void mix_rows_dots_typed(const MixRowsDotsArgs& a) {
  const T* grad = static_cast<const T*>(a.grad);
  const T* x = static_cast<const T*>(a.x);
  const int64_t n_cols = a.row_length;
  at::parallel_for(0, a.batch, row_grain(n_cols), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const T* g = grad + row * a.grad_row_stride;
      const T* own = x + row * a.x_row_stride;
      const T* partner = x + a.src[row] * a.x_row_stride;
      Vec own_lo(0.0f), own_hi(0.0f), partner_lo(0.0f), partner_hi(0.0f);
      int64_t n = 0;
      for (; n + kChunk <= n_cols; n += kChunk) {
        Vec g_lo, g_hi, o_lo, o_hi, p_lo, p_hi;
        Chunk<T>::load(g + n, g_lo, g_hi);
        Chunk<T>::load(own + n, o_lo, o_hi);
        Chunk<T>::load(partner + n, p_lo, p_hi);
        own_lo = at::vec::fmadd(g_lo, o_lo, own_lo);
        own_hi = at::vec::fmadd(g_hi, o_hi, own_hi);
        partner_lo = at::vec::fmadd(g_lo, p_lo, partner_lo);
        partner_hi = at::vec::fmadd(g_hi, p_hi, partner_hi);
      }
      float own_dot = at::vec::vec_reduce_all<float>(std::plus<Vec>(), own_lo + own_hi);
      float partner_dot = at::vec::vec_reduce_all<float>(std::plus<Vec>(), partner_lo + partner_hi);
      for (; n < n_cols; ++n) {
        own_dot += to_float(g[n]) * to_float(own[n]);
        partner_dot += to_float(g[n]) * to_float(partner[n]);
      }
      a.dots[2 * row] = own_dot;
      a.dots[2 * row + 1] = partner_dot;
    }
  });
}

}  // namespace

void mix_rows(const MixRowsArgs& args) {
  dispatch_dtype(args.dtype, [&](auto tag) { mix_rows_typed<decltype(tag)>(args); });
}

void mix_rows_inplace(const MixRowsInplaceArgs& args) {
  dispatch_dtype(args.dtype, [&](auto tag) { mix_rows_inplace_typed<decltype(tag)>(args); });
}

void mix_rows_dots(const MixRowsDotsArgs& args) {
  dispatch_dtype(args.dtype, [&](auto tag) { mix_rows_dots_typed<decltype(tag)>(args); });
}

void mix_images(const MixImagesArgs& args) {
  dispatch_dtype(args.dtype, [&](auto tag) { mix_images_typed<decltype(tag)>(args); });
}

void mix_images_inplace(const MixImagesInplaceArgs& args) {
  dispatch_dtype(args.dtype, [&](auto tag) { mix_images_inplace_typed<decltype(tag)>(args); });
}

}  // namespace mixkernels::cpu::CPU_CAPABILITY
