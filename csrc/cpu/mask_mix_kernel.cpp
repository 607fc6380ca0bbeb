// CPU kernels of mask_mix, vectorised with at::vec (compiled once per
// capability; see cross_entropy_kernel.cpp for how the builds work).
//
// The upsampled (B, 1, H, W) mask is never stored: each task owns image rows
// (sample i, row y) and makes that row of the mask from the low-resolution
// one (interpolate the one or two mask rows it reads along W, keep them for
// the next image rows, which mostly read the same ones, blend along H), then
// mixes every line of the image row with it. The forward is bandwidth-bound
// over x; the mask costs a few operations per pixel, shared by the channels.
//
// The mask gradient is U^T applied to d(pixel) = sum_c grad * (x - x[src]);
// U is separable (row taps x column taps), and U^T is computed without
// atomics in two stages, each output written by one task in a fixed order
// (deterministic, and independent of the number of threads):
//   1. per (sample i, block of image rows that read the same mask rows, see
//      RowBlocks), fused with grad_x's pass over the same lines: d of each
//      row, accumulated along H with the rows' two tap weights (vector adds),
//      then pushed onto the mask columns once per block (U's column taps,
//      transposed) -> two mask-width rows per block;
//   2. per mask row (i, r): the slots of the blocks that read r, in order.
// Stage 1 reads what a forward reads; the scalar column work is done once
// per block (about H/h rows), not once per image row.
#include "cpu/mask_mix_kernel.h"

#include <ATen/Parallel.h>

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>

#include "cpu/vec_utils.h"
#include "mixkernels/mask_math.h"
#include "mixkernels/mix_math.h"

namespace mixkernels::cpu::CPU_CAPABILITY {
namespace {

// Elements per parallel task, as in mix_rows_kernel.cpp.
constexpr int64_t kElementsPerTask = 1 << 16;

// A malloc-ed array. Not a std container: container template code would be
// shared between the per-capability builds of this file, and the linker
// would pick one build's copy for all of them.
template <typename U>
class HeapArray {
 public:
  explicit HeapArray(int64_t count)
      : data_(static_cast<U*>(std::malloc(static_cast<size_t>(std::max<int64_t>(count, 1)) * sizeof(U)))) {
    TORCH_INTERNAL_ASSERT(data_ != nullptr, "mixkernels: out of memory for mask_mix scratch");
  }
  ~HeapArray() { std::free(data_); }
  HeapArray(const HeapArray&) = delete;
  HeapArray& operator=(const HeapArray&) = delete;
  U* get() const { return data_; }
  U& operator[](int64_t k) const { return data_[k]; }

 private:
  U* data_;
};

// The taps (mask_math.h) of every index of one image axis.
class AxisTaps {
 public:
  AxisTaps(bool bilinear, int64_t mask_size, int64_t image_size) : taps_(image_size) {
    for (int64_t o = 0; o < image_size; ++o) taps_[o] = axis_tap(bilinear, o, mask_size, image_size);
  }
  const AxisTap& operator[](int64_t o) const { return taps_[o]; }

 private:
  HeapArray<AxisTap> taps_;
};

// Rows of the upsampled mask, one image row at a time, for one parallel
// task. A row holds the weight of every element of the image row's lines:
// one per pixel for NCHW lines, repeated per channel for NHWC lines. The
// repeat is done once per cached mask row, so the per-image-row work is one
// vector blend (bilinear) or nothing (nearest).
class UpsampledMaskRows {
 public:
  UpsampledMaskRows(const LowResMask& mask, const AxisTaps& rows, const AxisTaps& cols, const ImageRows& image)
      : mask_(mask), rows_(rows), cols_(cols), width_(image.width), inner_(image.inner),
        length_(image.width * image.inner), along_w_(2 * length_), blended_(length_) {}

  const float* row(int64_t sample, int64_t y) {
    const AxisTap& tap = rows_[y];
    const float* top = along_w(sample, tap.first);
    if (!mask_.bilinear) return top;
    const float* bottom = along_w(sample, tap.second);  // evicts neither `top` nor itself
    float* out = blended_.get();
    const Vec w_top(tap.w_first), w_bottom(tap.w_second);
    int64_t n = 0;
    for (; n + Vec::size() <= length_; n += Vec::size()) {
      (Vec::loadu(top + n) * w_top + Vec::loadu(bottom + n) * w_bottom).store(out + n);
    }
    for (; n < length_; ++n) out[n] = blend_taps(true, top[n], bottom[n], tap);
    return out;
  }

