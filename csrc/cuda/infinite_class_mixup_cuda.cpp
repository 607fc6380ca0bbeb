// CUDA implementation of the Infinite Class Mixup ops (schemas in
// csrc/ops.cpp): the host side of csrc/cpu/infinite_class_mixup.cpp on the
// GPU. Checks, allocation, the GEMMs (ATen on the current stream: cuBLAS) and
// the calls of the torch-free launchers in infinite_class_mixup_kernel.cu.
// The maths is shared/notes/icm.md, section 5; the structure (the two paths,
// the kept cache, the blocks of score rows) is the CPU host's, described at
// the top of csrc/cpu/infinite_class_mixup.cpp.
//
// Precision: fp32 inputs run fp32 GEMMs, as the CPU does. bf16/fp16 inputs
// run the GEMMs in their own dtype (tensor cores) with fp32 results (the
// mm.dtype_out overload): W~ is formed in fp32 by the lerp and stored rounded
// to the input dtype as the GEMM operand; dS (factorised) and dZ (logits)
// blocks are rounded to it for the GEMMs that consume them; everything else
// (S, Z, the statistics, dW~, db~, the weight gradient summed over blocks,
// d lam) is fp32, and gradients are rounded to the input dtype once, at the end.
//
// No host synchronisation: labels are not checked here (the Python layer
// checks them with torch._assert_async; the kernels make what a bad label
// reads NaN, never a read out of bounds), and the class-sorted entries of the
// scatters are built on the device (a stable sort and a searchsorted).
// Deterministic: cuBLAS GEMMs, fixed-order sums in the kernels, and
// block-to-block accumulation in order on one stream. Temporaries come from
// the caching allocator on the current stream, so freeing them when a
// function returns is ordered after the kernels that use them.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <string>
#include <tuple>

#include "mixkernels/icm_checks.h"

#include "infinite_class_mixup_kernel.h"
#include "op_utils.h"

