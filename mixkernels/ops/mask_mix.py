"""mask_mix as torch.library ops: fake impls, autograd, dispatch.

The C++ op ``mixkernels::mask_mix`` (schema and semantics in csrc/ops.cpp,
CPU kernels in csrc/cpu/mask_mix*, CUDA kernels in csrc/cuda/mask_mix*)
mixes each image with its partner through its low-resolution mask,
upsampled inside the kernel. Its gradient is one call of
``mixkernels::mask_mix_backward``, which writes only the gradients asked
for: x's (a gather through the inverse permutation) and the mask's (U^T of
the per-pixel dot over channels, reduced deterministically).

``mixkernels::mask_mix_triton`` (+ ``_backward``) are their Triton twins,
with the same signatures: Python custom ops launching the kernels of
mixkernels/triton/mask_mix.py (``custom_op`` rather than ``triton_op`` so
that they pass ``opcheck`` and compile under the Triton interpreter on the
CPU).
"""

from __future__ import annotations

import torch

from mixkernels import _backend

CPP_OP = "mixkernels::mask_mix"
TRITON_OP = "mixkernels::mask_mix_triton"
# The compiled backends with mask_mix kernels.
MASK_MIX_BACKENDS = ("cpu", "triton", "cuda")


def _fake_forward(x, src, mask, bilinear):
    return torch.empty_like(x, memory_format=torch.preserve_format)


def _fake_backward(grad, x, src, mask, bilinear, needs_x_grad, needs_mask_grad):
    grad_x = torch.empty_like(x, memory_format=torch.preserve_format) if needs_x_grad else x.new_empty((0,))
    grad_mask = mask.new_empty(mask.shape if needs_mask_grad else (0,))
    return grad_x, grad_mask


def _setup_context(ctx, inputs, output):
    x, src, mask, bilinear = inputs
    ctx.save_for_backward(x, src, mask)
    ctx.bilinear = bilinear


def _in_layout_of(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """t with like's memory format: the kernels walk grad and x with one layout."""
    if like.is_contiguous():
        return t.contiguous()
    return t.contiguous(memory_format=torch.channels_last)


def _make_backward(backward_op):
    def backward(ctx, grad):
        x, src, mask = ctx.saved_tensors
        needs_x_grad, needs_mask_grad = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        if not (needs_x_grad or needs_mask_grad):
            return None, None, None, None
        grad_x, grad_mask = backward_op(_in_layout_of(grad, x), x, src, mask, ctx.bilinear, needs_x_grad,
                                        needs_mask_grad)
        return (grad_x if needs_x_grad else None), None, (grad_mask if needs_mask_grad else None), None

    return backward


# ------------------------------------------------------------------ C++ / CUDA

if _backend.extension_loaded():
    torch.library.register_fake(CPP_OP)(_fake_forward)
    torch.library.register_fake(CPP_OP + "_backward")(_fake_backward)
    torch.library.register_autograd(
        CPP_OP, _make_backward(lambda *args: torch.ops.mixkernels.mask_mix_backward(*args)),
        setup_context=_setup_context)


# ---------------------------------------------------------------------- Triton

@torch.library.custom_op(TRITON_OP, mutates_args=())
def mask_mix_triton(x: torch.Tensor, src: torch.Tensor, mask: torch.Tensor, bilinear: bool) -> torch.Tensor:
    from mixkernels.triton.mask_mix import mask_mix_forward

    return mask_mix_forward(x, src, mask, bilinear)


@torch.library.custom_op(TRITON_OP + "_backward", mutates_args=())
def mask_mix_triton_backward(grad: torch.Tensor, x: torch.Tensor, src: torch.Tensor, mask: torch.Tensor,
                             bilinear: bool, needs_x_grad: bool,
                             needs_mask_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from mixkernels.triton.mask_mix import mask_mix_backward

    return mask_mix_backward(grad, x, src, mask, bilinear, needs_x_grad, needs_mask_grad)


mask_mix_triton.register_fake(_fake_forward)
mask_mix_triton_backward.register_fake(_fake_backward)
mask_mix_triton.register_autograd(_make_backward(mask_mix_triton_backward), setup_context=_setup_context)


def mask_mix_on_backend(x: torch.Tensor, src: torch.Tensor, mask: torch.Tensor, bilinear: bool,
                        backend: str) -> torch.Tensor:
    """Mask mixing on a compiled backend (inputs checked and normalised)."""
    if backend in ("cpu", "cuda"):  # one C++ op, dispatched on the tensors' device
        return torch.ops.mixkernels.mask_mix(x, src, mask, bilinear)
    if backend == "triton":
        return mask_mix_triton(x, src, mask, bilinear)
    raise RuntimeError(f"mask_mix has no {backend!r} kernel yet: it runs on backends "
                       f"{', '.join(map(repr, MASK_MIX_BACKENDS))}, and backend 'torch' runs the reference anywhere")