 private:
  // Mask row r of `sample` interpolated along W (repeated per channel for
  // NHWC). Two are kept (the two rows an image row blends); a miss replaces
  // the one not used last.
  const float* along_w(int64_t sample, int64_t r) {
    for (int s = 0; s < 2; ++s) {
      if (cached_sample_[s] == sample && cached_row_[s] == r) {
        last_used_ = s;
        return along_w_.get() + s * length_;
      }
    }
    const int s = 1 - last_used_;
    float* out = along_w_.get() + s * length_;
    const float* mask_row = mask_.data + (sample * mask_.height + r) * mask_.width;
    for (int64_t w = 0; w < width_; ++w) {
      const AxisTap& tap = cols_[w];
      const float m = blend_taps(mask_.bilinear, mask_row[tap.first], mask_row[tap.second], tap);
      for (int64_t c = 0; c < inner_; ++c) out[w * inner_ + c] = m;
    }
    cached_sample_[s] = sample;
    cached_row_[s] = r;
    last_used_ = s;
    return out;
  }

  const LowResMask& mask_;
  const AxisTaps& rows_;
  const AxisTaps& cols_;
  const int64_t width_, inner_, length_;
  HeapArray<float> along_w_, blended_;
  int64_t cached_sample_[2] = {-1, -1}, cached_row_[2] = {-1, -1};
  int last_used_ = 0;
};

// dst[n] = m_own[n] * own[n] + (1 - m_partner[n]) * partner[n], in fp32.
// Forward: m_partner = m_own; grad_x: the partner's own mask.
template <typename T>
inline void mix_line(T* dst, const T* own, const T* partner, const float* m_own, const float* m_partner,
                     int64_t len) {
  const Vec one(1.0f);
  int64_t n = 0;
  for (; n + kChunk <= len; n += kChunk) {
    Vec a_lo, a_hi, b_lo, b_hi;
    Chunk<T>::load(own + n, a_lo, a_hi);
    Chunk<T>::load(partner + n, b_lo, b_hi);
    const Vec s_lo = Vec::loadu(m_own + n), s_hi = Vec::loadu(m_own + n + Vec::size());
    const Vec p_lo = one - Vec::loadu(m_partner + n), p_hi = one - Vec::loadu(m_partner + n + Vec::size());
    // Two products, then a sum, as the reference rounds it (no fused multiply-add).
    Chunk<T>::store(dst + n, s_lo * a_lo + p_lo * b_lo, s_hi * a_hi + p_hi * b_hi);
  }
  for (; n < len; ++n) {
    dst[n] = static_cast<T>(mix_element(to_float(own[n]), to_float(partner[n]), m_own[n], 1.0f - m_partner[n]));
  }
}

// For d = grad * (own - partner) (the mask gradient of each element, fp32):
// first[n] += w_first * d[n], and second[n] += w_second * d[n] when second
// is not null (the element's image row weighted by its two row taps).
template <typename T>
inline void accumulate_mask_grad(float* first, float* second, float w_first, float w_second, const T* grad,
                                 const T* own, const T* partner, int64_t len) {
  const Vec v_first(w_first), v_second(w_second);
  int64_t n = 0;
  for (; n + kChunk <= len; n += kChunk) {
    Vec g_lo, g_hi, a_lo, a_hi, b_lo, b_hi;
    Chunk<T>::load(grad + n, g_lo, g_hi);
    Chunk<T>::load(own + n, a_lo, a_hi);
    Chunk<T>::load(partner + n, b_lo, b_hi);
    const Vec d_lo = g_lo * (a_lo - b_lo), d_hi = g_hi * (a_hi - b_hi);
    constexpr int64_t kHalf = Vec::size();
    (Vec::loadu(first + n) + v_first * d_lo).store(first + n);
    (Vec::loadu(first + n + kHalf) + v_first * d_hi).store(first + n + kHalf);
    if (second != nullptr) {
      (Vec::loadu(second + n) + v_second * d_lo).store(second + n);
      (Vec::loadu(second + n + kHalf) + v_second * d_hi).store(second + n + kHalf);
    }
  }
  for (; n < len; ++n) {
    const float d = mask_grad_element(to_float(grad[n]), to_float(own[n]), to_float(partner[n]));
    first[n] += w_first * d;
    if (second != nullptr) second[n] += w_second * d;
  }
}

// Image rows per parallel task.
inline int64_t image_rows_per_task(const ImageRows& im) {
  return std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(1, im.row_lines * im.line_length));
}

template <typename T>
void mask_mix_typed(const MaskMixArgs& a) {
  const ImageRows& im = a.image;
  const AxisTaps rows(a.mask.bilinear, a.mask.height, im.height);
  const AxisTaps cols(a.mask.bilinear, a.mask.width, im.width);
  const T* x = static_cast<const T*>(a.x);
  T* out = static_cast<T*>(a.out);
  at::parallel_for(0, im.batch * im.height, image_rows_per_task(im), [&](int64_t begin, int64_t end) {
    UpsampledMaskRows mask_rows(a.mask, rows, cols, im);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t i = task / im.height, y = task % im.height;
      const float* m = mask_rows.row(i, y);
      for (int64_t k = 0; k < im.row_lines; ++k) {
        const int64_t offset = y * im.row_stride + k * im.line_stride;
        mix_line(out + i * im.sample_stride + offset, x + i * im.sample_stride + offset,
                 x + a.src[i] * im.sample_stride + offset, m, m, im.line_length);
      }
    }
  });
}

