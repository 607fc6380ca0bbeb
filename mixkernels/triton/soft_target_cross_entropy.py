"""Triton kernels and launchers for the dense soft-target cross-entropy.

timm's ``SoftTargetCrossEntropy``: ``loss_row = sum_c -t_c * log_softmax(z)_c``,
computed as in ``csrc/include/mixkernels/cross_entropy_math.h`` from three row
reductions so that the Triton, CPU and CUDA backends agree:

    loss        = sum(t) * lse(z) - sum(t * z)
    dloss/dz_c  = g * (sum(t) * exp(z_c - lse) - t_c)
    dloss/dt_c  = g * (lse - z_c)

The target need not sum to one (hence ``sum(t)``, saved for backward). The
forward kernel runs one program per row and walks the row in ``BLOCK_C``
chunks with an online max and sum of exponentials, so any number of classes
works; the backward kernel is elementwise over (row, column block). All math
is fp32 whatever the storage dtypes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mixkernels.triton._aot import specialisations
from mixkernels.triton._launch import device_guard, unit_column_stride

__all__ = [
    "soft_target_cross_entropy_forward",
    "soft_target_cross_entropy_backward",
    "launch_config",
    "SHIPPED_CONFIGS",
    "KERNELS",
    "aot_cases",
]


@triton.jit
def _soft_target_ce_forward_kernel(
    logits_ptr,
    logits_row_stride,
    target_ptr,
    target_row_stride,
    loss_ptr,
    lse_ptr,
    target_sum_ptr,
    num_classes,
    BLOCK_C: tl.constexpr,
):
    # int64 before the multiply: row * row_stride passes 2^31 on big batches.
    row = tl.program_id(0).to(tl.int64)
    logits_row = logits_ptr + row * logits_row_stride
    target_row = target_ptr + row * target_row_stride
    cols = tl.arange(0, BLOCK_C)

    # Per-lane running max, sum of exp(z - max), sum(t) and sum(t*z); the
    # lanes are combined once after the loop.
    run_max = tl.full([BLOCK_C], float("-inf"), tl.float32)
    run_sum = tl.zeros([BLOCK_C], tl.float32)
    t_sum = tl.zeros([BLOCK_C], tl.float32)
    t_dot = tl.zeros([BLOCK_C], tl.float32)
    for start in range(0, num_classes, BLOCK_C):
        offs = start + cols
        mask = offs < num_classes
        # Masked lanes read z = 0, t = 0: they add nothing to sum(t) or sum(t*z)
        # (a real t = 0 at z = -inf still gives NaN there, as the reference does).
        z = tl.load(logits_row + offs, mask=mask, other=0.0).to(tl.float32)
        t = tl.load(target_row + offs, mask=mask, other=0.0).to(tl.float32)
        t_sum += t
        t_dot += t * z
        z = tl.where(mask, z, float("-inf"))
        # One exp per element: exp(smaller - larger) either rescales the old
        # sum (when z is the new max) or is the new term (when it is not).
        # NaN must win the max so that a NaN logit reaches lse and the loss.
        new_max = tl.maximum(run_max, z, propagate_nan=tl.PropagateNan.ALL)
        smaller = tl.minimum(run_max, z, propagate_nan=tl.PropagateNan.ALL)
        # Both -inf (masked lanes, -inf logits): subtract 0, not -inf, so the
        # term is exp(-inf) = 0 rather than exp(-inf - -inf) = NaN.
        e = tl.exp(smaller - tl.where(new_max == float("-inf"), 0.0, new_max))
        run_sum = tl.where(z > run_max, run_sum * e + 1.0, run_sum + e)
        run_max = new_max

    row_max = tl.max(run_max, axis=0)
    # Lanes that saw only -inf hold sum 0 and get scale exp(-inf) = 0; an
    # all -inf row must not make that exp(-inf - -inf) = NaN.
    safe_row_max = tl.where(row_max == float("-inf"), 0.0, row_max)
    sum_exp = tl.sum(run_sum * tl.exp(run_max - safe_row_max), axis=0)
    # An all -inf row has lse -inf, as torch.logsumexp gives (lse_from_max_sum).
    lse = tl.where(row_max == float("-inf"), row_max, row_max + tl.log(sum_exp))
    target_sum = tl.sum(t_sum, axis=0)
    tl.store(loss_ptr + row, target_sum * lse - tl.sum(t_dot, axis=0))
    tl.store(lse_ptr + row, lse)
    tl.store(target_sum_ptr + row, target_sum)


@triton.jit
def _soft_target_ce_backward_kernel(
    grad_loss_ptr,
    logits_ptr,
    logits_row_stride,
    target_ptr,
    target_row_stride,
    lse_ptr,
    target_sum_ptr,
    grad_logits_ptr,
    grad_target_ptr,
    num_classes,
    BLOCK_C: tl.constexpr,
    NEEDS_TARGET_GRAD: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = cols < num_classes

    g = tl.load(grad_loss_ptr + row)
    lse = tl.load(lse_ptr + row)
    target_sum = tl.load(target_sum_ptr + row)
    z = tl.load(logits_ptr + row * logits_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    t = tl.load(target_ptr + row * target_row_stride + cols, mask=mask, other=0.0).to(tl.float32)

    # The gradients are fresh contiguous (B, C) tensors: their row stride is C.
    out_offs = row * num_classes + cols
    grad_z = g * (target_sum * tl.exp(z - lse) - t)
    tl.store(grad_logits_ptr + out_offs, grad_z.to(grad_logits_ptr.dtype.element_ty), mask=mask)
    if NEEDS_TARGET_GRAD:
        grad_t = g * (lse - z)
        tl.store(grad_target_ptr + out_offs, grad_t.to(grad_target_ptr.dtype.element_ty),
                 mask=mask)


KERNELS = {
    "forward": _soft_target_ce_forward_kernel,
    "backward": _soft_target_ce_backward_kernel,
}

# Launch configurations, by the number of classes C: (max C, BLOCK_C, num_warps).
#   C <=  128 : BLOCK_C =  128, 1 warp   (CIFAR-10/100: one chunk, 4 values a thread)
#   C <= 1024 : BLOCK_C = 1024, 4 warps  (ImageNet-1k: one chunk, 8 values a thread)
#   C >  1024 : forward  BLOCK_C = 4096, 8 warps (16 values a thread per chunk: a
#                        warp issues the next chunk's loads only after this chunk's
#                        math, so a wide chunk keeps more bytes in flight per row);
#               backward BLOCK_C = 2048, 8 warps (8 values a thread: elementwise, many
#                        programs in flight; at 16 values a thread ptxas spilled the
#                        soft-target backward on unaligned fp16 rows).
# Few tiers on purpose: each one is compiled ahead of time for every dtype,
# alignment case and arch by tests/test_triton_aot.py, which also checks that
# launch_config never picks anything else. The forward walks the row in
# BLOCK_C chunks (any C); the backward launches ceil(C / BLOCK_C) programs a row.
_TIERS = {
    "forward": ((128, 128, 1), (1024, 1024, 4), (None, 4096, 8)),
    "backward": ((128, 128, 1), (1024, 1024, 4), (None, 2048, 8)),
}


def launch_config(kernel_name: str, num_classes: int, dtype) -> dict:
    """BLOCK_C and num_warps for ``kernel_name`` ("forward"/"backward") at ``num_classes``.

    The rule (see ``_TIERS``) depends on the kernel and C only: values are
    upcast to fp32 in registers, so the 16-bit dtypes need no other tiers.
    """
    if kernel_name not in KERNELS:
        raise ValueError(f"unknown kernel {kernel_name!r}; expected one of {sorted(KERNELS)}")
    del dtype  # the tiers are the same for every dtype (checked by the AOT test)
    for max_c, block_c, num_warps in _TIERS[kernel_name]:
        if max_c is None or num_classes <= max_c:
            return {"BLOCK_C": block_c, "num_warps": num_warps}
    raise AssertionError("unreachable")


# Every (kernel, constexprs, num_warps) the launchers can use; the AOT test
# compiles each for every dtype pairing and for sm_80/sm_90.
SHIPPED_CONFIGS = [
    ("forward", {"BLOCK_C": block_c}, num_warps) for _, block_c, num_warps in _TIERS["forward"]
] + [
    ("backward", {"BLOCK_C": block_c, "NEEDS_TARGET_GRAD": needs_target_grad}, num_warps)
    for _, block_c, num_warps in _TIERS["backward"]
    for needs_target_grad in (False, True)
]

_TRITON_DTYPE = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def aot_cases(kernel_name: str, constexprs: dict, dtype: torch.dtype) -> list[dict]:
    """What to compile ahead of time for one shipped config and logits dtype.

    Each case is a dict with ``signature``, ``attrs``, ``constexprs`` (for
    ``_aot.compile_kernel``) and a ``label``: one per target dtype the
    launchers accept (``dtype`` itself and fp32) times the specialisations
    the JIT makes of the integer arguments:

    * "aligned": row strides and C multiples of 16 (contiguous inputs with
      C % 16 == 0): vector loads and stores;
    * "unaligned": only the pointers 16-byte aligned (as torch allocates);
    * "C=1" (smallest tier only): the JIT passes an integer equal to 1 as a
      constexpr, so C == 1 with contiguous rows is a kernel of its own.
    """
    if kernel_name not in KERNELS:
        raise ValueError(f"unknown kernel {kernel_name!r}; expected one of {sorted(KERNELS)}")
    t_logits = _TRITON_DTYPE[dtype]
    cases = []
    for t_target in dict.fromkeys((t_logits, "fp32")):
        if kernel_name == "forward":
            sig = {"logits_ptr": f"*{t_logits}", "logits_row_stride": "i32",
                   "target_ptr": f"*{t_target}", "target_row_stride": "i32",
                   "loss_ptr": "*fp32", "lse_ptr": "*fp32", "target_sum_ptr": "*fp32",
                   "num_classes": "i32", "BLOCK_C": "constexpr"}
        else:
            sig = {"grad_loss_ptr": "*fp32", "logits_ptr": f"*{t_logits}",
                   "logits_row_stride": "i32", "target_ptr": f"*{t_target}",
                   "target_row_stride": "i32", "lse_ptr": "*fp32", "target_sum_ptr": "*fp32",
                   "grad_logits_ptr": f"*{t_logits}", "grad_target_ptr": f"*{t_target}",
                   "num_classes": "i32", "BLOCK_C": "constexpr", "NEEDS_TARGET_GRAD": "constexpr"}
        size_args = ["logits_row_stride", "target_row_stride", "num_classes"]
        smallest_tier = constexprs["BLOCK_C"] == _TIERS[kernel_name][0][1]
        for case in specialisations(sig, size_args, constexprs, with_unit_c=smallest_tier):
            case["label"] = f"target {t_target}, {case['label']}"
            cases.append(case)
    return cases


def soft_target_cross_entropy_forward(logits: torch.Tensor, target: torch.Tensor
                                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row loss, row log-sum-exp and row ``sum(target)``, each (B,) fp32.

    ``logits`` (B, C) fp32/bf16/fp16 and ``target`` (B, C) in fp32 or the
    logits' dtype, both with unit column stride and any row stride.
    """
    logits = unit_column_stride(logits)
    target = unit_column_stride(target)
    batch, num_classes = logits.shape
    loss = torch.empty(batch, dtype=torch.float32, device=logits.device)
    lse = torch.empty(batch, dtype=torch.float32, device=logits.device)
    target_sum = torch.empty(batch, dtype=torch.float32, device=logits.device)
    if batch == 0:
        return loss, lse, target_sum
    if num_classes == 0:
        # Empty rows: an empty sum is 0 (the reference's loss); lse of nothing is -inf.
        return loss.zero_(), lse.fill_(float("-inf")), target_sum.zero_()
    cfg = launch_config("forward", num_classes, logits.dtype)
    with device_guard(logits):
        _soft_target_ce_forward_kernel[(batch,)](
            logits, logits.stride(0), target, target.stride(0), loss, lse, target_sum,
            num_classes, BLOCK_C=cfg["BLOCK_C"], num_warps=cfg["num_warps"],
        )
    return loss, lse, target_sum


