"""mix_batch as torch.library ops: fake impls, autograd, dispatch.

mix_batch is built on one primitive, row mixing of a (B, N) view of the batch:

    mix_rows(x, src, w_self, w_src)[i] = w_self[i] * x[i] + w_src[i] * x[src[i]]

with ``src`` a permutation. ``mix_batch(x, perm, lam)`` is
``mix_rows(x, perm, lam, 1 - lam)``, and the gradient with respect to x is the
same primitive applied to the incoming gradient with the inverse permutation,
``mix_rows(g, inv, w_self, w_src[inv])``: every row of x receives its own
share and its partner's, without atomics. The weights' gradients are per-row
dots (``mix_rows_dots``).

Two op families, as for the losses:

* ``mixkernels::mix_rows`` / ``mix_rows_`` / ``mix_rows_dots``: C++ schemas
  (csrc/ops.cpp), CPU kernels in csrc/cpu/mix_rows*, CUDA kernels in
  csrc/cuda/mix_rows*.
* ``mixkernels::mix_rows_triton`` / ``mix_rows_triton_`` /
  ``mix_rows_dots_triton``: custom ops launching mixkernels/triton/mix_batch.py.
"""

from __future__ import annotations

import torch

from mixkernels import _backend

CPP_OP = "mixkernels::mix_rows"
# The compiled backends with row-mixing kernels.
MIX_ROWS_BACKENDS = ("cpu", "triton", "cuda")
TRITON_OP = "mixkernels::mix_rows_triton"


def _fake_mix_rows(x, src, w_self, w_src):
    return x.new_empty(x.shape)


def _fake_mix_rows_inplace(x, src, w_self, w_src):
    return None


def _fake_mix_rows_dots(grad, x, src):
    return x.new_empty((x.shape[0], 2), dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)  # x, src, w_self, w_src


def _make_backward(mix_rows_op, dots_op):
    def backward(ctx, grad):
        x, src, w_self, w_src = ctx.saved_tensors
        needs_x, _, needs_w_self, needs_w_src = ctx.needs_input_grad
        grad = grad.contiguous()
        grad_x = grad_w_self = grad_w_src = None
        if needs_x:
            # Row i of x was read as row i (weight w_self[i]) and as the partner
            # of row inv[i] (weight w_src[inv[i]]).
            inv = torch.argsort(src)
            grad_x = mix_rows_op(grad, inv, w_self, w_src[inv].contiguous())
        if needs_w_self or needs_w_src:
            dots = dots_op(grad, x, src)
            grad_w_self, grad_w_src = dots[:, 0], dots[:, 1]
        return grad_x, None, grad_w_self, grad_w_src

    return backward


if _backend.extension_loaded():
    torch.library.register_fake(CPP_OP)(_fake_mix_rows)
    torch.library.register_fake(CPP_OP + "_")(_fake_mix_rows_inplace)
    torch.library.register_fake(CPP_OP + "_dots")(_fake_mix_rows_dots)
    torch.library.register_autograd(
        CPP_OP,
        _make_backward(lambda *a: torch.ops.mixkernels.mix_rows(*a), lambda *a: torch.ops.mixkernels.mix_rows_dots(*a)),
        setup_context=_setup_context)


@torch.library.custom_op(TRITON_OP, mutates_args=())
def mix_rows_triton(x: torch.Tensor, src: torch.Tensor, w_self: torch.Tensor, w_src: torch.Tensor) -> torch.Tensor:
    from mixkernels.triton.mix_batch import mix_rows_forward

    return mix_rows_forward(x, src, w_self, w_src)


@torch.library.custom_op(TRITON_OP + "_", mutates_args=("x",))
def mix_rows_triton_(x: torch.Tensor, src: torch.Tensor, w_self: torch.Tensor, w_src: torch.Tensor) -> None:
    from mixkernels.triton.mix_batch import mix_rows_inplace

    mix_rows_inplace(x, src, w_self, w_src)


@torch.library.custom_op("mixkernels::mix_rows_dots_triton", mutates_args=())
def mix_rows_dots_triton(grad: torch.Tensor, x: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    from mixkernels.triton.mix_batch import mix_rows_dots

    return mix_rows_dots(grad, x, src)


mix_rows_triton.register_fake(_fake_mix_rows)
mix_rows_triton_.register_fake(_fake_mix_rows_inplace)
mix_rows_dots_triton.register_fake(_fake_mix_rows_dots)
mix_rows_triton.register_autograd(_make_backward(mix_rows_triton, mix_rows_dots_triton),
                                  setup_context=_setup_context)


def mix_rows(x: torch.Tensor, src: torch.Tensor, w_self: torch.Tensor, w_src: torch.Tensor,
             backend: str) -> torch.Tensor:
    """Out-of-place row mixing on a compiled backend (inputs checked and normalised)."""
    if backend in ("cpu", "cuda"):
        return torch.ops.mixkernels.mix_rows(x, src, w_self, w_src)
    if backend == "triton":
        return mix_rows_triton(x, src, w_self, w_src)
    raise ValueError(f"no compiled mix_batch for backend {backend!r}")


def mix_rows_inplace(x: torch.Tensor, src: torch.Tensor, w_self: torch.Tensor, w_src: torch.Tensor,
                     backend: str) -> None:
    """Row mixing written into x, correct for any permutation (cycles included)."""
    if backend in ("cpu", "cuda"):
        torch.ops.mixkernels.mix_rows_(x, src, w_self, w_src)
    elif backend == "triton":
        mix_rows_triton_(x, src, w_self, w_src)
    else:
        raise ValueError(f"no compiled mix_batch for backend {backend!r}")
