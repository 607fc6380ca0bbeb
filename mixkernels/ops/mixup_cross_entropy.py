"""mixup_cross_entropy as torch.library ops: fake impls, autograd, dispatch.

Two op families compute the per-row loss and the row log-sum-exp:

* ``mixkernels::mixup_cross_entropy`` (+ ``_backward``): C++ schemas from
  ``csrc/ops.cpp`` with CPU kernels in ``csrc/cpu/cross_entropy*.cpp`` and
  CUDA kernels in ``csrc/cuda/cross_entropy*``.
* ``mixkernels::mixup_cross_entropy_triton`` (+ ``_backward``): Python custom
  ops launching the kernels of ``mixkernels/triton/mixup_cross_entropy.py``
  (``custom_op`` rather than ``triton_op`` so that they pass ``opcheck`` and
  compile under the Triton interpreter on the CPU).

The backward recomputes softmax from the saved lse (Cut Cross-Entropy's
"recompute rather than store"): only ``(B,)`` fp32 lse is kept beyond the
inputs, and with ``reduction="none"`` all gradient work waits for backward.
"""

from __future__ import annotations

import torch

from mixkernels import _backend

CPP_OP = "mixkernels::mixup_cross_entropy"
TRITON_OP = "mixkernels::mixup_cross_entropy_triton"


def _fake_forward(logits, y_a, y_b, lam, label_smoothing):
    batch = logits.shape[0]
    return (logits.new_empty((batch,), dtype=torch.float32),
            logits.new_empty((batch,), dtype=torch.float32))


def _fake_backward(grad_loss, logits, y_a, y_b, lam, lse, label_smoothing):
    return logits.new_empty(logits.shape)


def grad_lam(grad_loss, logits, y_a, y_b, label_smoothing):
    """d loss_i / d lam_i = -(1 - s) * (z[y_a] - z[y_b]), times the row's gradient."""
    z_a = logits.gather(1, y_a.view(-1, 1)).view(-1).float()
    z_b = logits.gather(1, y_b.view(-1, 1)).view(-1).float()
    return -grad_loss * (1.0 - label_smoothing) * (z_a - z_b)


def _setup_context(ctx, inputs, output):
    logits, y_a, y_b, lam, label_smoothing = inputs
    _, lse = output
    ctx.save_for_backward(logits, y_a, y_b, lam, lse)
    ctx.label_smoothing = label_smoothing


def _make_backward(backward_op):
    def backward(ctx, grad_loss, grad_lse):
        # lse is an auxiliary output for backward; nothing differentiates through it.
        logits, y_a, y_b, lam, lse = ctx.saved_tensors
        grad_loss = grad_loss.float().contiguous()
        grad_logits = lam_grad = None
        if ctx.needs_input_grad[0]:
            grad_logits = backward_op(grad_loss, logits, y_a, y_b, lam, lse, ctx.label_smoothing)
        if ctx.needs_input_grad[3]:
            lam_grad = grad_lam(grad_loss, logits, y_a, y_b, ctx.label_smoothing)
        return grad_logits, None, None, lam_grad, None

    return backward


# ------------------------------------------------------------------ C++ / CUDA

if _backend.extension_loaded():
    torch.library.register_fake(CPP_OP)(_fake_forward)
    torch.library.register_fake(CPP_OP + "_backward")(_fake_backward)
    torch.library.register_autograd(
        CPP_OP,
        _make_backward(lambda *args: torch.ops.mixkernels.mixup_cross_entropy_backward(*args)),
        setup_context=_setup_context)


# ---------------------------------------------------------------------- Triton

@torch.library.custom_op(TRITON_OP, mutates_args=())
def mixup_cross_entropy_triton(logits: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor, lam: torch.Tensor,
                               label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    from mixkernels.triton.mixup_cross_entropy import mixup_cross_entropy_forward

    return mixup_cross_entropy_forward(logits, y_a, y_b, lam, label_smoothing)


@torch.library.custom_op(TRITON_OP + "_backward", mutates_args=())
def mixup_cross_entropy_triton_backward(grad_loss: torch.Tensor, logits: torch.Tensor, y_a: torch.Tensor,
                                        y_b: torch.Tensor, lam: torch.Tensor, lse: torch.Tensor,
                                        label_smoothing: float) -> torch.Tensor:
    from mixkernels.triton.mixup_cross_entropy import mixup_cross_entropy_backward

    return mixup_cross_entropy_backward(grad_loss, logits, y_a, y_b, lam, lse, label_smoothing)


mixup_cross_entropy_triton.register_fake(_fake_forward)
mixup_cross_entropy_triton_backward.register_fake(_fake_backward)
mixup_cross_entropy_triton.register_autograd(_make_backward(mixup_cross_entropy_triton_backward),
                                             setup_context=_setup_context)


def mixup_cross_entropy_rows(logits: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor, lam: torch.Tensor,
                             label_smoothing: float, backend: str) -> torch.Tensor:
    """Per-row fp32 loss from a compiled backend; inputs already checked and normalised
    (logits with unit class stride, int64 labels, fp32 (B,) lam)."""
    if backend in ("cpu", "cuda"):
        loss, _ = torch.ops.mixkernels.mixup_cross_entropy(logits, y_a, y_b, lam, label_smoothing)
    elif backend == "triton":
        loss, _ = mixup_cross_entropy_triton(logits, y_a, y_b, lam, label_smoothing)
    else:
        raise ValueError(f"no compiled mixup_cross_entropy for backend {backend!r}")
    return loss
