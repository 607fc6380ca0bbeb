// CPU implementation of the Infinite Class Mixup ops: checks, allocation, the
// GEMMs (ATen's at::mm, MKL here) and the calls of the fused kernels in
// infinite_class_mixup_kernel.cpp. The maths is shared/notes/icm.md, section 5.
//
// Two exact ways to the (B, B) scores S, chosen by the caller (`path`; the
// rule is in mixkernels/ops/infinite_class_mixup.py):
//
//  factorised   W~ = lerp(W[y_b], W[y_a], lam) (B, D), S = H W~^T + b~.
//               Backward: dH = G W~, dW~ = G^T H scattered into dW class by
//               class, db from the row term's column sums, d lam from dW~.
//  logits       Z = H W^T + b (B, C), S[b, k] = lerp(Z[b, y_b_k], Z[b, y_a_k], lam_k).
//               Backward: dZ by the transposed scatter, dH = dZ W, dW = dZ^T H.
//
// G = dL/dS is only ever formed a block of rows at a time. The forward keeps
// no (B, B) or (B, C) matrix unless asked (`keep_cache`): it then returns the
// matrix the scores are rebuilt from (S, or Z) and backward reads it instead of
// recomputing it with one more GEMM. Without it, backward recomputes S (or Z)
// block by block and memory stays O(B D + C D + rows_per_block * max(B, C)).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "cpu/infinite_class_mixup_kernel.h"
#include "cpu/op_utils.h"
#include "mixkernels/icm_checks.h"
#include "mixkernels/icm_math.h"

