"""infinite_class_mixup_loss as torch.library ops: fake impls, autograd, dispatch.

``mixkernels::infinite_class_mixup_loss`` (+ ``_backward``): C++ schemas from
``csrc/ops.cpp`` with CPU kernels in ``csrc/cpu/infinite_class_mixup*.cpp``
and CUDA kernels in ``csrc/cuda/infinite_class_mixup*``.
``mixkernels::infinite_class_mixup_loss_triton`` (+ ``_backward``) are their
Triton twins with the same signatures (kernels in
``mixkernels/triton/infinite_class_mixup.py``).
The forward returns each sample's loss (row term + column term) and the
per-row / per-column log-sum-exp of the scores; the backward rebuilds the
softmaxes from them, a block of score rows at a time, and forms only the
gradients asked for. The reduction over the batch happens in Python, so
``reduction="none"`` leaves all gradient work to backward.

Two exact ways to the (B, B) scores ``S`` (``path``):

* ``"factorised"``: the mixed classifiers ``W~`` (B x D, a gather-lerp of
  weight rows), then ``S = hidden @ W~.T + b~``: 3 * B * B * D multiply-adds
  forward + backward.
* ``"logits"``: ``Z = hidden @ weight.T + bias`` (B x C), then
  ``S[b, k] = lerp(Z[b, y_b_k], Z[b, y_a_k], lam_k)`` by gathers: 3 * B * C * D
  multiply-adds plus O(B^2) gathers.

``"auto"`` takes the one with fewer multiply-adds: factorised when B <= C
(:func:`choose_path`). The GEMMs are nearly all the time on both paths (at
(B, D, C) = (4096, 2048, 1000) the logits path is 4x fewer multiply-adds).

The kept matrix (``keep_cache``): the forward computes S (factorised) or Z
(logits) whole and hands it to backward, which then runs 3 GEMMs instead of 4.
The C++ ops keep it only when gradients are wanted and it is no larger than
the larger of the inputs hidden and weight (:func:`keeps_cache`), so peak
memory stays within a small multiple of the inputs; otherwise backward
recomputes it block by block and memory stays O(B * D + C * D). The Triton
kernels never keep S (its tiles are recomputed on the tensor cores) and keep
Z whenever gradients are wanted.

Half inputs on the GPU backends run their GEMMs on half operands (W~ and the
blocks of dL/dS rounded to the input dtype); when ``lam`` wants a gradient,
an fp32 sum over the batch that this rounding would spoil, they get fp32
copies instead (tf32x3 on Triton, fp32 GEMMs on CUDA).
"""

from __future__ import annotations

from typing import Optional

import torch

from mixkernels import _backend

CPP_OP = "mixkernels::infinite_class_mixup_loss"
TRITON_OP = "mixkernels::infinite_class_mixup_loss_triton"
# The compiled backends with kernels for infinite_class_mixup_loss.
ICM_BACKENDS = ("cpu", "triton", "cuda")
PATHS = ("auto", "factorised", "logits")


def choose_path(batch: int, num_classes: int, path: str = "auto") -> str:
    """The path that computes the scores: ``path`` itself, or for ``"auto"`` the one
    with fewer multiply-adds, ``"factorised"`` (B * B * D per GEMM) when B <= C,
    else ``"logits"`` (B * C * D per GEMM)."""
    if path != "auto":
        return path
    return "factorised" if batch <= num_classes else "logits"


def keeps_cache(batch: int, features: int, num_classes: int, path: str) -> bool:
    """Whether the forward keeps S (factorised, B x B) or Z (logits, B x C) for
    backward: when it is no larger than the larger of hidden (B x D) and weight (C x D)."""
    width = batch if path == "factorised" else num_classes
    return batch * width <= max(batch, num_classes) * features


def _fake_forward(hidden, weight, bias, y_a, y_b, lam, axes, path, keep_cache):
    batch = hidden.shape[0]
    width = batch if path == "factorised" else weight.shape[0]

    def stat(present):
        return hidden.new_empty((batch if present else 0,), dtype=torch.float32)

    cache = hidden.new_empty((batch, width) if keep_cache else (0,), dtype=torch.float32)
    return stat(True), stat(axes != "col"), stat(axes != "row"), cache


def _fake_backward(grad_loss, hidden, weight, bias, y_a, y_b, lam, row_lse, col_lse, cache, axes, path,
                   output_mask):
    def grad_like(t, wanted, dtype=None):
        if wanted and t is not None:
            return t.new_empty(t.shape, dtype=dtype)
        like = t if t is not None else weight
        return like.new_empty((0,), dtype=dtype)

    return (grad_like(hidden, output_mask[0]), grad_like(weight, output_mask[1]),
            grad_like(bias, output_mask[2]), grad_like(lam, output_mask[3], torch.float32))


def _fake_forward_triton(hidden, weight, bias, y_a, y_b, lam, axes, path, keep_cache):
    # The Triton kernels keep Z (logits path) but never S: its tiles are recomputed.
    return _fake_forward(hidden, weight, bias, y_a, y_b, lam, axes, path, keep_cache and path == "logits")


