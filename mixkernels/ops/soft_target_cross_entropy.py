"""soft_target_cross_entropy as torch.library ops: fake impls, autograd, dispatch.

Same structure as :mod:`mixkernels.ops.mixup_cross_entropy`: the C++/CUDA op
``mixkernels::soft_target_cross_entropy`` and the Triton custom op
``mixkernels::soft_target_cross_entropy_triton`` return per-row
``(loss, lse, target_sum)`` in fp32; the backward recomputes softmax from lse
and writes the gradient of logits (and of target when it requires grad).
"""

from __future__ import annotations

import torch

from mixkernels import _backend

CPP_OP = "mixkernels::soft_target_cross_entropy"
TRITON_OP = "mixkernels::soft_target_cross_entropy_triton"


def _fake_forward(logits, target):
    batch = logits.shape[0]
    return tuple(logits.new_empty((batch,), dtype=torch.float32) for _ in range(3))


def _fake_backward(grad_loss, logits, target, lse, target_sum, needs_target_grad):
    grad_target = target.new_empty(target.shape if needs_target_grad else (0,))
    return logits.new_empty(logits.shape), grad_target


def _setup_context(ctx, inputs, output):
    logits, target = inputs
    _, lse, target_sum = output
    ctx.save_for_backward(logits, target, lse, target_sum)


def _make_backward(backward_op):
    def backward(ctx, grad_loss, grad_lse, grad_target_sum):
        # lse and target_sum are auxiliary outputs for backward only.
        logits, target, lse, target_sum = ctx.saved_tensors
        needs_logits_grad, needs_target_grad = ctx.needs_input_grad[:2]
        if not (needs_logits_grad or needs_target_grad):
            return None, None
        grad_logits, grad_target = backward_op(grad_loss.float().contiguous(), logits, target, lse, target_sum,
                                               needs_target_grad)
        return (grad_logits if needs_logits_grad else None,
                grad_target if needs_target_grad else None)

    return backward


if _backend.extension_loaded():
    torch.library.register_fake(CPP_OP)(_fake_forward)
    torch.library.register_fake(CPP_OP + "_backward")(_fake_backward)
    torch.library.register_autograd(
        CPP_OP,
        _make_backward(lambda *args: torch.ops.mixkernels.soft_target_cross_entropy_backward(*args)),
        setup_context=_setup_context)


@torch.library.custom_op(TRITON_OP, mutates_args=())
def soft_target_cross_entropy_triton(logits: torch.Tensor,
                                     target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from mixkernels.triton.soft_target_cross_entropy import soft_target_cross_entropy_forward

    return soft_target_cross_entropy_forward(logits, target)


@torch.library.custom_op(TRITON_OP + "_backward", mutates_args=())
def soft_target_cross_entropy_triton_backward(grad_loss: torch.Tensor, logits: torch.Tensor, target: torch.Tensor,
                                              lse: torch.Tensor, target_sum: torch.Tensor,
                                              needs_target_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from mixkernels.triton.soft_target_cross_entropy import soft_target_cross_entropy_backward

    grad_logits, grad_target = soft_target_cross_entropy_backward(grad_loss, logits, target, lse, target_sum,
                                                                  needs_target_grad)
    if grad_target is None:  # the op's schema returns a tensor either way, as the C++ op does
        grad_target = target.new_empty((0,))
    return grad_logits, grad_target


soft_target_cross_entropy_triton.register_fake(_fake_forward)
soft_target_cross_entropy_triton_backward.register_fake(_fake_backward)
soft_target_cross_entropy_triton.register_autograd(_make_backward(soft_target_cross_entropy_triton_backward),
                                                   setup_context=_setup_context)


def soft_target_cross_entropy_rows(logits: torch.Tensor, target: torch.Tensor, backend: str) -> torch.Tensor:
    """Per-row fp32 loss from a compiled backend; inputs already checked and normalised."""
    if backend in ("cpu", "cuda"):
        loss, _, _ = torch.ops.mixkernels.soft_target_cross_entropy(logits, target)
    elif backend == "triton":
        loss, _, _ = soft_target_cross_entropy_triton(logits, target)
    else:
        raise ValueError(f"no compiled soft_target_cross_entropy for backend {backend!r}")
    return loss