namespace mixkernels {
namespace {

using at::Tensor;

// Score rows per block: a block of S (and of Z or dZ) holds about this many
// fp32 values (64 MiB), enough rows for the block GEMMs to fill the GPU.
constexpr int64_t kBlockElements = int64_t{1} << 24;
constexpr int64_t kMinBlockRows = 64;

int64_t rows_per_block(int64_t batch, int64_t width) {
  return std::min(batch, std::max(kMinBlockRows, kBlockElements / std::max<int64_t>(width, 1)));
}

void check_inputs(const Tensor& hidden, const Tensor& weight, const c10::optional<Tensor>& bias, const Tensor& y_a,
                  const Tensor& y_b, const Tensor& lam) {
  check_on_cuda(hidden, "hidden");
  check_icm_inputs(hidden, weight, bias, y_a, y_b, lam);
}

Tensor defined_or_empty(const c10::optional<Tensor>& t) {
  return t.has_value() && t->defined() ? *t : Tensor();
}

bool is_fp32(const Tensor& t) { return t.scalar_type() == at::kFloat; }

float* data_or_null(Tensor& t) {
  return t.defined() && t.numel() > 0 ? t.mutable_data_ptr<float>() : nullptr;
}

const float* data_or_null(const Tensor& t) {
  return t.defined() && t.numel() > 0 ? t.const_data_ptr<float>() : nullptr;
}

cudaStream_t current_stream() { return at::cuda::getCurrentCUDAStream(); }

// out (fp32) = lhs @ rhs^T (+ bias32, fp32, broadcast over rows). fp32
// operands: one fp32 GEMM (bias in its epilogue). bf16/fp16 operands: a GEMM in
// their dtype with an fp32 result, then the fp32 bias added.
void gemm_nt(Tensor& out, const Tensor& lhs, const Tensor& rhs, const Tensor& bias32) {
  if (is_fp32(lhs)) {
    if (bias32.defined()) {
      at::addmm_out(out, bias32.unsqueeze(0), lhs, rhs.t());
    } else {
      at::mm_out(out, lhs, rhs.t());
    }
    return;
  }
  at::mm_out(out, lhs, rhs.t(), at::kFloat);
  if (bias32.defined()) out.add_(bias32.unsqueeze(0));
}

// out (fp32) (+)= lhs^T @ rhs: the first block writes, later blocks accumulate.
// bf16/fp16 operands: later blocks go through `scratch` (out's shape, fp32),
// then one in-order add (the accumulating dtype overload of addmm is not
// accepted with an fp32 `self` by every torch version).
void gemm_tn_accumulate(Tensor& out, const Tensor& lhs, const Tensor& rhs, bool first, Tensor& scratch) {
  if (is_fp32(lhs)) {
    if (first) {
      at::mm_out(out, lhs.t(), rhs);
    } else {
      out.addmm_(lhs.t(), rhs);
    }
    return;
  }
  if (first) {
    at::mm_out(out, lhs.t(), rhs, at::kFloat);
    return;
  }
  if (!scratch.defined()) scratch = at::empty_like(out);
  at::mm_out(scratch, lhs.t(), rhs, at::kFloat);
  out.add_(scratch);
}

// (W~ in weight's dtype (B, D), b~ in fp32 (B,), undefined without a bias).
std::pair<Tensor, Tensor> mixed_classifier(const Tensor& weight, const Tensor& bias, const Tensor& y_a,
                                           const Tensor& y_b, const Tensor& lam) {
  const int64_t batch = y_a.size(0), features = weight.size(1);
  Tensor w_mixed = at::empty({batch, features}, weight.options());
  Tensor b_mixed = bias.defined() ? at::empty({batch}, weight.options().dtype(at::kFloat)) : Tensor();
  const gpu::IcmMixedClassifierArgs args{kernel_dtype(weight.scalar_type()),
                                         weight.const_data_ptr(),
                                         weight.stride(0),
                                         weight.stride(1),
                                         bias.defined() ? bias.const_data_ptr() : nullptr,
                                         bias.defined() ? bias.stride(0) : 0,
                                         y_a.const_data_ptr<int64_t>(),
                                         y_b.const_data_ptr<int64_t>(),
                                         lam.const_data_ptr<float>(),
                                         batch,
                                         features,
                                         weight.size(0),
                                         w_mixed.mutable_data_ptr(),
                                         bias.defined() ? b_mixed.mutable_data_ptr<float>() : nullptr};
  C10_CUDA_CHECK(gpu::icm_mixed_classifier(args, current_stream()));
  return {w_mixed, b_mixed};
}

// The score matrix a block of rows at a time: computed into a buffer, or read
// from the kept matrix (S itself, or the Z that S is gathered from).
class ScoreBlocks {
 public:
  // cache: the matrix kept by the forward, or an undefined/empty tensor;
  // make_cache: compute it here, whole (one GEMM), for the forward to return.
  // need_mixed_classifier: W~ is wanted even when S is kept (for dH).
  ScoreBlocks(IcmPath path, const Tensor& hidden, const Tensor& weight, const Tensor& bias, const Tensor& y_a,
              const Tensor& y_b, const Tensor& lam, const Tensor& cache, bool make_cache,
              bool need_mixed_classifier)
      : path_(path), hidden_(hidden), y_a_(y_a), y_b_(y_b), lam_(lam), num_classes_(weight.size(0)) {
    const int64_t batch = hidden.size(0), num_classes = weight.size(0);
    auto f32 = hidden.options().dtype(at::kFloat);
    cache_ = cache.defined() && cache.numel() > 0 ? cache : Tensor();
    const bool kept = cache_.defined() || make_cache;
    if (path == IcmPath::Factorised) {
      block_rows_ = rows_per_block(batch, batch);
      if (!kept || need_mixed_classifier || make_cache) {
        std::tie(w_mixed_, b_mixed_) = mixed_classifier(weight, bias, y_a, y_b, lam);
      }
      if (make_cache) {
        cache_ = at::empty({batch, batch}, f32);
        gemm_nt(cache_, hidden, w_mixed_, b_mixed_);
        if (!need_mixed_classifier) w_mixed_ = b_mixed_ = Tensor();
      }
      if (!kept) score_buffer_ = at::empty({block_rows_, batch}, f32);
    } else {
      block_rows_ = rows_per_block(batch, std::max(batch, num_classes));
      score_buffer_ = at::empty({block_rows_, batch}, f32);
      if (!cache_.defined()) {
        weight_ = weight;
        bias32_ = bias.defined() ? bias.to(at::kFloat) : Tensor();
      }
      if (make_cache) {
        cache_ = at::empty({batch, num_classes}, f32);
        gemm_nt(cache_, hidden, weight_, bias32_);
      } else if (!cache_.defined()) {
        logits_buffer_ = at::empty({block_rows_, num_classes}, f32);
      }
    }
  }