// Image rows grouped for the mask gradient: runs of consecutive rows that
// read the same mask rows (first, second), at most kMaxBlockRows long (to
// keep tasks for small masks). The grouping depends on the shapes only, so
// the sums come out the same for any number of threads.
class RowBlocks {
 public:
  static constexpr int64_t kMaxBlockRows = 32;

  RowBlocks(const AxisTaps& rows, bool bilinear, int64_t height, int64_t mask_height)
      : starts_(height + 1), reader_begin_(mask_height), reader_end_(mask_height) {
    count_ = 0;
    for (int64_t y = 0; y < height; ++y) {
      const bool same_taps = count_ > 0 && rows[y].first == rows[starts_[count_ - 1]].first &&
                             rows[y].second == rows[starts_[count_ - 1]].second;
      if (!same_taps || y - starts_[count_ - 1] == kMaxBlockRows) starts_[count_++] = y;
    }
    starts_[count_] = height;
    for (int64_t r = 0; r < mask_height; ++r) {
      reader_begin_[r] = count_;
      reader_end_[r] = 0;
    }
    for (int64_t b = 0; b < count_; ++b) {
      note_reader(rows[starts_[b]].first, b);
      if (bilinear) note_reader(rows[starts_[b]].second, b);
    }
  }
  int64_t count() const { return count_; }
  int64_t begin(int64_t b) const { return starts_[b]; }
  int64_t end(int64_t b) const { return starts_[b + 1]; }
  // The blocks [reader_begin(r), reader_end(r)) are those that read mask row
  // r: taps only move forward along H and `second` is `first` or the next
  // row, so the range holds exactly the blocks whose first or second tap is r.
  int64_t reader_begin(int64_t r) const { return reader_begin_[r]; }
  int64_t reader_end(int64_t r) const { return reader_end_[r]; }

 private:
  void note_reader(int64_t r, int64_t b) {
    reader_begin_[r] = std::min(reader_begin_[r], b);
    reader_end_[r] = std::max(reader_end_[r], b + 1);
  }
  HeapArray<int64_t> starts_, reader_begin_, reader_end_;
  int64_t count_;
};

// pixel[w] = the sum over channels of a row of per-element values, in
// channel order for both layouts (NCHW: line c holds channel c; NHWC: the
// channels of pixel w are consecutive), so that both round alike.
inline void sum_channels(float* pixel, const float* elements, const ImageRows& im) {
  if (im.inner == 1) {
    std::copy(elements, elements + im.width, pixel);
    for (int64_t k = 1; k < im.row_lines; ++k) {
      const float* line = elements + k * im.line_length;
      for (int64_t w = 0; w < im.width; ++w) pixel[w] += line[w];
    }
    return;
  }
  for (int64_t w = 0; w < im.width; ++w) {
    float sum = elements[w * im.inner];
    for (int64_t c = 1; c < im.inner; ++c) sum += elements[w * im.inner + c];
    pixel[w] = sum;
  }
}

// out[s] = sum_w (U's column weight of w on s) * v[w]: one image-width row
// pushed onto the mask's columns, in column order.
inline void reduce_onto_mask_columns(float* out, const float* v, const AxisTaps& cols, int64_t width,
                                     int64_t mask_width, bool bilinear) {
  std::fill(out, out + mask_width, 0.0f);
  for (int64_t w = 0; w < width; ++w) {
    const AxisTap& tap = cols[w];
    out[tap.first] += tap.w_first * v[w];
    if (bilinear) out[tap.second] += tap.w_second * v[w];
  }
}

