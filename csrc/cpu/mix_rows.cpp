// CPU implementations of the row-mixing ops (schemas in csrc/ops.cpp):
// checks, allocation, the permutation's cycles, and the kernel for this CPU.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdint>
#include <vector>

#include "cpu/mix_rows_kernel.h"
#include "cpu/op_utils.h"
#include "mixkernels/image_checks.h"
#include "mixkernels/mix_checks.h"

namespace mixkernels::cpu {
namespace {

// A permutation's cycles, each listed from its smallest row onwards: cycle k
// is rows[offsets[k] : offsets[k + 1]], and src maps each row to the next.
struct Cycles {
  std::vector<int64_t> rows, offsets{0};
  int64_t count() const { return static_cast<int64_t>(offsets.size()) - 1; }
};

Cycles permutation_cycles(const at::Tensor& src) {
  const int64_t batch = src.size(0);
  const int64_t* p = src.const_data_ptr<int64_t>();
  Cycles cycles;
  cycles.rows.reserve(static_cast<size_t>(batch));
  std::vector<char> visited(static_cast<size_t>(batch), 0);
  for (int64_t start = 0; start < batch; ++start) {
    if (visited[start]) continue;
    for (int64_t row = start; !visited[row]; row = p[row]) {
      visited[row] = 1;
      cycles.rows.push_back(row);
    }
    cycles.offsets.push_back(static_cast<int64_t>(cycles.rows.size()));
  }
  return cycles;
}

at::Tensor mix_rows_cpu(const at::Tensor& x, const at::Tensor& src, const at::Tensor& w_self,
                        const at::Tensor& w_src) {
  check_cpu(x, "x");
  check_mix_rows_inputs(x, src, w_self, w_src);
  check_permutation(src);
  const int64_t batch = x.size(0), row_length = x.size(1);
  at::Tensor out = empty_for_writing({batch, row_length}, x.options());
  MixRowsArgs args{x.const_data_ptr(), to_dtype(x.scalar_type()), batch, row_length, x.stride(0),
                   src.const_data_ptr<int64_t>(), w_self.const_data_ptr<float>(), w_src.const_data_ptr<float>(),
                   out.mutable_data_ptr()};
  MIXKERNELS_CPU_KERNEL(mix_rows)(args);
  return out;
}

void mix_rows_inplace_cpu(const at::Tensor& x, const at::Tensor& src, const at::Tensor& w_self,
                          const at::Tensor& w_src) {
  check_cpu(x, "x");
  check_mix_rows_inputs(x, src, w_self, w_src);
  check_mix_rows_inplace_target(x);
  check_permutation(src);
  const int64_t batch = x.size(0);
  const Cycles cycles = permutation_cycles(src);
  MixRowsInplaceArgs args{x.mutable_data_ptr(), to_dtype(x.scalar_type()), batch, x.size(1), x.stride(0),
                          w_self.const_data_ptr<float>(), w_src.const_data_ptr<float>(), cycles.rows.data(),
                          cycles.offsets.data(), cycles.count()};
  MIXKERNELS_CPU_KERNEL(mix_rows_inplace)(args);
}

at::Tensor mix_rows_dots_cpu(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& src) {
  check_cpu(x, "x");
  check_mix_rows_dots_inputs(grad, x, src);
  check_permutation(src);
  const int64_t batch = x.size(0);
  at::Tensor dots = at::empty({batch, 2}, x.options().dtype(at::kFloat));
  MixRowsDotsArgs args{grad.const_data_ptr(), x.const_data_ptr(), to_dtype(x.scalar_type()), batch, x.size(1),
                       grad.stride(0), x.stride(0), src.const_data_ptr<int64_t>(), dots.mutable_data_ptr<float>()};
  MIXKERNELS_CPU_KERNEL(mix_rows_dots)(args);
  return dots;
}

// Boxes are (y0, y1, x0, x1) half-open pixel ranges inside the image.
void check_boxes(const at::Tensor& boxes, const char* name, int64_t batch, int64_t height, int64_t width) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(0) == batch && boxes.size(1) == 4, "mixkernels: ", name,
              " must have shape (", batch, ", 4), got ", boxes.sizes());
  TORCH_CHECK(boxes.scalar_type() == at::kLong && boxes.is_contiguous(), "mixkernels: ", name,
              " must be a contiguous int64 tensor");
  const int64_t* b = boxes.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < batch; ++i, b += 4) {
    TORCH_CHECK_VALUE(0 <= b[0] && b[0] <= b[1] && b[1] <= height && 0 <= b[2] && b[2] <= b[3] && b[3] <= width,
                      "mixkernels: ", name, "[", i, "] = (", b[0], ", ", b[1], ", ", b[2], ", ", b[3],
                      ") is not a box (y0 <= y1 <= ", height, ", x0 <= x1 <= ", width, ")");
  }
}