  int64_t block_rows() const { return block_rows_; }
  const Tensor& cache() const { return cache_; }
  // Frees W~ and the buffers.
  void release() {
    w_mixed_ = b_mixed_ = weight_ = bias32_ = score_buffer_ = logits_buffer_ = cache_ = Tensor();
  }
  // W~ in the GEMM dtype (factorised).
  const Tensor& w_mixed() const { return w_mixed_; }

  // Score rows [begin, begin + rows) (fp32); on the logits path their Z rows go to *logits_rows.
  Tensor scores(int64_t begin, int64_t rows, Tensor* logits_rows) {
    const Tensor hidden_rows = hidden_.narrow(0, begin, rows);
    if (path_ == IcmPath::Factorised) {
      if (cache_.defined()) return cache_.narrow(0, begin, rows);
      Tensor out = score_buffer_.narrow(0, 0, rows);
      gemm_nt(out, hidden_rows, w_mixed_, b_mixed_);
      return out;
    }
    Tensor z;
    if (cache_.defined()) {
      z = cache_.narrow(0, begin, rows);
    } else {
      z = logits_buffer_.narrow(0, 0, rows);
      gemm_nt(z, hidden_rows, weight_, bias32_);
    }
    Tensor out = score_buffer_.narrow(0, 0, rows);
    const gpu::IcmGatherScoresArgs args{z.const_data_ptr<float>(), z.stride(0), rows, out.size(1), num_classes_,
                                        y_a_.const_data_ptr<int64_t>(), y_b_.const_data_ptr<int64_t>(),
                                        lam_.const_data_ptr<float>(), out.mutable_data_ptr<float>(),
                                        out.stride(0)};
    C10_CUDA_CHECK(gpu::icm_gather_scores(args, current_stream()));
    if (logits_rows != nullptr) *logits_rows = z;
    return out;
  }

