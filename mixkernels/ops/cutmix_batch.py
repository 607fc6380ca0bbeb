"""cutmix_batch as torch.library ops: fake impl, autograd, dispatch.

Built on the image-mixing primitive ``mixkernels::mix_images`` (schema and
semantics in csrc/ops.cpp; CPU kernel in csrc/cpu/mix_rows*, CUDA kernels in
csrc/cuda/mix_images*) and its Triton twin ``mixkernels::mix_images_triton``
(mixkernels/triton/cutmix_batch.py): per pixel, a
weighted sum of the image and its partner, where a box replaces the weights by
"take the partner". CutMix is ``mix_images(x, perm, 1, 0, boxes, boxes)``;
the gradient with respect to x is the same op on the incoming gradient with
the inverse permutation and the partners' boxes, so no atomics are needed.
"""

from __future__ import annotations

import torch

from mixkernels import _backend

CPP_OP = "mixkernels::mix_images"
# The compiled backends with image-mixing kernels (cutmix_batch, Mixup).
MIX_IMAGES_BACKENDS = ("cpu", "triton", "cuda")
TRITON_OP = "mixkernels::mix_images_triton"


def _fake_mix_images(x, src, w_self, w_src, box_self, box_src):
    return torch.empty_like(x, memory_format=torch.preserve_format)


def _fake_mix_images_inplace(x, src, w_self, w_src, box_self, box_src):
    return None


def _setup_context(ctx, inputs, output):
    x, src, w_self, w_src, box_self, box_src = inputs
    ctx.save_for_backward(src, w_self, w_src, box_self, box_src)


def _make_backward(mix_images_op):
    def backward(ctx, grad):
        src, w_self, w_src, box_self, box_src = ctx.saved_tensors
        if any(ctx.needs_input_grad[2:4]):
            raise RuntimeError("mixkernels::mix_images: the mixing weights are not differentiable "
                               "(cutmix_batch never makes them require grad)")
        if not ctx.needs_input_grad[0]:
            return (None,) * 6
        inv = torch.argsort(src)
        grad = grad.contiguous() if not grad.is_contiguous(memory_format=torch.channels_last) else grad
        grad_x = mix_images_op(grad, inv, w_self, w_src[inv].contiguous(), box_self, box_src[inv].contiguous())
        return grad_x, None, None, None, None, None

    return backward


if _backend.extension_loaded():
    torch.library.register_fake(CPP_OP)(_fake_mix_images)
    torch.library.register_fake(CPP_OP + "_")(_fake_mix_images_inplace)
    torch.library.register_autograd(
        CPP_OP, _make_backward(lambda *a: torch.ops.mixkernels.mix_images(*a)), setup_context=_setup_context)


@torch.library.custom_op(TRITON_OP, mutates_args=())
def mix_images_triton(x: torch.Tensor, src: torch.Tensor, w_self: torch.Tensor, w_src: torch.Tensor,
                      box_self: torch.Tensor, box_src: torch.Tensor) -> torch.Tensor:
    from mixkernels.triton.cutmix_batch import mix_images_forward

    return mix_images_forward(x, src, w_self, w_src, box_self, box_src)


@torch.library.custom_op(TRITON_OP + "_", mutates_args=("x",))
def mix_images_triton_(x: torch.Tensor, src: torch.Tensor, w_self: torch.Tensor, w_src: torch.Tensor,
                       box_self: torch.Tensor, box_src: torch.Tensor) -> None:
    from mixkernels.triton.cutmix_batch import mix_images_inplace as launch

    launch(x, src, w_self, w_src, box_self, box_src)


mix_images_triton.register_fake(_fake_mix_images)
mix_images_triton_.register_fake(_fake_mix_images_inplace)
mix_images_triton.register_autograd(_make_backward(mix_images_triton), setup_context=_setup_context)


def mix_images(x: torch.Tensor, src: torch.Tensor, w_self: torch.Tensor, w_src: torch.Tensor,
               box_self: torch.Tensor, box_src: torch.Tensor, backend: str) -> torch.Tensor:
    """Image mixing with boxes on a compiled backend (inputs checked and normalised)."""
    if backend in ("cpu", "cuda"):
        return torch.ops.mixkernels.mix_images(x, src, w_self, w_src, box_self, box_src)
    if backend == "triton":
        return mix_images_triton(x, src, w_self, w_src, box_self, box_src)
    raise RuntimeError(f"cutmix_batch has no {backend!r} kernel yet: its kernels exist for backend 'cpu', "
                       "and backend 'torch' runs the reference anywhere")


def mix_images_inplace(x: torch.Tensor, src: torch.Tensor, w_self: torch.Tensor, w_src: torch.Tensor,
                       box_self: torch.Tensor, box_src: torch.Tensor, backend: str) -> None:
    """Image mixing with boxes written into x, correct for any permutation."""
    if backend in ("cpu", "cuda"):
        torch.ops.mixkernels.mix_images_(x, src, w_self, w_src, box_self, box_src)
        return
    if backend == "triton":
        mix_images_triton_(x, src, w_self, w_src, box_self, box_src)
        return
    raise RuntimeError(f"in-place image mixing has no {backend!r} kernel yet: its kernels exist for backend "
                       "'cpu', and backend 'torch' runs the reference anywhere")