def soft_target_cross_entropy_backward(grad_loss: torch.Tensor, logits: torch.Tensor,
                                       target: torch.Tensor, lse: torch.Tensor,
                                       target_sum: torch.Tensor, needs_target_grad: bool
                                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(d loss/d logits, d loss/d target or None)`` as new contiguous (B, C) tensors.

    ``grad_loss`` fp32 (B,) is the incoming per-row gradient, already scaled
    by the reduction; ``lse`` and ``target_sum`` are the forward's outputs.
    The logits gradient has the logits' dtype, the target gradient the
    target's; the latter is computed only when ``needs_target_grad``.
    """
    logits = unit_column_stride(logits)
    target = unit_column_stride(target)
    batch, num_classes = logits.shape
    grad_logits = torch.empty((batch, num_classes), dtype=logits.dtype, device=logits.device)
    grad_target = (torch.empty((batch, num_classes), dtype=target.dtype, device=target.device)
                   if needs_target_grad else None)
    if grad_logits.numel() == 0:
        return grad_logits, grad_target
    cfg = launch_config("backward", num_classes, logits.dtype)
    grid = (batch, triton.cdiv(num_classes, cfg["BLOCK_C"]))
    with device_guard(logits):
        _soft_target_ce_backward_kernel[grid](
            grad_loss.contiguous(), logits, logits.stride(0), target, target.stride(0),
            lse.contiguous(), target_sum.contiguous(), grad_logits,
            # Without a target gradient the pointer is never touched; pass a
            # tensor of the target's dtype so the signature matches the AOT one.
            grad_target if needs_target_grad else target,
            num_classes, BLOCK_C=cfg["BLOCK_C"], NEEDS_TARGET_GRAD=bool(needs_target_grad),
            num_warps=cfg["num_warps"],
        )
    return grad_logits, grad_target