def _setup_context(ctx, inputs, output):
    hidden, weight, bias, y_a, y_b, lam, axes, path, keep_cache = inputs
    _, row_lse, col_lse, cache = output
    ctx.save_for_backward(hidden, weight, bias, y_a, y_b, lam, row_lse, col_lse, cache)
    ctx.axes, ctx.path = axes, path


def _make_backward(backward_op):
    def backward(ctx, grad_loss, grad_row_lse, grad_col_lse, grad_cache):
        # The statistics and the cache are auxiliary outputs for backward;
        # nothing differentiates through them.
        hidden, weight, bias, y_a, y_b, lam, row_lse, col_lse, cache = ctx.saved_tensors
        needs = ctx.needs_input_grad
        mask = [needs[0], needs[1], needs[2] and bias is not None, needs[5]]
        grads = backward_op(grad_loss.float().contiguous(), hidden, weight, bias, y_a, y_b, lam, row_lse, col_lse,
                            cache, ctx.axes, ctx.path, mask)
        grad_hidden, grad_weight, grad_bias, grad_lam = (g if wanted else None for g, wanted in zip(grads, mask))
        return grad_hidden, grad_weight, grad_bias, None, None, grad_lam, None, None, None

    return backward


# ------------------------------------------------------------------ C++ / CUDA

if _backend.extension_loaded():
    torch.library.register_fake(CPP_OP)(_fake_forward)
    torch.library.register_fake(CPP_OP + "_backward")(_fake_backward)
    torch.library.register_autograd(
        CPP_OP, _make_backward(lambda *args: torch.ops.mixkernels.infinite_class_mixup_loss_backward(*args)),
        setup_context=_setup_context)


# ---------------------------------------------------------------------- Triton
# The same signatures as the C++ ops, as Python custom ops launching the
# kernels of mixkernels/triton/infinite_class_mixup.py (custom_op rather than
# triton_op so that they pass opcheck and compile under the Triton interpreter).

@torch.library.custom_op(TRITON_OP, mutates_args=())
def infinite_class_mixup_loss_triton(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                                     y_a: torch.Tensor, y_b: torch.Tensor, lam: torch.Tensor, axes: str, path: str,
                                     keep_cache: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                torch.Tensor]:
    from mixkernels.triton.infinite_class_mixup import icm_forward

    return icm_forward(hidden, weight, bias, y_a, y_b, lam, axes, path, keep_cache)


@torch.library.custom_op(TRITON_OP + "_backward", mutates_args=())
def infinite_class_mixup_loss_triton_backward(
        grad_loss: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
        y_a: torch.Tensor, y_b: torch.Tensor, lam: torch.Tensor, row_lse: torch.Tensor, col_lse: torch.Tensor,
        cache: torch.Tensor, axes: str, path: str,
        output_mask: list[bool]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from mixkernels.triton.infinite_class_mixup import icm_backward

    return icm_backward(grad_loss, hidden, weight, bias, y_a, y_b, lam, row_lse, col_lse, cache, axes, path,
                        output_mask)


infinite_class_mixup_loss_triton.register_fake(_fake_forward_triton)
infinite_class_mixup_loss_triton_backward.register_fake(_fake_backward)
infinite_class_mixup_loss_triton.register_autograd(_make_backward(infinite_class_mixup_loss_triton_backward),
                                                   setup_context=_setup_context)


def infinite_class_mixup_loss_rows(hidden: torch.Tensor, weight: torch.Tensor, bias, y_a: torch.Tensor,
                                   y_b: torch.Tensor, lam: torch.Tensor, axes: str, path: str,
                                   backend: str) -> torch.Tensor:
    """Per-sample fp32 loss from a compiled backend; inputs already checked and
    normalised (int64 labels, fp32 (B,) lam, ``path`` one of :data:`PATHS`)."""
    if backend not in ICM_BACKENDS:
        raise ValueError(f"no compiled infinite_class_mixup_loss for backend {backend!r}")
    batch, features = hidden.shape
    num_classes = weight.shape[0]
    path = choose_path(batch, num_classes, path)
    wants_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (hidden, weight, bias, lam))
    if backend != "cpu" and hidden.dtype != torch.float32 and torch.is_grad_enabled() and lam.requires_grad:
        # The GPU kernels run half inputs' GEMMs on half operands (W~ and G
        # rounded to hidden's dtype, 2^-9 relative); d lam is an fp32 sum
        # over the batch that this would leave with about that error, where
        # the reference is exact to fp32. A lam that wants a gradient sends
        # fp32 copies (tf32x3 GEMMs); the casts carry the other gradients back.
        hidden, weight = hidden.float(), weight.float()
        bias = bias.float() if bias is not None else None
    if backend == "triton":
        # Z is kept whenever gradients are wanted: its backward reads it whole.
        loss, _, _, _ = infinite_class_mixup_loss_triton(hidden, weight, bias, y_a, y_b, lam, axes, path,
                                                         wants_grad and path == "logits")
        return loss
    # "cpu" and "cuda": one C++ op, dispatched on the tensors' device.
    keep = wants_grad and keeps_cache(batch, features, num_classes, path)
    loss, _, _, _ = torch.ops.mixkernels.infinite_class_mixup_loss(hidden, weight, bias, y_a, y_b, lam, axes, path,
                                                                   keep)
    return loss