template <typename T>
void mask_mix_backward_typed(const MaskMixBackwardArgs& a) {
  const ImageRows& im = a.image;
  const LowResMask& mask = a.mask;
  const AxisTaps rows(mask.bilinear, mask.height, im.height);
  const AxisTaps cols(mask.bilinear, mask.width, im.width);
  const RowBlocks blocks(rows, mask.bilinear, im.height, mask.height);
  const T* grad = static_cast<const T*>(a.grad);
  const T* x = static_cast<const T*>(a.x);
  T* grad_x = static_cast<T*>(a.grad_x);
  const bool wants_mask_grad = a.grad_mask != nullptr;
  // Stage 1's output, per (sample i, block b), two rows of mask width: the
  // block's mask gradient weighted by its rows' first taps (slot 0) and by
  // their second taps (slot 1), reduced onto the mask's columns.
  HeapArray<float> block_sums(wants_mask_grad ? im.batch * blocks.count() * 2 * mask.width : 0);
  const int64_t rows_per_block = (im.height + blocks.count() - 1) / blocks.count();

  at::parallel_for(0, im.batch * blocks.count(), std::max<int64_t>(1, image_rows_per_task(im) / rows_per_block),
                   [&](int64_t begin, int64_t end) {
    UpsampledMaskRows own_mask(mask, rows, cols, im);
    UpsampledMaskRows partner_mask(mask, rows, cols, im);
    // Per element of the block's rows: the mask gradient weighted by the
    // rows' first and second taps, summed along H; then per pixel.
    const int64_t row_length = im.row_lines * im.line_length;
    HeapArray<float> buffers(wants_mask_grad ? 2 * row_length + im.width : 0);
    float* along_first = buffers.get();
    float* along_second = mask.bilinear ? along_first + row_length : nullptr;
    float* pixel = along_first + 2 * row_length;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t i = task / blocks.count(), b = task % blocks.count();
      if (wants_mask_grad) std::fill(along_first, along_first + 2 * row_length, 0.0f);
      for (int64_t y = blocks.begin(b); y < blocks.end(b); ++y) {
        const int64_t row_offset = y * im.row_stride;
        if (grad_x != nullptr) {
          // grad_x[i] = m_i * grad[i] + (1 - m_k) * grad[k], k = inv[i]: the
          // sample that took i as its partner (a gather, so no atomics).
          const int64_t k_sample = a.inv[i];
          const float* m_own = own_mask.row(i, y);
          const float* m_partner = partner_mask.row(k_sample, y);
          for (int64_t k = 0; k < im.row_lines; ++k) {
            const int64_t offset = row_offset + k * im.line_stride;
            mix_line(grad_x + i * im.sample_stride + offset, grad + i * im.sample_stride + offset,
                     grad + k_sample * im.sample_stride + offset, m_own, m_partner, im.line_length);
          }
        }
        if (!wants_mask_grad) continue;
        for (int64_t k = 0; k < im.row_lines; ++k) {
          const int64_t offset = row_offset + k * im.line_stride;
          const int64_t at = k * im.line_length;
          accumulate_mask_grad(along_first + at, along_second ? along_second + at : nullptr, rows[y].w_first,
                               rows[y].w_second, grad + i * im.sample_stride + offset,
                               x + i * im.sample_stride + offset, x + a.src[i] * im.sample_stride + offset,
                               im.line_length);
        }
      }
      if (!wants_mask_grad) continue;
      float* out = block_sums.get() + task * 2 * mask.width;
      sum_channels(pixel, along_first, im);
      reduce_onto_mask_columns(out, pixel, cols, im.width, mask.width, mask.bilinear);
      if (mask.bilinear) {
        sum_channels(pixel, along_second, im);
        reduce_onto_mask_columns(out + mask.width, pixel, cols, im.width, mask.width, mask.bilinear);
      }
    }
  });

  if (!wants_mask_grad) return;
  // Stage 2: mask row r of sample i sums the slots of the blocks that read
  // it, in block order.
  const int64_t blocks_per_mask_row = std::max<int64_t>(1, 2 * blocks.count() / mask.height);
  at::parallel_for(0, im.batch * mask.height, row_grain(blocks_per_mask_row * mask.width),
                   [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t i = task / mask.height, r = task % mask.height;
      float* out = a.grad_mask + task * mask.width;
      std::fill(out, out + mask.width, 0.0f);
      for (int64_t b = blocks.reader_begin(r); b < blocks.reader_end(r); ++b) {
        const AxisTap& tap = rows[blocks.begin(b)];
        const float* sums = block_sums.get() + (i * blocks.count() + b) * 2 * mask.width;
        if (tap.first == r) {
          for (int64_t s = 0; s < mask.width; ++s) out[s] += sums[s];
        }
        if (mask.bilinear && tap.second == r) {
          for (int64_t s = 0; s < mask.width; ++s) out[s] += sums[mask.width + s];
        }
      }
    }
  });
}

}  // namespace

void mask_mix(const MaskMixArgs& args) {
  dispatch_dtype(args.dtype, [&](auto tag) { mask_mix_typed<decltype(tag)>(args); });
}

void mask_mix_backward(const MaskMixBackwardArgs& args) {
  dispatch_dtype(args.dtype, [&](auto tag) { mask_mix_backward_typed<decltype(tag)>(args); });
}

}  // namespace mixkernels::cpu::CPU_CAPABILITY