namespace mixkernels::cpu {
namespace {

using at::Tensor;

// Score rows per block: a block of S (and of Z or dZ) holds about this many
// fp32 values (4 MiB), few enough to stay in the last-level cache, many
// enough (>= 256 rows up to B = 4096) for the GEMMs on a block to run at full speed.
constexpr int64_t kBlockElements = int64_t{1} << 20;
constexpr int64_t kMinBlockRows = 64;

int64_t rows_per_block(int64_t batch, int64_t width) {
  return std::min(batch, std::max(kMinBlockRows, kBlockElements / std::max<int64_t>(width, 1)));
}

void check_labels_in_range(const Tensor& y, const char* name, int64_t num_classes) {
  const int64_t* p = y.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < y.numel(); ++i) {
    TORCH_CHECK_INDEX(p[i] >= 0 && p[i] < num_classes, "mixkernels: ", name, "[", i, "] = ", p[i],
                      " is outside [0, ", num_classes, ")");
  }
}

void check_inputs(const Tensor& hidden, const Tensor& weight, const c10::optional<Tensor>& bias, const Tensor& y_a,
                  const Tensor& y_b, const Tensor& lam) {
  check_cpu(hidden, "hidden");
  check_icm_inputs(hidden, weight, bias, y_a, y_b, lam);
  check_labels_in_range(y_a, "y_a", weight.size(0));
  check_labels_in_range(y_b, "y_b", weight.size(0));
}

Tensor defined_or_empty(const c10::optional<Tensor>& t) {
  return t.has_value() && t->defined() ? *t : Tensor();
}

Tensor as_fp32(const Tensor& t) {
  return t.scalar_type() == at::kFloat ? t : t.to(at::kFloat);
}

// Labels as int32 for the vector gathers (the logits path has C < B classes).
Tensor labels_int32(const Tensor& y, int64_t num_classes) {
  TORCH_CHECK(num_classes <= std::numeric_limits<int32_t>::max(),
              "mixkernels: the logits path needs fewer than 2^31 classes");
  return y.to(at::kInt);
}

// out = lhs @ rhs^T (+ bias broadcast over rows).
void gemm_nt(Tensor& out, const Tensor& lhs, const Tensor& rhs, const Tensor& bias) {
  if (bias.defined()) {
    at::addmm_out(out, bias.unsqueeze(0), lhs, rhs.t());
  } else {
    at::mm_out(out, lhs, rhs.t());
  }
}

// out (+)= lhs^T @ rhs: the first block writes, later blocks accumulate.
void gemm_tn_accumulate(Tensor& out, const Tensor& lhs, const Tensor& rhs, bool first) {
  if (first) {
    at::mm_out(out, lhs.t(), rhs);
  } else {
    out.addmm_(lhs.t(), rhs);
  }
}

// (W~, b~) in fp32: (B, D) and (B,) (undefined without a bias).
std::pair<Tensor, Tensor> mixed_classifier(const Tensor& weight, const Tensor& bias, const Tensor& y_a,
                                           const Tensor& y_b, const Tensor& lam) {
  const int64_t batch = y_a.size(0), features = weight.size(1);
  auto f32 = weight.options().dtype(at::kFloat);
  Tensor w_mixed = at::empty({batch, features}, f32);
  Tensor b_mixed = bias.defined() ? at::empty({batch}, f32) : Tensor();
  IcmMixedClassifierArgs args{weight.const_data_ptr(), to_dtype(weight.scalar_type()), weight.stride(0),
                              weight.stride(1), bias.defined() ? bias.const_data_ptr() : nullptr,
                              bias.defined() ? bias.stride(0) : 0, y_a.const_data_ptr<int64_t>(),
                              y_b.const_data_ptr<int64_t>(), lam.const_data_ptr<float>(), batch, features,
                              w_mixed.mutable_data_ptr<float>(),
                              bias.defined() ? b_mixed.mutable_data_ptr<float>() : nullptr};
  MIXKERNELS_CPU_KERNEL(icm_mixed_classifier)(args);
  return {w_mixed, b_mixed};
}

void gather_scores(const Tensor& logits_rows, const Tensor& y_a32, const Tensor& y_b32, const Tensor& lam,
                   Tensor& score_rows) {
  IcmGatherScoresArgs args{logits_rows.const_data_ptr<float>(), logits_rows.stride(0), score_rows.size(0),
                           score_rows.size(1), y_a32.const_data_ptr<int32_t>(), y_b32.const_data_ptr<int32_t>(),
                           lam.const_data_ptr<float>(), score_rows.mutable_data_ptr<float>(), score_rows.stride(0)};
  MIXKERNELS_CPU_KERNEL(icm_gather_scores)(args);
}

float* data_or_null(Tensor& t) {
  return t.defined() && t.numel() > 0 ? t.mutable_data_ptr<float>() : nullptr;
}

const float* data_or_null(const Tensor& t) {
  return t.defined() && t.numel() > 0 ? t.const_data_ptr<float>() : nullptr;
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
      : path_(path), lam_(lam) {
    const int64_t batch = hidden.size(0), num_classes = weight.size(0);
    auto f32 = hidden.options().dtype(at::kFloat);
    hidden32_ = as_fp32(hidden);
    cache_ = cache.defined() && cache.numel() > 0 ? cache : Tensor();
    const bool kept = cache_.defined() || make_cache;
    if (path == IcmPath::Factorised) {
      block_rows_ = rows_per_block(batch, batch);
      if (!kept || need_mixed_classifier || make_cache) {
        std::tie(w_mixed_, b_mixed_) = mixed_classifier(weight, bias, y_a, y_b, lam);
      }
      if (make_cache) {
        cache_ = empty_for_writing({batch, batch}, f32);
        gemm_nt(cache_, hidden32_, w_mixed_, b_mixed_);
        if (!need_mixed_classifier) w_mixed_ = b_mixed_ = Tensor();
      }
      if (!kept) score_buffer_ = at::empty({block_rows_, batch}, f32);
    } else {
      block_rows_ = rows_per_block(batch, std::max(batch, num_classes));
      y_a32_ = labels_int32(y_a, num_classes);
      y_b32_ = labels_int32(y_b, num_classes);
      score_buffer_ = at::empty({block_rows_, batch}, f32);
      if (!cache_.defined()) {
        weight32_ = as_fp32(weight);
        bias32_ = bias.defined() ? as_fp32(bias) : Tensor();
      }
      if (make_cache) {
        cache_ = empty_for_writing({batch, num_classes}, f32);
        gemm_nt(cache_, hidden32_, weight32_, bias32_);
      } else if (!cache_.defined()) {
        logits_buffer_ = at::empty({block_rows_, num_classes}, f32);
      }
    }
  }

  int64_t block_rows() const { return block_rows_; }
  const Tensor& cache() const { return cache_; }
  const Tensor& hidden32() const { return hidden32_; }
  // Frees W~, the converted inputs and the buffers.
  void release() { *this = ScoreBlocks(path_); }
  const Tensor& w_mixed() const { return w_mixed_; }
  const Tensor& y_a32() const { return y_a32_; }
  const Tensor& y_b32() const { return y_b32_; }
  // The classifier weight in fp32 (logits path), converted at most once.
  const Tensor& weight32(const Tensor& weight) {
    if (!weight32_.defined()) weight32_ = as_fp32(weight);
    return weight32_;
  }

  // Score rows [begin, begin + rows); on the logits path their Z rows go to *logits_rows.
  Tensor scores(int64_t begin, int64_t rows, Tensor* logits_rows) {
    const Tensor hidden_rows = hidden32_.narrow(0, begin, rows);
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
      gemm_nt(z, hidden_rows, weight32_, bias32_);
    }
    Tensor out = score_buffer_.narrow(0, 0, rows);
    gather_scores(z, y_a32_, y_b32_, lam_, out);
    if (logits_rows != nullptr) *logits_rows = z;
    return out;
  }

