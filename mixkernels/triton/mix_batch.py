"""Triton kernels and launchers for row mixing, the primitive of ``mix_batch``.

``mix_batch(x, perm, lam) = lam*x + (1-lam)*x[perm]`` is, on the (B, N) view
of ``x``, the row mix of ``csrc/include/mixkernels/mix_math.h``:

    out[i, n] = w_self[i] * x[i, n] + w_src[i] * x[src[i], n]      (fp32)

with ``(w_self, w_src) = (lam, 1 - lam)`` and ``src = perm``. Its gradients
need the same mix (with the inverse permutation) and two dots a row:

    dots[i, 0] = sum_n grad[i, n] * x[i, n]
    dots[i, 1] = sum_n grad[i, n] * x[src[i], n]

Three kernels, all reading any storage dtype and computing in fp32:

* forward: elementwise over (row block, column block) tiles into a new tensor;
* in place: ``x`` overwritten with its mix for any permutation. A program owns
  a strip of columns of *all* rows: every value it reads (``x[i, strip]`` and
  ``x[src[i], strip]``) lies in that strip, which no other program touches,
  so reading the whole strip before writing any of it is enough -- no grid
  synchronisation, no host sync, whatever cycles ``src`` has. When the batch
  fits one tile the strip is held in registers; otherwise the mixed strip
  goes through a per-program scratch strip in global memory (two phases);
* dots: one program per (row block, N split), looping over its share of N in
  chunks with per-lane fp32 accumulators; the splits' partial sums are added
  in a fixed order afterwards, so the result is deterministic (no atomics).

Row offsets are int64 (B*N may pass 2^31); column indices are int32, so one
row holds fewer than 2^31 - 4096 values (the launchers check).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mixkernels.triton._aot import specialisations
from mixkernels.triton._launch import NO_FP_FUSION, device_guard, sm_count, unit_column_stride

__all__ = [
    "mix_rows_forward",
    "mix_rows_inplace",
    "mix_rows_dots",
    "launch_config",
    "SHIPPED_CONFIGS",
    "KERNELS",
    "aot_cases",
]

# CUDA caps grid axes 1 and 2 at 65535 programs; axis 0 allows 2^31 - 1.
_MAX_GRID_Y = 65535
# Column indices are int32 and may run one tile past N.
_MAX_ROW_LENGTH = 2**31 - 4096


def _check_row_length(n_cols: int) -> None:
    if n_cols > _MAX_ROW_LENGTH:
        raise ValueError(f"rows of {n_cols} values: the Triton row-mixing kernels take at most "
                         f"{_MAX_ROW_LENGTH} a row")


@triton.jit
def _mixed_tile(x_ptr, x_row_stride, src_ptr, w_self_ptr, w_src_ptr, rows, row_mask, cols,
                col_mask):
    """fp32 ``w_self*x[rows, cols] + w_src*x[src[rows], cols]`` for a 2-D tile.

    ``rows`` must be int64 so that ``row * stride`` cannot overflow.
    """
    partner = tl.load(src_ptr + rows, mask=row_mask, other=0)
    w_self = tl.load(w_self_ptr + rows, mask=row_mask, other=0.0)
    w_src = tl.load(w_src_ptr + rows, mask=row_mask, other=0.0)
    mask = row_mask[:, None] & col_mask[None, :]
    own = tl.load(x_ptr + (rows * x_row_stride)[:, None] + cols[None, :], mask=mask,
                  other=0.0).to(tl.float32)
    other = tl.load(x_ptr + (partner * x_row_stride)[:, None] + cols[None, :], mask=mask,
                    other=0.0).to(tl.float32)
    # The element formula of mix_math.h: w_self * own + w_src * partner.
    return w_self[:, None] * own + w_src[:, None] * other


# n_rows (here and below) only bounds the row mask: specialising it (B % 16,
# B == 1) would compile variants that run no faster and that the AOT test
# would not cover.
@triton.jit(do_not_specialize=["n_rows"])
def _mix_rows_forward_kernel(
    x_ptr,
    x_row_stride,
    src_ptr,
    w_self_ptr,
    w_src_ptr,
    out_ptr,
    n_rows,
    n_cols,
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < n_rows
    # Axis 1 holds at most 65535 programs: past that, each walks several
    # column blocks (one block each in every realistic shape).
    for col_block in range(tl.program_id(1), tl.cdiv(n_cols, BLOCK_N), tl.num_programs(1)):
        cols = col_block * BLOCK_N + tl.arange(0, BLOCK_N)
        col_mask = cols < n_cols
        mixed = _mixed_tile(x_ptr, x_row_stride, src_ptr, w_self_ptr, w_src_ptr, rows, row_mask,
                            cols, col_mask)
        # out is a fresh contiguous (B, N) tensor: its row stride is N.
        tl.store(out_ptr + (rows * n_cols)[:, None] + cols[None, :],
                 mixed.to(out_ptr.dtype.element_ty),
                 mask=row_mask[:, None] & col_mask[None, :])


@triton.jit(do_not_specialize=["n_rows"])
def _mix_rows_inplace_kernel(
    x_ptr,
    x_row_stride,
    src_ptr,
    w_self_ptr,
    w_src_ptr,
    scratch_ptr,
    n_rows,
    n_cols,
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
    USE_SCRATCH: tl.constexpr,
):
    pid = tl.program_id(0)
    strip_cols = tl.arange(0, BLOCK_N)
    tile_rows = tl.arange(0, BLOCK_R).to(tl.int64)
    if USE_SCRATCH:
        # This program's (n_rows, BLOCK_N) scratch strip, reused for each of its strips.
        scratch = scratch_ptr + pid.to(tl.int64) * n_rows * BLOCK_N
    # Persistent when USE_SCRATCH (the grid is capped so that scratch stays
    # small); otherwise the grid has one program per strip and this runs once.
    for strip in range(pid, tl.cdiv(n_cols, BLOCK_N), tl.num_programs(0)):
        cols = strip * BLOCK_N + strip_cols
        col_mask = cols < n_cols
        if USE_SCRATCH:
            # Phase 1: mix every row of the strip into scratch; x is only read.
            for row_start in range(0, n_rows, BLOCK_R):
                rows = row_start + tile_rows
                row_mask = rows < n_rows
                mixed = _mixed_tile(x_ptr, x_row_stride, src_ptr, w_self_ptr, w_src_ptr, rows,
                                    row_mask, cols, col_mask)
                # Rounded to x's dtype here: what phase 2 copies is exactly
                # what the forward kernel would store.
                tl.store(scratch + (rows * BLOCK_N)[:, None] + strip_cols[None, :],
                         mixed.to(x_ptr.dtype.element_ty),
                         mask=row_mask[:, None] & col_mask[None, :])
            # Every thread's reads of x (any row may be some row's partner)
            # and writes of scratch are done before any thread writes x.
            tl.debug_barrier()
            # Phase 2: copy the mixed strip back over x.
            for row_start in range(0, n_rows, BLOCK_R):
                rows = row_start + tile_rows
                mask = (rows < n_rows)[:, None] & col_mask[None, :]
                mixed = tl.load(scratch + (rows * BLOCK_N)[:, None] + strip_cols[None, :],
                                mask=mask)
                tl.store(x_ptr + (rows * x_row_stride)[:, None] + cols[None, :], mixed,
                         mask=mask)
            # The next strip overwrites scratch: this one's copy-back must be done.
            tl.debug_barrier()
        else:
            # The whole batch is one tile: the mixed strip stays in registers.
            row_mask = tile_rows < n_rows
            mixed = _mixed_tile(x_ptr, x_row_stride, src_ptr, w_self_ptr, w_src_ptr, tile_rows,
                                row_mask, cols, col_mask)
            # Threads hold different rows; a row one thread is about to
            # overwrite may be the partner another thread has yet to read.
            tl.debug_barrier()
            tl.store(x_ptr + (tile_rows * x_row_stride)[:, None] + cols[None, :],
                     mixed.to(x_ptr.dtype.element_ty),
                     mask=row_mask[:, None] & col_mask[None, :])


@triton.jit(do_not_specialize=["n_rows", "chunks_per_split"])
def _mix_rows_dots_kernel(
    grad_ptr,
    grad_row_stride,
    x_ptr,
    x_row_stride,
    src_ptr,
    partial_ptr,
    n_rows,
    n_cols,
    chunks_per_split,
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < n_rows
    split = tl.program_id(1)
    num_splits = tl.num_programs(1)
    partner = tl.load(src_ptr + rows, mask=row_mask, other=0)
    grad_rows = grad_ptr + rows * grad_row_stride
    own_rows = x_ptr + rows * x_row_stride
    partner_rows = x_ptr + partner * x_row_stride

    # Per-lane sums, reduced across lanes once after the loop.
    acc_own = tl.zeros([BLOCK_R, BLOCK_N], tl.float32)
    acc_partner = tl.zeros([BLOCK_R, BLOCK_N], tl.float32)
    split_start = split * chunks_per_split * BLOCK_N
    for chunk in range(0, chunks_per_split):
        cols = split_start + chunk * BLOCK_N + tl.arange(0, BLOCK_N)
        mask = row_mask[:, None] & (cols < n_cols)[None, :]
        g = tl.load(grad_rows[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        own = tl.load(own_rows[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        other = tl.load(partner_rows[:, None] + cols[None, :], mask=mask,
                        other=0.0).to(tl.float32)
        acc_own += g * own
        acc_partner += g * other
    # partial is (B, num_splits, 2) fp32, contiguous; it is the output itself
    # when there is one split.
    out = partial_ptr + (rows * num_splits + split) * 2
    tl.store(out, tl.sum(acc_own, axis=1), mask=row_mask)
    tl.store(out + 1, tl.sum(acc_partner, axis=1), mask=row_mask)


KERNELS = {
    "forward": _mix_rows_forward_kernel,
    "inplace": _mix_rows_inplace_kernel,
    "dots": _mix_rows_dots_kernel,
}

# Launch configurations: (bound, BLOCK_R, BLOCK_N, num_warps), first match wins.
# forward and dots go by the row length N, with tiles of 2048 values whatever
# N, so that short rows are packed several to a program instead of leaving
# most lanes masked:
#   N <=   64 : 32 rows x   64 columns, 8 warps   (targets of few classes)
#   N <=  256 :  8 rows x  256 columns, 4 warps
#   N <= 1024 :  2 rows x 1024 columns, 8 warps   (ImageNet-1k targets, embeddings)
#   N >  1024 :  1 row  x 2048 columns, 8 warps   (images: the forward launches
#                N/2048 programs a row; dots loops over them, see
#                _dots_chunks_per_split)
# Mostly 8 values a thread: rows whose stride or N is not a multiple of 16 get
# no vector accesses, so each value carries its own 64-bit addresses (own,
# partner, grad) and 16 a thread cost up to 230 registers, and a spill in dots
# (2 x 1024 on 4 warps, unaligned fp16). The 8 x 256 tile is the exception:
# on 8 warps ptxas spilled 8 bytes of the unaligned fp16 dots kernel for sm_90
# while using only 64 registers; on 4 warps it uses at most 122 and none.
_ROW_TIERS = ((64, 32, 64, 8), (256, 8, 256, 4), (1024, 2, 1024, 8), (None, 1, 2048, 8))

# inplace goes by the batch B, since a program holds all B rows of its column
# strip: (bound, BLOCK_R, BLOCK_N, num_warps, USE_SCRATCH).
#   B <=  16 :  16 x 128, 4 warps
#   B <=  64 :  64 x  64, 8 warps
#   B <= 128 : 128 x  32, 8 warps   (32 fp32 columns: one 128-byte line a row)
#   B <= 256 : 256 x  16, 8 warps   (narrower, to keep 16 values a thread)
#   B >  256 : 128 x  32, 8 warps, through scratch (the strip no longer fits;
#              nothing needs to stay in registers across the row blocks)
# 16 values a thread, unaligned rows: up to 182 registers. At 32 (256 x 32 or
# 128 x 32 on 8 and 4 warps, 64 x 64 on 4) ptxas used all 255 and spilled on
# some; 256 x 32 on 16 warps is capped at 128 registers a thread and spilled.
_INPLACE_TIERS = ((16, 16, 128, 4, False), (64, 64, 64, 8, False), (128, 128, 32, 8, False),
                  (256, 256, 16, 8, False), (None, 128, 32, 8, True))

_TIERS = {"forward": _ROW_TIERS, "dots": _ROW_TIERS, "inplace": _INPLACE_TIERS}
# Few tiers on purpose: tests/test_triton_aot.py compiles each for every dtype,
# alignment case and arch, and checks that launch_config picks nothing else.

# Software pipelining moves a loop's loads ahead of the previous iteration's
# stores, which the in-place kernel must never see reordered; its loops are
# elementwise streams with nothing to gain from it anyway.
_NUM_STAGES = {"forward": 3, "inplace": 1, "dots": 3}


def launch_config(kernel_name: str, n_rows: int, n_cols: int, dtype: torch.dtype) -> dict:
    """Constexprs, ``num_warps`` and ``num_stages`` for ``kernel_name`` on a (B, N) input.

    ``kernel_name`` is "forward", "inplace" or "dots". forward and dots pick
    their tile by N; inplace by B, with ``USE_SCRATCH`` when B does not fit
    one tile (see ``_TIERS``). The same tiers serve every dtype: values are
    upcast to fp32 in registers.
    """
    if kernel_name not in KERNELS:
        raise ValueError(f"unknown kernel {kernel_name!r}; expected one of {sorted(KERNELS)}")
    del dtype  # the tiers are the same for every dtype (checked by the AOT test)
    size = n_rows if kernel_name == "inplace" else n_cols
    for bound, block_r, block_n, num_warps, *scratch in _TIERS[kernel_name]:
        if bound is None or size <= bound:
            cfg = {"BLOCK_R": block_r, "BLOCK_N": block_n, "num_warps": num_warps,
                   "num_stages": _NUM_STAGES[kernel_name]}
            if kernel_name == "inplace":
                cfg["USE_SCRATCH"] = scratch[0]
            return cfg
    raise AssertionError("unreachable")


# Every (kernel, constexprs, num_warps) the launchers can use; the AOT test
# compiles each for fp32/bf16/fp16 and sm_80/sm_90 and checks its resources.
SHIPPED_CONFIGS = [
    (name, {"BLOCK_R": block_r, "BLOCK_N": block_n}, num_warps)
    for name in ("forward", "dots")
    for _, block_r, block_n, num_warps in _TIERS[name]
] + [
    ("inplace", {"BLOCK_R": block_r, "BLOCK_N": block_n, "USE_SCRATCH": use_scratch}, num_warps)
    for _, block_r, block_n, num_warps, use_scratch in _TIERS["inplace"]
]

_TRITON_DTYPE = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


# The forward and in-place mixes are two products then a sum (no fma).
COMPILE_OPTIONS = NO_FP_FUSION


def aot_cases(kernel_name: str, constexprs: dict, dtype: torch.dtype) -> list[dict]:
    """What to compile ahead of time for one shipped config and dtype of ``x``.

    Each case is a dict with ``signature``, ``attrs``, ``constexprs``,
    ``num_stages`` (for ``_aot.compile_kernel``) and a ``label``: the
    specialisations the JIT makes of the integer arguments,

    * "aligned": row strides and N multiples of 16 (vector loads and stores);
    * "unaligned": only the pointers 16-byte aligned (as torch allocates);
    * "N=1": an integer equal to 1 becomes a constexpr, so contiguous x with
      N == 1 is a kernel of its own. forward and dots meet N == 1 only in
      their smallest tier; inplace, whose tiers go by B, in every tier.

    ``n_rows`` (and dots' ``chunks_per_split``) are never specialised
    (``do_not_specialize``), so B adds no cases.
    """
    t = _TRITON_DTYPE[dtype]
    if kernel_name == "forward":
        sig = {"x_ptr": f"*{t}", "x_row_stride": "i32", "src_ptr": "*i64",
               "w_self_ptr": "*fp32", "w_src_ptr": "*fp32", "out_ptr": f"*{t}",
               "n_rows": "i32", "n_cols": "i32", "BLOCK_R": "constexpr", "BLOCK_N": "constexpr"}
        size_args = ["x_row_stride", "n_cols"]
    elif kernel_name == "inplace":
        sig = {"x_ptr": f"*{t}", "x_row_stride": "i32", "src_ptr": "*i64",
               "w_self_ptr": "*fp32", "w_src_ptr": "*fp32", "scratch_ptr": f"*{t}",
               "n_rows": "i32", "n_cols": "i32", "BLOCK_R": "constexpr", "BLOCK_N": "constexpr",
               "USE_SCRATCH": "constexpr"}
        size_args = ["x_row_stride", "n_cols"]
    elif kernel_name == "dots":
        sig = {"grad_ptr": f"*{t}", "grad_row_stride": "i32", "x_ptr": f"*{t}",
               "x_row_stride": "i32", "src_ptr": "*i64", "partial_ptr": "*fp32",
               "n_rows": "i32", "n_cols": "i32", "chunks_per_split": "i32",
               "BLOCK_R": "constexpr", "BLOCK_N": "constexpr"}
        size_args = ["grad_row_stride", "x_row_stride", "n_cols"]
    else:
        raise ValueError(f"unknown kernel {kernel_name!r}; expected one of {sorted(KERNELS)}")
    with_unit_n = (kernel_name == "inplace"
                   or constexprs["BLOCK_N"] == _TIERS[kernel_name][0][2])
    cases = specialisations(sig, size_args, constexprs, with_unit_c=with_unit_n)
    for case in cases:
        case["label"] = case["label"].replace("C=1", "N=1")
        case["num_stages"] = _NUM_STAGES[kernel_name]
        if kernel_name in ("forward", "inplace"):
            case["options"] = dict(COMPILE_OPTIONS)
    return cases


def mix_rows_forward(x: torch.Tensor, src: torch.Tensor, w_self: torch.Tensor,
                     w_src: torch.Tensor) -> torch.Tensor:
    """``w_self[i] * x[i] + w_src[i] * x[src[i]]`` as a new contiguous (B, N) tensor.

    ``x`` (B, N) fp32/bf16/fp16 with unit column stride and any row stride;
    ``src`` int64 (B,) with values in [0, B) (checked by the caller);
    ``w_self``, ``w_src`` fp32 (B,). Arithmetic in fp32, result in x's dtype.
    """
    x = unit_column_stride(x)
    n_rows, n_cols = x.shape
    _check_row_length(n_cols)
    out = torch.empty((n_rows, n_cols), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    cfg = launch_config("forward", n_rows, n_cols, x.dtype)
    grid = (triton.cdiv(n_rows, cfg["BLOCK_R"]),
            min(triton.cdiv(n_cols, cfg["BLOCK_N"]), _MAX_GRID_Y))
    with device_guard(x):
        _mix_rows_forward_kernel[grid](
            x, x.stride(0), src.contiguous(), w_self.contiguous(), w_src.contiguous(), out,
            n_rows, n_cols, BLOCK_R=cfg["BLOCK_R"], BLOCK_N=cfg["BLOCK_N"],
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **COMPILE_OPTIONS,
        )
    return out


def mix_rows_inplace(x: torch.Tensor, src: torch.Tensor, w_self: torch.Tensor,
                     w_src: torch.Tensor) -> None:
    """Overwrite ``x`` with ``mix_rows_forward(x, src, w_self, w_src)``, for any permutation.

    Same arguments as :func:`mix_rows_forward`. Every read of a column
    strip precedes every write to it, so the result is the out-of-place one
    whatever cycles ``src`` has (any ``src`` in [0, B) would do). No host sync.

    Paths:

    * B fits one tile (B <= 256): one program per column strip (16 to 128
      columns), the strip held in registers;
    * otherwise, if there are at least as many strips as SMs: a grid of at
      most 4 persistent programs per SM, each with a (B, 32) scratch strip
      in global memory -- in all at most x's size rounded up to whole
      strips, and far less when N is large;
    * otherwise (tall, narrow x, whose few strips would leave most of the GPU
      idle): out of place into a temporary, then copied back.
    """
    n_rows, n_cols = x.shape
    _check_row_length(n_cols)
    if x.numel() == 0:
        return
    if n_cols > 1 and x.stride(1) != 1:
        # The kernels need unit column stride and x must keep its storage.
        x.copy_(mix_rows_forward(x, src, w_self, w_src))
        return
    cfg = launch_config("inplace", n_rows, n_cols, x.dtype)
    n_strips = triton.cdiv(n_cols, cfg["BLOCK_N"])
    sms = sm_count(x.device)
    if cfg["USE_SCRATCH"] and n_strips < sms:
        x.copy_(mix_rows_forward(x, src, w_self, w_src))
        return
    if cfg["USE_SCRATCH"]:
        programs = min(n_strips, 4 * sms)
        scratch = torch.empty((programs, n_rows, cfg["BLOCK_N"]), dtype=x.dtype,
                              device=x.device)
    else:
        programs = n_strips
        # Never touched; any tensor of x's dtype keeps the AOT-compiled signature.
        scratch = x
    with device_guard(x):
        _mix_rows_inplace_kernel[(programs,)](
            x, x.stride(0), src.contiguous(), w_self.contiguous(), w_src.contiguous(), scratch,
            n_rows, n_cols, BLOCK_R=cfg["BLOCK_R"], BLOCK_N=cfg["BLOCK_N"],
            USE_SCRATCH=cfg["USE_SCRATCH"], num_warps=cfg["num_warps"],
            num_stages=cfg["num_stages"], **COMPILE_OPTIONS,
        )


def _dots_chunks_per_split(n_row_blocks: int, n_chunks: int, sms: int) -> int:
    """How many chunks of N each dots program sums.

    One split (a program walks whole rows) when the row blocks alone give
    about 4 programs per SM; otherwise N is cut into equal runs of chunks so
    that row blocks x splits reaches that. The split depends only on the
    shape and the device, so a given device always sums in the same order.
    """
    target = 4 * sms
    if n_row_blocks >= target or n_chunks == 1:
        return n_chunks
    splits = min(triton.cdiv(target, n_row_blocks), n_chunks)
    return triton.cdiv(n_chunks, splits)


def mix_rows_dots(grad: torch.Tensor, x: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """``(B, 2)`` fp32: ``[i, 0] = <grad[i], x[i]>``, ``[i, 1] = <grad[i], x[src[i]]>``.

    ``grad`` and ``x`` (B, N) fp32/bf16/fp16 (grad in x's dtype), each with
    unit column stride and any row stride; ``src`` int64 (B,) with values in
    [0, B). fp32 products and accumulation; deterministic on a given device
    (fixed split of N, partial sums added in a fixed order, no atomics).
    """
    grad = unit_column_stride(grad)
    x = unit_column_stride(x)
    n_rows, n_cols = x.shape
    _check_row_length(n_cols)
    if n_rows == 0 or n_cols == 0:
        return torch.zeros((n_rows, 2), dtype=torch.float32, device=x.device)
    cfg = launch_config("dots", n_rows, n_cols, x.dtype)
    n_row_blocks = triton.cdiv(n_rows, cfg["BLOCK_R"])
    n_chunks = triton.cdiv(n_cols, cfg["BLOCK_N"])
    chunks_per_split = _dots_chunks_per_split(n_row_blocks, n_chunks, sm_count(x.device))
    n_splits = triton.cdiv(n_chunks, chunks_per_split)
    partial = torch.empty((n_rows, n_splits, 2), dtype=torch.float32, device=x.device)
    with device_guard(x):
        _mix_rows_dots_kernel[(n_row_blocks, n_splits)](
            grad, grad.stride(0), x, x.stride(0), src.contiguous(), partial,
            n_rows, n_cols, chunks_per_split, BLOCK_R=cfg["BLOCK_R"], BLOCK_N=cfg["BLOCK_N"],
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        )
    if n_splits == 1:
        return partial.view(n_rows, 2)
    # A reduction over a fixed dim of a fixed shape: the same order every call.
    return partial.sum(dim=1)
