// Every mixkernels op's schema. Kernels register under the CPU and CUDA
// dispatch keys in csrc/cpu and csrc/cuda; fake (meta) implementations and
// autograd formulas are registered from Python (mixkernels/ops/).
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(mixkernels, m) {
  // Per-row mixup cross-entropy and the row log-sum-exp saved for backward.
  // y_a, y_b: int64 (B,); lam: fp32 (B,); loss and lse: fp32 (B,).
  m.def("mixup_cross_entropy(Tensor logits, Tensor y_a, Tensor y_b, Tensor lam, "
        "float label_smoothing) -> (Tensor, Tensor)");
  // grad_loss: fp32 (B,), the incoming gradient of each row's loss.
  m.def("mixup_cross_entropy_backward(Tensor grad_loss, Tensor logits, Tensor y_a, Tensor y_b, "
        "Tensor lam, Tensor lse, float label_smoothing) -> Tensor");
  // Per-row soft-target cross-entropy: (loss, lse, target_sum), all fp32 (B,).
  m.def("soft_target_cross_entropy(Tensor logits, Tensor target) -> (Tensor, Tensor, Tensor)");
  // (grad_logits, grad_target); grad_target has shape (0,) unless asked for.
  m.def("soft_target_cross_entropy_backward(Tensor grad_loss, Tensor logits, Tensor target, "
        "Tensor lse, Tensor target_sum, bool needs_target_grad) -> (Tensor, Tensor)");
  // Row mixing, the primitive of mix_batch. x: (B, N) with unit stride along N;
  // src: int64 (B,), a permutation; w_self, w_src: fp32 (B,).
  //   out[i] = w_self[i] * x[i] + w_src[i] * x[src[i]]      (fp32 arithmetic)
  m.def("mix_rows(Tensor x, Tensor src, Tensor w_self, Tensor w_src) -> Tensor");
  // The same, written into x; correct for any permutation (cycles included).
  m.def("mix_rows_(Tensor(a!) x, Tensor src, Tensor w_self, Tensor w_src) -> ()");
  // Per-row dots for the weights' gradients: (B, 2) fp32 with
  //   [i, 0] = sum_n grad[i, n] * x[i, n],   [i, 1] = sum_n grad[i, n] * x[src[i], n]
  m.def("mix_rows_dots(Tensor grad, Tensor x, Tensor src) -> Tensor");
  // Image mixing with boxes, the primitive of cutmix_batch (and of Mixup's
  // per-sample mixup-or-cutmix). x: (B, C, H, W), contiguous or channels-last;
  // src: int64 (B,), a permutation; w_self, w_src: fp32 (B,); box_self,
  // box_src: int64 (B, 4) half-open (y0, y1, x0, x1). At pixel p of image i:
  //   out[i, :, p] = (p in box_self[i] ? 0 : w_self[i]) * x[i, :, p]
  //                + (p in box_src[i]  ? 1 : w_src[i])  * x[src[i], :, p]
  // A term whose weight is 0 is skipped, not multiplied (so a pasted box is an
  // exact copy even next to inf/NaN). Forward: box_self = box_src = the boxes;
  // the gradient is the same op on the incoming gradient with the inverse
  // permutation and box_src = boxes[inv].
  m.def("mix_images(Tensor x, Tensor src, Tensor w_self, Tensor w_src, Tensor box_self, "
        "Tensor box_src) -> Tensor");
  // The same, written into x; correct for any permutation (cycles included).
  m.def("mix_images_(Tensor(a!) x, Tensor src, Tensor w_self, Tensor w_src, Tensor box_self, "
        "Tensor box_src) -> ()");
  // Image mixing with a low-resolution mask, the primitive of mask_mix
  // (AutoMix, SAMix). x: (B, C, H, W), contiguous or channels-last; src:
  // int64 (B,), a permutation; mask: (B, 1, h, w), fp32 or x's dtype, any
  // values. m = the mask upsampled to (H, W) as F.interpolate(mask, (H, W),
  // mode="bilinear", align_corners=False) computes it (mode="nearest" when not
  // bilinear), in fp32, never stored. At pixel p of image i, every channel:
  //   out[i, :, p] = m[i, p] * x[i, :, p] + (1 - m[i, p]) * x[src[i], :, p]
  // (fp32 arithmetic; out in x's dtype and memory format).
  m.def("mask_mix(Tensor x, Tensor src, Tensor mask, bool bilinear) -> Tensor");
  // (grad_x, grad_mask) for the incoming grad (x's shape, dtype and memory
  // format), inv the inverse permutation of src, U the upsampling:
  //   grad_x[i]    = m[i] * grad[i] + (1 - m[inv[i]]) * grad[inv[i]]
  //   grad_mask[i] = U^T( sum_c grad[i, c] * (x[i, c] - x[src[i], c]) )
  // grad_mask has mask's dtype and shape (contiguous); a gradient not asked
  // for is returned with shape (0,). Deterministic (no atomics).
  m.def("mask_mix_backward(Tensor grad, Tensor x, Tensor src, Tensor mask, bool bilinear, bool needs_x_grad, "
        "bool needs_mask_grad) -> (Tensor, Tensor)");
  // Infinite Class Mixup (shared/notes/icm.md). hidden (B, D), weight (C, D)
  // and bias (C,) in one dtype (fp32, bf16 or fp16; any strides); y_a, y_b:
  // int64 (B,); lam: fp32 (B,). Scores S = hidden @ W~.T + b~ (B x B) with
  // W~_k = lerp(weight[y_b_k], weight[y_a_k], lam_k), b~ alike, all in fp32.
  // axes: "both", "row" or "col"; path: "factorised" (S from W~) or "logits"
  // (S gathered from Z = hidden @ weight.T + bias), the same loss either way.
  // Returns (loss, row_lse, col_lse, cache), all fp32: loss (B,) = per sample
  // b, lse(S[b, :]) - S[b, b] (row term) + lse(S[:, b]) - S[b, b] (column
  // term); row_lse / col_lse (B,), or (0,) without their term; cache: with
  // keep_cache, S (B, B) or Z (B, C) for the backward to read instead of
  // recomputing, otherwise (0,).
  m.def("infinite_class_mixup_loss(Tensor hidden, Tensor weight, Tensor? bias, Tensor y_a, Tensor y_b, "
        "Tensor lam, str axes, str path, bool keep_cache) -> (Tensor, Tensor, Tensor, Tensor)");
  // (grad_hidden, grad_weight, grad_bias, grad_lam) for grad_loss: fp32 (B,),
  // the incoming gradient of each sample's loss, given the forward's outputs.
  // Gradients in the inputs' dtypes (grad_lam fp32), computed only where
  // output_mask says so (the others, and grad_bias without a bias, are (0,)).
  // Deterministic (no atomics).
  m.def("infinite_class_mixup_loss_backward(Tensor grad_loss, Tensor hidden, Tensor weight, Tensor? bias, "
        "Tensor y_a, Tensor y_b, Tensor lam, Tensor row_lse, Tensor col_lse, Tensor cache, str axes, str path, "
        "bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");
  // Whether this build compiled the CUDA kernels (for mixkernels.backends()).
  m.def("built_with_cuda() -> bool", []() -> bool {
#ifdef MIXKERNELS_WITH_CUDA
    return true;
#else
    return false;
#endif
  });
}

// The ops register through TORCH_LIBRARY when the library is loaded; this
// empty module only lets `import mixkernels._C` load it.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