 private:
  explicit ScoreBlocks(IcmPath path) : path_(path) {}

  IcmPath path_;
  int64_t block_rows_ = 0;
  Tensor lam_, hidden32_, cache_;
  Tensor w_mixed_, b_mixed_;                       // factorised
  Tensor weight32_, bias32_, y_a32_, y_b32_;       // logits
  Tensor score_buffer_, logits_buffer_;
};

// ------------------------------------------------------------------- forward

std::tuple<Tensor, Tensor, Tensor, Tensor> infinite_class_mixup_loss_cpu(
    const Tensor& hidden, const Tensor& weight, const c10::optional<Tensor>& bias_opt, const Tensor& y_a,
    const Tensor& y_b, const Tensor& lam, c10::string_view axes_name, c10::string_view path_name,
    bool keep_cache) {
  check_inputs(hidden, weight, bias_opt, y_a, y_b, lam);
  const IcmAxes axes = parse_icm_axes(std::string(axes_name));
  const IcmPath path = parse_icm_path(std::string(path_name));
  const Tensor bias = defined_or_empty(bias_opt);
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
  // A kept S needs no buffer and is read in one block.
  const int64_t block_rows = path == IcmPath::Factorised && keep_cache ? batch : blocks.block_rows();
  for (int64_t begin = 0; begin < batch; begin += block_rows) {
    const int64_t rows = std::min(block_rows, batch - begin);
    const Tensor scores = blocks.scores(begin, rows, nullptr);
    IcmScoreStatsArgs args{scores.const_data_ptr<float>(), scores.stride(0), begin, rows, batch,
                           data_or_null(row_lse), diag.mutable_data_ptr<float>(), data_or_null(col_max),
                           data_or_null(col_sum)};
    MIXKERNELS_CPU_KERNEL(icm_score_stats)(args);
  }

  float* loss_p = loss.mutable_data_ptr<float>();
  const float* diag_p = diag.const_data_ptr<float>();
  float* row_p = data_or_null(row_lse);
  float* col_p = data_or_null(col_lse);
  for (int64_t b = 0; b < batch; ++b) {
    float term = 0.0f;
    if (axes.col) col_p[b] = icm_lse(col_max.const_data_ptr<float>()[b], col_sum.const_data_ptr<float>()[b]);
    if (axes.row && axes.col) {
      term = (row_p[b] - diag_p[b]) + (col_p[b] - diag_p[b]);
    } else if (axes.row) {
      term = row_p[b] - diag_p[b];
    } else {
      term = col_p[b] - diag_p[b];
    }
    loss_p[b] = term;
  }
  return {loss, row_lse, col_lse, keep_cache ? blocks.cache() : at::empty({0}, f32)};
}

// ------------------------------------------------------------------ backward

// The entries of the class scatter, class by class (counting sort, stable in
// pair order): pair k adds lam_k dW~[k] to class y_a_k and (1 - lam_k) dW~[k]
// to class y_b_k (icm_weight_a/b: 1 and 0 for a same-class pair).
struct ClassEntries {
  std::vector<int64_t> begin, pair;
  std::vector<float> weight;
};