// The metadata checks are shared with the CUDA ops (mixkernels/image_checks.h,
// which also defines ImageLayout); the values (a permutation, boxes inside the
// image) are checked here on the host.
ImageLayout check_images(const at::Tensor& x, const at::Tensor& src, const at::Tensor& w_self,
                         const at::Tensor& w_src, const at::Tensor& box_self, const at::Tensor& box_src) {
  check_cpu(x, "x");
  const ImageLayout layout = check_mix_images_inputs(x, src, w_self, w_src, box_self, box_src);
  check_permutation(src);
  check_boxes(box_self, "box_self", layout.batch, layout.height, x.size(3));
  check_boxes(box_src, "box_src", layout.batch, layout.height, x.size(3));
  return layout;
}

at::Tensor mix_images_cpu(const at::Tensor& x, const at::Tensor& src, const at::Tensor& w_self,
                          const at::Tensor& w_src, const at::Tensor& box_self, const at::Tensor& box_src) {
  const ImageLayout l = check_images(x, src, w_self, w_src, box_self, box_src);
  at::Tensor out = empty_like_for_writing(x);
  MixImagesArgs args{x.const_data_ptr(), to_dtype(x.scalar_type()), l.batch, l.sample_stride, l.lines,
                     l.line_length, l.height, l.inner, src.const_data_ptr<int64_t>(), w_self.const_data_ptr<float>(),
                     w_src.const_data_ptr<float>(), box_self.const_data_ptr<int64_t>(),
                     box_src.const_data_ptr<int64_t>(), out.mutable_data_ptr()};
  MIXKERNELS_CPU_KERNEL(mix_images)(args);
  return out;
}

void mix_images_inplace_cpu(const at::Tensor& x, const at::Tensor& src, const at::Tensor& w_self,
                            const at::Tensor& w_src, const at::Tensor& box_self, const at::Tensor& box_src) {
  const ImageLayout l = check_images(x, src, w_self, w_src, box_self, box_src);
  const Cycles cycles = permutation_cycles(src);
  MixImagesInplaceArgs args{x.mutable_data_ptr(), to_dtype(x.scalar_type()), l.batch, l.sample_stride, l.lines,
                            l.line_length, l.height, l.inner, w_self.const_data_ptr<float>(),
                            w_src.const_data_ptr<float>(), box_self.const_data_ptr<int64_t>(),
                            box_src.const_data_ptr<int64_t>(), cycles.rows.data(), cycles.offsets.data(),
                            cycles.count()};
  MIXKERNELS_CPU_KERNEL(mix_images_inplace)(args);
}

}  // namespace

TORCH_LIBRARY_IMPL(mixkernels, CPU, m) {
  m.impl("mix_rows", &mix_rows_cpu);
  m.impl("mix_rows_", &mix_rows_inplace_cpu);
  m.impl("mix_rows_dots", &mix_rows_dots_cpu);
  m.impl("mix_images", &mix_images_cpu);
  m.impl("mix_images_", &mix_images_inplace_cpu);
}

}  // namespace mixkernels::cpu
