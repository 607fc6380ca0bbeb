"""Triton kernels and launchers for the mixup cross-entropy.

The loss of row ``i`` is ``lam*CE(z, y_a) + (1-lam)*CE(z, y_b)`` with timm's
label smoothing. The target is sparse (two classes plus a uniform share), so
the forward pass needs only three reductions of the row -- its log-sum-exp, and
``sum(z)`` when smoothing -- plus two scalar gathers ``z[y_a]``, ``z[y_b]``.
The formulas are those of ``csrc/include/mixkernels/cross_entropy_math.h`` so
that the Triton, CPU and CUDA backends compute the same numbers:

    loss   = (1-s) * (lam*(lse - z_a) + (1-lam)*(lse - z_b)) + s*(lse - sum(z)/C)
    dloss/dz_c = g * (exp(z_c - lse) - t_c),
    t_c    = s/C + (1-s)*lam*[c == y_a] + (1-s)*(1-lam)*[c == y_b]

The forward kernel runs one program per row and walks the row in ``BLOCK_C``
chunks with an online (running) max and sum of exponentials, so any number of
classes works with a fixed register budget. The backward kernel is
elementwise and runs over (row, column block) so that a small batch with many
classes still fills the GPU. Both read and compute in fp32 whatever the
storage dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mixkernels.triton._aot import specialisations
from mixkernels.triton._launch import device_guard, unit_column_stride

__all__ = [
    "mixup_cross_entropy_forward",
    "mixup_cross_entropy_backward",
    "launch_config",
    "SHIPPED_CONFIGS",
    "KERNELS",
    "aot_cases",
]


@triton.jit
def _mixup_ce_forward_kernel(
    logits_ptr,
    logits_row_stride,
    y_a_ptr,
    y_b_ptr,
    lam_ptr,
    loss_ptr,
    lse_ptr,
    num_classes,
    smoothing,
    BLOCK_C: tl.constexpr,
    HAS_SMOOTHING: tl.constexpr,
):
    # int64 before the multiply: row * row_stride passes 2^31 on big batches.
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * logits_row_stride
    cols = tl.arange(0, BLOCK_C)

    # Per-lane running max and sum of exp(z - max); the lanes are combined
    # once after the loop, so the loop has no cross-warp reduction in it.
    run_max = tl.full([BLOCK_C], float("-inf"), tl.float32)
    run_sum = tl.zeros([BLOCK_C], tl.float32)
    z_sum = tl.zeros([BLOCK_C], tl.float32)
    for start in range(0, num_classes, BLOCK_C):
        offs = start + cols
        mask = offs < num_classes
        z = tl.load(row_ptr + offs, mask=mask, other=float("-inf")).to(tl.float32)
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
        if HAS_SMOOTHING:
            z_sum += tl.where(mask, z, 0.0)

    row_max = tl.max(run_max, axis=0)
    # Lanes that saw only -inf hold sum 0 and get scale exp(-inf) = 0; an
    # all -inf row must not make that exp(-inf - -inf) = NaN.
    safe_row_max = tl.where(row_max == float("-inf"), 0.0, row_max)
    sum_exp = tl.sum(run_sum * tl.exp(run_max - safe_row_max), axis=0)
    # An all -inf row has lse -inf, as torch.logsumexp gives (lse_from_max_sum).
    lse = tl.where(row_max == float("-inf"), row_max, row_max + tl.log(sum_exp))

    y_a = tl.load(y_a_ptr + row)
    y_b = tl.load(y_b_ptr + row)
    lam = tl.load(lam_ptr + row)
    z_a = tl.load(row_ptr + y_a).to(tl.float32)
    z_b = tl.load(row_ptr + y_b).to(tl.float32)
    # Weighted sum of the non-negative (lse - z_y) terms: nothing large cancels.
    loss = (1.0 - smoothing) * (lam * (lse - z_a) + (1.0 - lam) * (lse - z_b))
    if HAS_SMOOTHING:
        # tl.cast, not .to: the JIT passes C == 1 as a constexpr, which has no .to.
        loss += smoothing * (lse - tl.sum(z_sum, axis=0) / tl.cast(num_classes, tl.float32))
    tl.store(loss_ptr + row, loss)
    tl.store(lse_ptr + row, lse)


@triton.jit
def _mixup_ce_backward_kernel(
    grad_loss_ptr,
    logits_ptr,
    logits_row_stride,
    y_a_ptr,
    y_b_ptr,
    lam_ptr,
    lse_ptr,
    grad_logits_ptr,
    num_classes,
    smoothing,
    BLOCK_C: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = cols < num_classes

    g = tl.load(grad_loss_ptr + row)
    lse = tl.load(lse_ptr + row)
    y_a = tl.load(y_a_ptr + row)
    y_b = tl.load(y_b_ptr + row)
    lam = tl.load(lam_ptr + row)
    z = tl.load(logits_ptr + row * logits_row_stride + cols, mask=mask, other=0.0).to(tl.float32)

    # The target as mixup_ce_target builds it; y_a == y_b gets both shares.
    target = smoothing * (1.0 / tl.cast(num_classes, tl.float32))
    target = target + tl.where(cols == y_a, (1.0 - smoothing) * lam, 0.0)
    target = target + tl.where(cols == y_b, (1.0 - smoothing) * (1.0 - lam), 0.0)
    grad = g * (tl.exp(z - lse) - target)
    # grad_logits is a fresh contiguous (B, C) tensor: its row stride is C.
    tl.store(grad_logits_ptr + row * num_classes + cols,
             grad.to(grad_logits_ptr.dtype.element_ty), mask=mask)


KERNELS = {
    "forward": _mixup_ce_forward_kernel,
    "backward": _mixup_ce_backward_kernel,
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


def launch_config(kernel_name: str, num_classes: int, dtype: torch.dtype) -> dict:
    """BLOCK_C and num_warps for ``kernel_name`` ("forward"/"backward") at ``num_classes``.

    The rule (see ``_TIERS``) depends on the kernel and C only: the same
    tiers fit fp32 and the 16-bit dtypes, whose values are upcast to fp32 in
    registers anyway.
    """
    if kernel_name not in KERNELS:
        raise ValueError(f"unknown kernel {kernel_name!r}; expected one of {sorted(KERNELS)}")
    del dtype  # the tiers are the same for every dtype (checked by the AOT test)
    for max_c, block_c, num_warps in _TIERS[kernel_name]:
        if max_c is None or num_classes <= max_c:
            return {"BLOCK_C": block_c, "num_warps": num_warps}
    raise AssertionError("unreachable")


# Every (kernel, constexprs, num_warps) the launchers can use; the AOT test
# compiles each for fp32/bf16/fp16 and sm_80/sm_90 and checks its resources.
SHIPPED_CONFIGS = [
    ("forward", {"BLOCK_C": block_c, "HAS_SMOOTHING": has_smoothing}, num_warps)
    for _, block_c, num_warps in _TIERS["forward"]
    for has_smoothing in (False, True)
] + [
    ("backward", {"BLOCK_C": block_c}, num_warps)
    for _, block_c, num_warps in _TIERS["backward"]
]

_TRITON_DTYPE = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def aot_cases(kernel_name: str, constexprs: dict, dtype: torch.dtype) -> list[dict]:
    """What to compile ahead of time for one shipped config and logits dtype.

    Each case is a dict with ``signature``, ``attrs``, ``constexprs`` (for
    ``_aot.compile_kernel``) and a ``label``. The cases are the
    specialisations the JIT makes of the integer arguments:

    * "aligned": row stride and C multiples of 16 (contiguous logits with
      C % 16 == 0): vector loads and stores;
    * "unaligned": only the pointers 16-byte aligned (as torch allocates);
    * "C=1" (smallest tier only): the JIT passes an integer equal to 1 as a
      constexpr, so C == 1 with contiguous rows is a kernel of its own.

    Strides and C are typed i32; the JIT picks i64 only past 2^31, which
    changes nothing but the (already int64) offset arithmetic.
    """
    t = _TRITON_DTYPE[dtype]
    if kernel_name == "forward":
        sig = {"logits_ptr": f"*{t}", "logits_row_stride": "i32", "y_a_ptr": "*i64",
               "y_b_ptr": "*i64", "lam_ptr": "*fp32", "loss_ptr": "*fp32", "lse_ptr": "*fp32",
               "num_classes": "i32", "smoothing": "fp32",
               "BLOCK_C": "constexpr", "HAS_SMOOTHING": "constexpr"}
    elif kernel_name == "backward":
        sig = {"grad_loss_ptr": "*fp32", "logits_ptr": f"*{t}", "logits_row_stride": "i32",
               "y_a_ptr": "*i64", "y_b_ptr": "*i64", "lam_ptr": "*fp32", "lse_ptr": "*fp32",
               "grad_logits_ptr": f"*{t}", "num_classes": "i32", "smoothing": "fp32",
               "BLOCK_C": "constexpr"}
    else:
        raise ValueError(f"unknown kernel {kernel_name!r}; expected one of {sorted(KERNELS)}")
    return specialisations(sig, ["logits_row_stride", "num_classes"], constexprs,
                            with_unit_c=constexprs["BLOCK_C"] == _TIERS[kernel_name][0][1])


def mixup_cross_entropy_forward(logits: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor,
                                lam: torch.Tensor, label_smoothing: float
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row mixup cross-entropy ``(B,)`` fp32 and the row log-sum-exp ``(B,)`` fp32.

    ``logits`` (B, C) fp32/bf16/fp16 with unit column stride and any row
    stride; ``y_a``, ``y_b`` int64 (B,); ``lam`` fp32 (B,). Inputs are assumed
    checked by the caller (labels in [0, C), lam in [0, 1]).
    """
    logits = unit_column_stride(logits)
    batch, num_classes = logits.shape
    loss = torch.empty(batch, dtype=torch.float32, device=logits.device)
    lse = torch.empty(batch, dtype=torch.float32, device=logits.device)
    if batch == 0:
        return loss, lse
    cfg = launch_config("forward", num_classes, logits.dtype)
    smoothing = float(label_smoothing)
    with device_guard(logits):
        _mixup_ce_forward_kernel[(batch,)](
            logits, logits.stride(0), y_a.contiguous(), y_b.contiguous(), lam.contiguous(),
            loss, lse, num_classes, smoothing,
            BLOCK_C=cfg["BLOCK_C"], HAS_SMOOTHING=smoothing != 0.0, num_warps=cfg["num_warps"],
        )
    return loss, lse


def mixup_cross_entropy_backward(grad_loss: torch.Tensor, logits: torch.Tensor,
                                 y_a: torch.Tensor, y_b: torch.Tensor, lam: torch.Tensor,
                                 lse: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """``d loss / d logits`` as a new contiguous (B, C) tensor in ``logits.dtype``.

    ``grad_loss`` fp32 (B,) is the incoming per-row gradient, already scaled
    by the reduction; ``lse`` is the forward's second output.
    """
    logits = unit_column_stride(logits)
    batch, num_classes = logits.shape
    grad_logits = torch.empty((batch, num_classes), dtype=logits.dtype, device=logits.device)
    if grad_logits.numel() == 0:
        return grad_logits
    cfg = launch_config("backward", num_classes, logits.dtype)
    grid = (batch, triton.cdiv(num_classes, cfg["BLOCK_C"]))
    with device_guard(logits):
        _mixup_ce_backward_kernel[grid](
            grad_loss.contiguous(), logits, logits.stride(0), y_a.contiguous(), y_b.contiguous(),
            lam.contiguous(), lse.contiguous(), grad_logits, num_classes, float(label_smoothing),
            BLOCK_C=cfg["BLOCK_C"], num_warps=cfg["num_warps"],
        )
    return grad_logits