ClassEntries class_entries(const Tensor& y_a, const Tensor& y_b, const Tensor& lam, int64_t num_classes) {
  const int64_t batch = y_a.size(0);
  const int64_t* a = y_a.const_data_ptr<int64_t>();
  const int64_t* b = y_b.const_data_ptr<int64_t>();
  const float* l = lam.const_data_ptr<float>();
  ClassEntries e;
  e.begin.assign(num_classes + 1, 0);
  for (int64_t k = 0; k < batch; ++k) {
    ++e.begin[a[k] + 1];
    ++e.begin[b[k] + 1];
  }
  for (int64_t c = 0; c < num_classes; ++c) e.begin[c + 1] += e.begin[c];
  e.pair.resize(2 * batch);
  e.weight.resize(2 * batch);
  std::vector<int64_t> cursor(e.begin.begin(), e.begin.end() - 1);
  for (int64_t k = 0; k < batch; ++k) {
    const bool same_class = a[k] == b[k];
    int64_t slot = cursor[a[k]]++;
    e.pair[slot] = k;
    e.weight[slot] = icm_weight_a(l[k], same_class);
    slot = cursor[b[k]]++;
    e.pair[slot] = k;
    e.weight[slot] = icm_weight_b(l[k], same_class);
  }
  return e;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> infinite_class_mixup_loss_backward_cpu(
    const Tensor& grad_loss, const Tensor& hidden, const Tensor& weight, const c10::optional<Tensor>& bias_opt,
    const Tensor& y_a, const Tensor& y_b, const Tensor& lam, const Tensor& row_lse, const Tensor& col_lse,
    const Tensor& cache, c10::string_view axes_name, c10::string_view path_name, std::array<bool, 4> output_mask) {
  check_inputs(hidden, weight, bias_opt, y_a, y_b, lam);
  const IcmAxes axes = parse_icm_axes(std::string(axes_name));
  const IcmPath path = parse_icm_path(std::string(path_name));
  const Tensor bias = defined_or_empty(bias_opt);
  const int64_t batch = hidden.size(0), features = hidden.size(1), num_classes = weight.size(0);
  check_icm_backward_inputs(grad_loss, hidden, num_classes, row_lse, col_lse, cache, axes, path);

  const IcmBackwardPlan plan = plan_icm_backward(path, output_mask, bias.defined());
  const bool need_hidden = plan.hidden, need_weight = plan.weight, need_bias = plan.bias, need_lam = plan.lam;
  const bool factorised = plan.factorised;
  const bool need_w_mixed_grad = plan.w_mixed_grad, need_logits_grad = plan.logits_grad;
  const bool write_grad_scores = plan.grad_scores, need_b_mixed_grad = plan.b_mixed_grad;
  auto f32 = hidden.options().dtype(at::kFloat);
  Tensor grad_hidden, grad_weight, grad_bias, grad_lam;

  if (plan.any()) {
    ScoreBlocks blocks(path, hidden, weight, bias, y_a, y_b, lam, cache, false, need_hidden);
    const int64_t block_rows = blocks.block_rows();
    const bool hidden_fp32 = hidden.scalar_type() == at::kFloat;
    Tensor grad_hidden32;  // fp32 rows of dH: the output itself for fp32 hidden
    if (need_hidden) {
      grad_hidden = empty_for_writing({batch, features}, hidden.options());
      grad_hidden32 = hidden_fp32 ? grad_hidden : at::empty({block_rows, features}, f32);
    }
    Tensor grad_w_mixed = need_w_mixed_grad ? at::empty({batch, features}, f32) : Tensor();
    Tensor grad_b_mixed = need_b_mixed_grad ? at::zeros({batch}, f32) : Tensor();
    if (need_lam) grad_lam = at::zeros({batch}, f32);
    Tensor grad_weight32;  // logits path: dZ^T H, accumulated block by block
    if (need_logits_grad && need_weight) {
      grad_weight32 = weight.scalar_type() == at::kFloat ? empty_for_writing({num_classes, features}, f32)
                                                         : at::empty({num_classes, features}, f32);
    }
    // dS is written over the block of S, except where that block is the kept S
    // (an input of this op, never written).
    Tensor grad_buffer = factorised && write_grad_scores && blocks.cache().defined()
                             ? at::empty({block_rows, batch}, f32)
                             : Tensor();
    Tensor grad_logits_buffer = need_logits_grad ? at::empty({block_rows, num_classes}, f32) : Tensor();
    Tensor weight32 = need_logits_grad && need_hidden ? blocks.weight32(weight) : Tensor();

    for (int64_t begin = 0; begin < batch; begin += block_rows) {
      const int64_t rows = std::min(block_rows, batch - begin);
      Tensor logits_rows;
      const Tensor scores = blocks.scores(begin, rows, factorised ? nullptr : &logits_rows);
      Tensor grad_scores;
      if (write_grad_scores) grad_scores = grad_buffer.defined() ? grad_buffer.narrow(0, 0, rows) : scores;
      IcmGradScoresArgs args{scores.const_data_ptr<float>(), scores.stride(0), begin, rows, batch,
                             grad_loss.const_data_ptr<float>(), data_or_null(row_lse), data_or_null(col_lse),
                             write_grad_scores ? grad_scores.mutable_data_ptr<float>() : nullptr,
                             write_grad_scores ? grad_scores.stride(0) : 0, data_or_null(grad_b_mixed),
                             factorised ? nullptr : logits_rows.const_data_ptr<float>(),
                             factorised ? 0 : logits_rows.stride(0),
                             factorised ? nullptr : blocks.y_a32().const_data_ptr<int32_t>(),
                             factorised ? nullptr : blocks.y_b32().const_data_ptr<int32_t>(),
                             !factorised && need_lam ? grad_lam.mutable_data_ptr<float>() : nullptr};
      MIXKERNELS_CPU_KERNEL(icm_grad_scores)(args);
      if (!write_grad_scores) continue;

      const Tensor hidden_rows = blocks.hidden32().narrow(0, begin, rows);
      const bool first = begin == 0;
      // dH rows = dS W~ (factorised) or dZ W (logits).
      Tensor lhs, rhs;
      if (factorised) {
        lhs = grad_scores;
        rhs = blocks.w_mixed();
        if (need_w_mixed_grad) gemm_tn_accumulate(grad_w_mixed, grad_scores, hidden_rows, first);
      } else {
        lhs = grad_logits_buffer.narrow(0, 0, rows);
        rhs = weight32;
        IcmScatterScoresArgs scatter{grad_scores.const_data_ptr<float>(), grad_scores.stride(0), rows, batch,
                                     blocks.y_a32().const_data_ptr<int32_t>(),
                                     blocks.y_b32().const_data_ptr<int32_t>(), lam.const_data_ptr<float>(),
                                     lhs.mutable_data_ptr<float>(), lhs.stride(0), num_classes};
        MIXKERNELS_CPU_KERNEL(icm_scatter_scores)(scatter);
        if (need_weight) gemm_tn_accumulate(grad_weight32, lhs, hidden_rows, first);
      }
      if (need_hidden) {
        Tensor out = grad_hidden32.narrow(0, hidden_fp32 ? begin : 0, rows);
        at::mm_out(out, lhs, rhs);
        if (!hidden_fp32) grad_hidden.narrow(0, begin, rows).copy_(out);
      }
    }
    // W~ and the buffers go before the (C, D) gradient is written.
    blocks.release();
    weight32 = grad_logits_buffer = grad_buffer = Tensor();

    if (need_weight || need_bias) {
      const bool scatter_weight = factorised && need_weight;
      if (scatter_weight) grad_weight = empty_for_writing({num_classes, features}, weight.options());
      if (need_bias) grad_bias = at::empty({num_classes}, bias.options());
      if (scatter_weight || need_bias) {
        const ClassEntries entries = class_entries(y_a, y_b, lam, num_classes);
        IcmClassScatterArgs args{entries.begin.data(), entries.pair.data(), entries.weight.data(), num_classes,
                                 features, scatter_weight ? grad_w_mixed.const_data_ptr<float>() : nullptr,
                                 scatter_weight ? grad_weight.mutable_data_ptr() : nullptr,
                                 to_dtype(weight.scalar_type()),
                                 need_bias ? grad_b_mixed.const_data_ptr<float>() : nullptr,
                                 need_bias ? grad_bias.mutable_data_ptr() : nullptr,
                                 to_dtype(need_bias ? bias.scalar_type() : weight.scalar_type())};
        MIXKERNELS_CPU_KERNEL(icm_class_scatter)(args);
      }
      if (!factorised && need_weight) {
        grad_weight = weight.scalar_type() == at::kFloat ? grad_weight32 : grad_weight32.to(weight.scalar_type());
      }
    }
    if (factorised && need_lam) {
      IcmGradLamArgs args{weight.const_data_ptr(), to_dtype(weight.scalar_type()), weight.stride(0),
                          weight.stride(1), bias.defined() ? bias.const_data_ptr() : nullptr,
                          bias.defined() ? bias.stride(0) : 0, y_a.const_data_ptr<int64_t>(),
                          y_b.const_data_ptr<int64_t>(), batch, features, grad_w_mixed.const_data_ptr<float>(),
                          bias.defined() ? grad_b_mixed.const_data_ptr<float>() : nullptr,
                          grad_lam.mutable_data_ptr<float>()};
      MIXKERNELS_CPU_KERNEL(icm_grad_lam)(args);
    }
  }
  return icm_backward_outputs(plan, grad_hidden, grad_weight, grad_bias, grad_lam, hidden, weight, bias);
}

}  // namespace

TORCH_LIBRARY_IMPL(mixkernels, CPU, m) {
  m.impl("infinite_class_mixup_loss", &infinite_class_mixup_loss_cpu);
  m.impl("infinite_class_mixup_loss_backward", &infinite_class_mixup_loss_backward_cpu);
}

}  // namespace mixkernels::cpu