 private:
  IcmPath path_;
  Tensor hidden_, y_a_, y_b_, lam_;
  int64_t num_classes_;
  int64_t block_rows_ = 0;
  Tensor cache_;
  Tensor w_mixed_, b_mixed_;   // factorised
  Tensor weight_, bias32_;     // logits (bias in fp32)
  Tensor score_buffer_, logits_buffer_;
};

// ------------------------------------------------------------------- forward

std::tuple<Tensor, Tensor, Tensor, Tensor> infinite_class_mixup_loss_cuda(
    const Tensor& hidden, const Tensor& weight, const c10::optional<Tensor>& bias_opt, const Tensor& y_a,
    const Tensor& y_b, const Tensor& lam, c10::string_view axes_name, c10::string_view path_name,
    bool keep_cache) {
  check_inputs(hidden, weight, bias_opt, y_a, y_b, lam);
  const IcmAxes axes = parse_icm_axes(std::string(axes_name));
  const IcmPath path = parse_icm_path(std::string(path_name));
  const Tensor bias = defined_or_empty(bias_opt);
  const c10::cuda::CUDAGuard device_guard(hidden.device());
  const cudaStream_t stream = current_stream();
  const int64_t batch = hidden.size(0);
  auto f32 = hidden.options().dtype(at::kFloat);

  Tensor loss = at::empty({batch}, f32);
  Tensor row_lse = at::empty({axes.row ? batch : 0}, f32);
  Tensor col_lse = at::empty({axes.col ? batch : 0}, f32);
  Tensor diag = at::empty({batch}, f32);
  Tensor col_max, col_sum;
  if (axes.col) {
    col_max = at::full({batch}, -std::numeric_limits<float>::infinity(), f32);
    col_sum = at::zeros({batch}, f32);
  }

  ScoreBlocks blocks(path, hidden, weight, bias, y_a, y_b, lam, Tensor(), keep_cache, false);
  const int64_t block_rows = blocks.block_rows();
  Tensor workspace;
  if (axes.col) workspace = at::empty({2 * gpu::icm_column_partials(block_rows, batch)}, f32);
  for (int64_t begin = 0; begin < batch; begin += block_rows) {
    const int64_t rows = std::min(block_rows, batch - begin);
    const Tensor scores = blocks.scores(begin, rows, nullptr);
    const gpu::IcmScoreStatsArgs args{scores.const_data_ptr<float>(), scores.stride(0), begin, rows, batch,
                                      data_or_null(row_lse), diag.mutable_data_ptr<float>(),
                                      data_or_null(col_max), data_or_null(col_sum)};
    C10_CUDA_CHECK(gpu::icm_score_stats(args, axes.col ? workspace.mutable_data_ptr<float>() : nullptr, stream));
  }

  const gpu::IcmLossArgs loss_args{data_or_null(static_cast<const Tensor&>(row_lse)),
                                   data_or_null(static_cast<const Tensor&>(col_max)),
                                   data_or_null(static_cast<const Tensor&>(col_sum)),
                                   diag.const_data_ptr<float>(),
                                   batch,
                                   data_or_null(col_lse),
                                   loss.mutable_data_ptr<float>()};
  C10_CUDA_CHECK(gpu::icm_loss(loss_args, stream));
  return {loss, row_lse, col_lse, keep_cache ? blocks.cache() : at::empty({0}, f32)};
}

// ------------------------------------------------------------------ backward

// The entries of the class scatters, class by class (CSR), built on the
// device: the stable sort of the interleaved labels (y_a_0, y_b_0, y_a_1, ...)
// lists each class's entries in pair order, y_a before y_b, as the CPU's
// counting sort does; class c's entries are [begin[c], begin[c + 1]), found
// by searchsorted (labels outside [0, C) fall before begin[0] or after
// begin[C]: no class reads them).
struct ClassEntries {
  Tensor begin, pair, weight;
};

ClassEntries class_entries(const Tensor& y_a, const Tensor& y_b, const Tensor& lam, int64_t num_classes) {
  const int64_t batch = y_a.size(0);
  const Tensor labels = at::stack({y_a, y_b}, 1).reshape({2 * batch});
  Tensor sorted, order;
  std::tie(sorted, order) = at::sort(labels, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  ClassEntries e;
  e.begin = at::searchsorted(sorted, at::arange(num_classes + 1, y_a.options()));
  e.pair = at::empty({2 * batch}, y_a.options());
  e.weight = at::empty({2 * batch}, lam.options());
  const Tensor order64 = order.contiguous();
  const Tensor y_a64 = y_a.contiguous(), y_b64 = y_b.contiguous();
  const gpu::IcmClassEntriesArgs args{order64.const_data_ptr<int64_t>(), y_a64.const_data_ptr<int64_t>(),
                                      y_b64.const_data_ptr<int64_t>(), lam.const_data_ptr<float>(), batch,
                                      e.pair.mutable_data_ptr<int64_t>(), e.weight.mutable_data_ptr<float>()};
  C10_CUDA_CHECK(gpu::icm_class_entries(args, current_stream()));
  return e;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> infinite_class_mixup_loss_backward_cuda(
    const Tensor& grad_loss, const Tensor& hidden, const Tensor& weight, const c10::optional<Tensor>& bias_opt,
    const Tensor& y_a, const Tensor& y_b, const Tensor& lam, const Tensor& row_lse, const Tensor& col_lse,
    const Tensor& cache, c10::string_view axes_name, c10::string_view path_name, std::array<bool, 4> output_mask) {
  check_inputs(hidden, weight, bias_opt, y_a, y_b, lam);
  const IcmAxes axes = parse_icm_axes(std::string(axes_name));
  const IcmPath path = parse_icm_path(std::string(path_name));
  const Tensor bias = defined_or_empty(bias_opt);
  const int64_t batch = hidden.size(0), features = hidden.size(1), num_classes = weight.size(0);
  check_icm_backward_inputs(grad_loss, hidden, num_classes, row_lse, col_lse, cache, axes, path);
  const c10::cuda::CUDAGuard device_guard(hidden.device());
  const cudaStream_t stream = current_stream();

  const IcmBackwardPlan plan = plan_icm_backward(path, output_mask, bias.defined());
  const bool need_hidden = plan.hidden, need_weight = plan.weight, need_bias = plan.bias, need_lam = plan.lam;
  const bool factorised = plan.factorised;
  const bool need_w_mixed_grad = plan.w_mixed_grad, need_logits_grad = plan.logits_grad;
  const bool write_grad_scores = plan.grad_scores, need_b_mixed_grad = plan.b_mixed_grad;
  const bool need_entries = plan.class_entries;
  auto f32 = hidden.options().dtype(at::kFloat);
  const bool fp32 = is_fp32(hidden);
  const gpu::DType dtype = kernel_dtype(hidden.scalar_type());
  Tensor grad_hidden, grad_weight, grad_bias, grad_lam;

  if (plan.any()) {
    ScoreBlocks blocks(path, hidden, weight, bias, y_a, y_b, lam, cache, false, need_hidden);
    const int64_t block_rows = blocks.block_rows();
    if (need_hidden) grad_hidden = at::empty({batch, features}, hidden.options());
    Tensor grad_w_mixed = need_w_mixed_grad ? at::empty({batch, features}, f32) : Tensor();
    Tensor grad_b_mixed = need_b_mixed_grad ? at::zeros({batch}, f32) : Tensor();
    if (need_lam) grad_lam = at::zeros({batch}, f32);
    Tensor grad_weight32;  // logits path: dZ^T H, accumulated block by block in fp32
    if (need_logits_grad && need_weight) grad_weight32 = at::empty({num_classes, features}, f32);
    Tensor accumulate_scratch;  // bf16/fp16: a later block's dW~ or dW, before it is added
    const ClassEntries entries = need_entries ? class_entries(y_a, y_b, lam, num_classes) : ClassEntries{};
    // dS is written over the block of S (fp32: in place), except where that
    // block is the kept S (an input of this op, never written) or where the
    // GEMMs consume it in bf16/fp16 (factorised; the logits path scatters the
    // fp32 dS into dZ, which is the GEMM operand there).
    const bool separate_grad = factorised && write_grad_scores && (blocks.cache().defined() || !fp32);
    Tensor grad_buffer =
        separate_grad ? at::empty({block_rows, batch}, hidden.options().dtype(fp32 ? at::kFloat : hidden.scalar_type()))
                      : Tensor();
    Tensor grad_logits_buffer = need_logits_grad ? at::empty({block_rows, num_classes}, hidden.options()) : Tensor();
    // Column partials of the sums over a block's rows (db~ and, logits path, d lam).
    const bool lam_through_logits = !factorised && need_lam;
    const int64_t sums = (need_b_mixed_grad && axes.row ? 1 : 0) + (lam_through_logits ? 1 : 0);
    Tensor workspace = sums > 0 ? at::empty({sums * gpu::icm_column_partials(block_rows, batch)}, f32) : Tensor();

    for (int64_t begin = 0; begin < batch; begin += block_rows) {
      const int64_t rows = std::min(block_rows, batch - begin);
      Tensor logits_rows;
      const Tensor scores = blocks.scores(begin, rows, factorised ? nullptr : &logits_rows);
      Tensor grad_scores;
      if (write_grad_scores) grad_scores = grad_buffer.defined() ? grad_buffer.narrow(0, 0, rows) : scores;
      const gpu::IcmGradScoresArgs args{
          scores.const_data_ptr<float>(),
          scores.stride(0),
          begin,
          rows,
          batch,
          grad_loss.const_data_ptr<float>(),
          data_or_null(row_lse),
          data_or_null(col_lse),
          write_grad_scores ? kernel_dtype(grad_scores.scalar_type()) : gpu::DType::kFloat32,
          write_grad_scores ? grad_scores.mutable_data_ptr() : nullptr,
          write_grad_scores ? grad_scores.stride(0) : 0,
          data_or_null(grad_b_mixed),
          lam_through_logits ? logits_rows.const_data_ptr<float>() : nullptr,
          lam_through_logits ? logits_rows.stride(0) : 0,
          y_a.const_data_ptr<int64_t>(),
          y_b.const_data_ptr<int64_t>(),
          num_classes,
          lam_through_logits ? grad_lam.mutable_data_ptr<float>() : nullptr};
      C10_CUDA_CHECK(gpu::icm_grad_scores(args, workspace.defined() ? workspace.mutable_data_ptr<float>() : nullptr,
                                          stream));
      if (!write_grad_scores) continue;

      const Tensor hidden_rows = hidden.narrow(0, begin, rows);
      const bool first = begin == 0;
      // dH rows = dS W~ (factorised) or dZ W (logits), operands in the input dtype.
      Tensor lhs, rhs;
      if (factorised) {
        lhs = grad_scores;
        rhs = blocks.w_mixed();
        if (need_w_mixed_grad) gemm_tn_accumulate(grad_w_mixed, grad_scores, hidden_rows, first, accumulate_scratch);
      } else {
        lhs = grad_logits_buffer.narrow(0, 0, rows);
        rhs = weight;
        const gpu::IcmScatterScoresArgs scatter{grad_scores.const_data_ptr<float>(),
                                                grad_scores.stride(0),
                                                rows,
                                                batch,
                                                num_classes,
                                                entries.begin.const_data_ptr<int64_t>(),
                                                entries.pair.const_data_ptr<int64_t>(),
                                                entries.weight.const_data_ptr<float>(),
                                                dtype,
                                                lhs.mutable_data_ptr(),
                                                lhs.stride(0)};
        C10_CUDA_CHECK(gpu::icm_scatter_scores(scatter, stream));
        if (need_weight) gemm_tn_accumulate(grad_weight32, lhs, hidden_rows, first, accumulate_scratch);
      }
      if (need_hidden) {
        Tensor out = grad_hidden.narrow(0, begin, rows);
        at::mm_out(out, lhs, rhs);
      }
    }
    // W~ and the buffers go before the (C, D) gradient is written.
    blocks.release();
    grad_logits_buffer = grad_buffer = workspace = accumulate_scratch = Tensor();

    if (need_weight || need_bias) {
      const bool scatter_weight = factorised && need_weight;
      if (scatter_weight) {
        grad_weight = at::empty({num_classes, features}, weight.options());
        const gpu::IcmClassScatterArgs args{entries.begin.const_data_ptr<int64_t>(),
                                            entries.pair.const_data_ptr<int64_t>(),
                                            entries.weight.const_data_ptr<float>(),
                                            num_classes,
                                            features,
                                            grad_w_mixed.const_data_ptr<float>(),
                                            kernel_dtype(weight.scalar_type()),
                                            grad_weight.mutable_data_ptr()};
        C10_CUDA_CHECK(gpu::icm_class_scatter(args, stream));
      }
      if (need_bias) {
        grad_bias = at::empty({num_classes}, bias.options());
        const gpu::IcmClassScatterArgs args{entries.begin.const_data_ptr<int64_t>(),
                                            entries.pair.const_data_ptr<int64_t>(),
                                            entries.weight.const_data_ptr<float>(),
                                            num_classes,
                                            1,
                                            grad_b_mixed.const_data_ptr<float>(),
                                            kernel_dtype(bias.scalar_type()),
                                            grad_bias.mutable_data_ptr()};
        C10_CUDA_CHECK(gpu::icm_class_scatter(args, stream));
      }
      if (!factorised && need_weight) {
        grad_weight = is_fp32(weight) ? grad_weight32 : grad_weight32.to(weight.scalar_type());
      }
    }
    if (factorised && need_lam) {
      const gpu::IcmGradLamArgs args{kernel_dtype(weight.scalar_type()),
                                     weight.const_data_ptr(),
                                     weight.stride(0),
                                     weight.stride(1),
                                     bias.defined() ? bias.const_data_ptr() : nullptr,
                                     bias.defined() ? bias.stride(0) : 0,
                                     y_a.const_data_ptr<int64_t>(),
                                     y_b.const_data_ptr<int64_t>(),
                                     batch,
                                     features,
                                     num_classes,
                                     grad_w_mixed.const_data_ptr<float>(),
                                     bias.defined() ? grad_b_mixed.const_data_ptr<float>() : nullptr,
                                     grad_lam.mutable_data_ptr<float>()};
      C10_CUDA_CHECK(gpu::icm_grad_lam(args, stream));
    }
  }
  return icm_backward_outputs(plan, grad_hidden, grad_weight, grad_bias, grad_lam, hidden, weight, bias);
}

}  // namespace
}  // namespace mixkernels

TORCH_LIBRARY_IMPL(mixkernels, CUDA, m) {
  m.impl("infinite_class_mixup_loss", &mixkernels::infinite_class_mixup_loss_cuda);
  m.impl("infinite_class_mixup_loss_backward", &mixkernels::infinite_class_mixup_loss_backward_cuda);
}
