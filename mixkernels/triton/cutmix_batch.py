"""Triton kernels and launchers for image mixing with boxes, the primitive of CutMix.

``mix_images`` (``csrc/ops.cpp``) mixes each image with its partner, all
channels alike, with two boxes ``(y0, y1, x0, x1)`` (half-open pixel ranges)
that override the weights:

    out[i, :, p] = w_own * x[i, :, p] + w_partner * x[src[i], :, p]      (fp32)
    w_own     = 0 if p in box_self[i] else w_self[i]
    w_partner = 1 if p in box_src[i]  else w_src[i]

CutMix is ``w_self = 1, w_src = 0, box_self = box_src = box``; Mixup rows are
the same call with empty boxes, so one launch serves a batch that has both.

A term whose weight is exactly 0 is not read at all, and a term with weight 1
alone is copied bit for bit (selected, never multiplied): a pasted box is an
exact copy of the partner's pixels even when the image under it holds inf or
NaN, as the CPU kernel (``mix_span_skipping_zero``) does. Otherwise two fp32
products and a sum, never a fused multiply-add: the kernels are launched
(and must be compiled) with ``enable_fp_fusion=False``.

Each sample is a row of ``N = C*H*W`` values in memory order; x is dense
(contiguous or channels-last), so sample i starts at ``i * N`` and the output,
``empty_like(x)``, has the same memory order. For the value at offset k of a
row, the pixel is

    NCHW: h = (k // W) % H,   w = k % W
    NHWC: h = k // (W*C),     w = (k // C) % W

with the layout a constexpr. Both kernels tile (rows, columns) so that a
column's pixel is computed once for all the rows of a tile, and divide by a
multiply-high with magic numbers computed on the host (``_divmod``): an
integer division by a runtime value is some 20 instructions on the GPU, more
than the rest of a value's work.

Two kernels, reading any storage dtype and computing in fp32:

* forward: elementwise over (row block, column block) tiles into a new tensor;
* in place: a program owns a strip of columns of *all* rows, as in
  ``mix_batch.py``'s in-place kernel (so any permutation works without grid
  synchronisation), in registers when the batch fits one tile, else through
  a per-program scratch strip. Values that keep their own value (``w_own ==
  1`` and ``w_partner == 0``: all of a CutMix image outside its box) are
  neither read nor written, so in-place CutMix moves only the boxes.

The per-value masks depend on the boxes, so the loads (and the in-place
stores) are per-value predicated, never vectorised: still coalesced, and the
bytes of skipped terms are not fetched. The forward's stores are masked by
the bounds alone and vectorise when N is a multiple of 16.

Row offsets are int64 (B*N may pass 2^31); column indices are int32, so one
image holds fewer than 2^31 - 4096 values (the launchers check).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mixkernels.triton._aot import specialisations
from mixkernels.triton._launch import MAX_GRID_X, NO_FP_FUSION, device_guard, sm_count

__all__ = [
    "mix_images_forward",
    "mix_images_inplace",
    "launch_config",
    "SHIPPED_CONFIGS",
    "KERNELS",
    "aot_cases",
    "COMPILE_OPTIONS",
]

# Column indices are int32 and may run one tile past N.
_MAX_ROW_LENGTH = 2**31 - 4096
# Box corners are clamped into [0, _MAX_COORD] and compared as int32: every
# pixel coordinate lies in [0, 2^31 - 1), so clamping changes no comparison.
_MAX_COORD = tl.constexpr(2**31 - 1)


@triton.jit
def _divmod(n, divisor, magic, shift):
    """``(n // divisor, n % divisor)`` for int32 ``n`` in [0, 2^31), by a
    multiply-high instead of a division (about 20 instructions on the GPU).

    ``magic = ceil(2^(31+shift) / divisor)`` with ``shift = ceil(log2(divisor))``
    (``_magic_divisor``), passed as int32 bits: then ``n * magic / 2^(31+shift)``
    exceeds ``n / divisor`` by less than ``1/divisor``, so its floor is the
    quotient. ``umulhi(2n, magic) = floor(n * magic / 2^31)``: doubling n keeps
    magic below 2^32 for every divisor, 1 included.
    """
    q = tl.umulhi(n.to(tl.uint32) << 1, magic.to(tl.uint32, bitcast=True)) >> shift
    q = q.to(tl.int32)
    return q, n - q * divisor


@triton.jit
def _pixel_of(cols, inner_size, inner_magic, inner_shift, outer_size, outer_magic, outer_shift,
              CHANNELS_LAST: tl.constexpr):
    """(h, w) of the values at offsets ``cols`` of a sample row.

    NCHW (inner W, outer H): k = (c*H + h)*W + w. NHWC (inner C, outer W):
    k = (h*W + w)*C + c.
    """
    inner_q, inner_r = _divmod(cols, inner_size, inner_magic, inner_shift)
    outer_q, outer_r = _divmod(inner_q, outer_size, outer_magic, outer_shift)
    if CHANNELS_LAST:
        h = outer_q
        w = outer_r
    else:
        h = outer_r
        w = inner_r
    return h, w


@triton.jit
def _box_of(box_ptr, rows, row_mask):
    """The boxes (y0, y1, x0, x1) of ``rows`` as int32; masked rows get an empty box."""
    corners = box_ptr + rows * 4
    y0 = tl.load(corners, mask=row_mask, other=0)
    y1 = tl.load(corners + 1, mask=row_mask, other=0)
    x0 = tl.load(corners + 2, mask=row_mask, other=0)
    x1 = tl.load(corners + 3, mask=row_mask, other=0)
    # int32 comparisons are half the instructions of int64 ones.
    y0 = tl.minimum(tl.maximum(y0, 0), _MAX_COORD).to(tl.int32)
    y1 = tl.minimum(tl.maximum(y1, 0), _MAX_COORD).to(tl.int32)
    x0 = tl.minimum(tl.maximum(x0, 0), _MAX_COORD).to(tl.int32)
    x1 = tl.minimum(tl.maximum(x1, 0), _MAX_COORD).to(tl.int32)
    return y0, y1, x0, x1


@triton.jit
def _inside(box_ptr, rows, row_mask, h, w):
    """(rows, columns) bool: the column's pixel lies in the row's box."""
    y0, y1, x0, x1 = _box_of(box_ptr, rows, row_mask)
    in_rows = (h[None, :] >= y0[:, None]) & (h[None, :] < y1[:, None])
    in_cols = (w[None, :] >= x0[:, None]) & (w[None, :] < x1[:, None])
    return in_rows & in_cols


@triton.jit
def _row_terms(w_self_ptr, w_src_ptr, box_self_ptr, box_src_ptr, rows, row_mask, h, w):
    """What the (rows, columns) tile's values are made of: the rows' weights
    (1-D) and whether each value's pixel lies in the row's own and partner box.
    Masked rows get weights 0 and empty boxes: no term at all."""
    w_self = tl.load(w_self_ptr + rows, mask=row_mask, other=0.0)
    w_src = tl.load(w_src_ptr + rows, mask=row_mask, other=0.0)
    in_self = _inside(box_self_ptr, rows, row_mask, h, w)
    in_src = _inside(box_src_ptr, rows, row_mask, h, w)
    return w_self, w_src, in_self, in_src


@triton.jit
def _keeps_own(w_self, w_src, in_self, in_src):
    """(rows, columns) bool: the value is its own term alone with weight 1,
    i.e. stays what it is (all of a CutMix image outside its box)."""
    return ~(in_self | in_src) & ((w_self == 1.0) & (w_src == 0.0))[:, None]


@triton.jit
def _mixed_values(own_ptrs, partner_ptrs, mask, w_self, w_src, in_self, in_src):
    """The mixed values where ``mask``, in the dtype of the pointers.

    Per value the weights are ``w_own = 0 if in_self else w_self`` and
    ``w_partner = 1 if in_src else w_src``. A term of weight 0 is not loaded;
    a lone term of weight 1 is its loaded value, bit for bit; otherwise two
    fp32 products and their sum. The per-row weight tests are made once a
    row and broadcast: per value only the box tests remain.
    """
    use_own = ~in_self & (w_self != 0.0)[:, None]
    use_partner = in_src | (w_src != 0.0)[:, None]
    own = tl.load(own_ptrs, mask=mask & use_own, other=0.0)
    partner = tl.load(partner_ptrs, mask=mask & use_partner, other=0.0)
    own_term = w_self[:, None] * own.to(tl.float32)
    # Weight 1 in the box: 1 * partner is partner exactly. A value not loaded
    # is 0 and its weight finite, so no inf * 0 arises even in discarded lanes.
    partner_term = tl.where(in_src, 1.0, w_src[:, None]) * partner.to(tl.float32)
    # A term of weight 0 is left out, not added as 0: adding would turn -0.0
    # into +0.0 (and inf*0 into NaN, were it loaded). Neither term: +0.0.
    mixed = tl.where(use_partner, partner_term, 0.0)
    mixed = tl.where(use_own, tl.where(use_partner, own_term + partner_term, own_term), mixed)
    value = mixed.to(own.dtype)
    value = tl.where(use_own & ~use_partner & (w_self == 1.0)[:, None], own, value)
    value = tl.where(~use_own & (in_src | (w_src == 1.0)[:, None]), partner, value)
    return value


# n_rows only bounds the row mask and the divisors only feed _divmod:
# specialising them (16-divisible, == 1) would compile variants that run no
# faster and that the AOT test would not cover.
_DIVISOR_ARGS = ["inner_size", "inner_magic", "inner_shift", "outer_size", "outer_magic",
                 "outer_shift"]


@triton.jit(do_not_specialize=["n_rows"] + _DIVISOR_ARGS)
def _mix_images_forward_kernel(
    x_ptr,
    src_ptr,
    w_self_ptr,
    w_src_ptr,
    box_self_ptr,
    box_src_ptr,
    out_ptr,
    n_rows,
    n_cols,
    inner_size,
    inner_magic,
    inner_shift,
    outer_size,
    outer_magic,
    outer_shift,
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
):
    # One program per (row block, column block), column blocks fastest; a
    # 1-D grid because CUDA caps axes 1 and 2 at 65535 programs, and no loop
    # over blocks: ptxas spilled the loop-invariant row pointers of one.
    n_col_blocks = tl.cdiv(n_cols, BLOCK_N)
    pid = tl.program_id(0)
    row_block = pid // n_col_blocks
    col_block = pid - row_block * n_col_blocks
    rows = row_block.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < n_rows
    cols = col_block * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = row_mask[:, None] & (cols < n_cols)[None, :]
    partner = tl.load(src_ptr + rows, mask=row_mask, other=0)
    h, w = _pixel_of(cols, inner_size, inner_magic, inner_shift, outer_size, outer_magic,
                     outer_shift, CHANNELS_LAST)
    w_self, w_src, in_self, in_src = _row_terms(w_self_ptr, w_src_ptr, box_self_ptr,
                                                box_src_ptr, rows, row_mask, h, w)
    # x and out are dense with the same memory order: sample i is the
    # n_cols values from i * n_cols on.
    own_offsets = (rows * n_cols)[:, None] + cols[None, :]
    value = _mixed_values(x_ptr + own_offsets, x_ptr + (partner * n_cols)[:, None] + cols[None, :],
                          mask, w_self, w_src, in_self, in_src)
    tl.store(out_ptr + own_offsets, value, mask=mask)


# n_cols is not specialised either: every access of this kernel is predicated
# value by value, so its alignment buys nothing.
@triton.jit(do_not_specialize=["n_rows", "n_cols"] + _DIVISOR_ARGS)
def _mix_images_inplace_kernel(
    x_ptr,
    src_ptr,
    w_self_ptr,
    w_src_ptr,
    box_self_ptr,
    box_src_ptr,
    scratch_ptr,
    n_rows,
    n_cols,
    inner_size,
    inner_magic,
    inner_shift,
    outer_size,
    outer_magic,
    outer_shift,
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
    USE_SCRATCH: tl.constexpr,
):
    pid = tl.program_id(0)
    strip_cols = tl.arange(0, BLOCK_N)
    tile_rows = tl.arange(0, BLOCK_R).to(tl.int64)
    if USE_SCRATCH:
        # This program's (n_rows, BLOCK_N) scratch strip, reused for each of its strips.
        scratch = (scratch_ptr + pid.to(tl.int64) * n_rows * BLOCK_N
                   + (tile_rows * BLOCK_N)[:, None] + strip_cols[None, :])
        # Persistent: the grid is capped so that scratch stays small.
        for strip in range(pid, tl.cdiv(n_cols, BLOCK_N), tl.num_programs(0)):
            cols = strip * BLOCK_N + strip_cols
            col_mask = cols < n_cols
            h, w = _pixel_of(cols, inner_size, inner_magic, inner_shift, outer_size,
                             outer_magic, outer_shift, CHANNELS_LAST)
            # Phase 1: mix every changing value of the strip into scratch; x is only read.
            for row_start in range(0, n_rows, BLOCK_R):
                rows = row_start + tile_rows
                row_mask = rows < n_rows
                partner = tl.load(src_ptr + rows, mask=row_mask, other=0)
                w_self, w_src, in_self, in_src = _row_terms(w_self_ptr, w_src_ptr, box_self_ptr,
                                                            box_src_ptr, rows, row_mask, h, w)
                changed = (row_mask[:, None] & col_mask[None, :]
                           & ~_keeps_own(w_self, w_src, in_self, in_src))
                value = _mixed_values(x_ptr + (rows * n_cols)[:, None] + cols[None, :],
                                      x_ptr + (partner * n_cols)[:, None] + cols[None, :],
                                      changed, w_self, w_src, in_self, in_src)
                tl.store(scratch + row_start * BLOCK_N, value, mask=changed)
            # Every thread's reads of x (any row may be some row's partner)
            # and writes of scratch are done before any thread writes x.
            tl.debug_barrier()
            # Phase 2: copy them back over x. Which values change is
            # recomputed (a few cached loads a row) rather than stored.
            for row_start in range(0, n_rows, BLOCK_R):
                rows = row_start + tile_rows
                row_mask = rows < n_rows
                w_self, w_src, in_self, in_src = _row_terms(w_self_ptr, w_src_ptr, box_self_ptr,
                                                            box_src_ptr, rows, row_mask, h, w)
                changed = (row_mask[:, None] & col_mask[None, :]
                           & ~_keeps_own(w_self, w_src, in_self, in_src))
                value = tl.load(scratch + row_start * BLOCK_N, mask=changed)
                tl.store(x_ptr + (rows * n_cols)[:, None] + cols[None, :], value, mask=changed)
            # The next strip overwrites scratch: this one's copy-back must be done.
            tl.debug_barrier()
    else:
        # One program per strip, the whole batch one tile: the mixed strip
        # stays in registers.
        cols = pid * BLOCK_N + strip_cols
        row_mask = tile_rows < n_rows
        h, w = _pixel_of(cols, inner_size, inner_magic, inner_shift, outer_size, outer_magic,
                         outer_shift, CHANNELS_LAST)
        partner = tl.load(src_ptr + tile_rows, mask=row_mask, other=0)
        w_self, w_src, in_self, in_src = _row_terms(w_self_ptr, w_src_ptr, box_self_ptr,
                                                    box_src_ptr, tile_rows, row_mask, h, w)
        changed = (row_mask[:, None] & (cols < n_cols)[None, :]
                   & ~_keeps_own(w_self, w_src, in_self, in_src))
        value = _mixed_values(x_ptr + (tile_rows * n_cols)[:, None] + cols[None, :],
                              x_ptr + (partner * n_cols)[:, None] + cols[None, :],
                              changed, w_self, w_src, in_self, in_src)
        # Threads hold different rows; a row one thread is about to
        # overwrite may be the partner another thread has yet to read.
        tl.debug_barrier()
        tl.store(x_ptr + (tile_rows * n_cols)[:, None] + cols[None, :], value, mask=changed)


KERNELS = {
    "forward": _mix_images_forward_kernel,
    "inplace": _mix_images_inplace_kernel,
}

# Launch configurations: (bound, BLOCK_R, BLOCK_N, num_warps), first match
# wins. The forward goes by the image size N = C*H*W, packing small images
# several to a program; every tile gives a thread 8 or 16 values:
#   N <=   64 : 16 rows x   64 columns, 4 warps   (8x8 digits)
#   N <=  256 :  8 rows x  256 columns, 4 warps
#   N >   256 :  2 rows x 1024 columns, 8 warps   (CIFAR 3x32x32, ImageNet
#                3x224x224: N/1024 column blocks a pair of rows; the two rows
#                share each column's pixel)
# Each thread holds the weights and int32 boxes of its rows, so few rows a
# thread keep registers low: 60 to 104 in every dtype, alignment and arch.
# 32 x 64 on 8 warps used 64 registers and still spilled 8 bytes of the
# unaligned fp32 kernel for sm_80.
_FORWARD_TIERS = ((64, 16, 64, 4), (256, 8, 256, 4), (None, 2, 1024, 8))

# inplace goes by the batch B, since a program holds all B rows of its column
# strip: (bound, BLOCK_R, BLOCK_N, num_warps, USE_SCRATCH), as mix_batch.py
# but with 8 values a thread (threads hold one column of 8 rows: per-row
# weights and boxes dominate the registers; at 16 a thread ptxas used all 255
# and spilled):
#   B <=  16 :  16 x 128, 8 warps
#   B <=  32 :  32 x  64, 8 warps
#   B <=  64 :  64 x  32, 8 warps
#   B <= 128 : 128 x  16, 8 warps
#   B <= 256 : 256 x   8, 8 warps
#   B >  256 :  64 x  32, 8 warps, through scratch
_INPLACE_TIERS = ((16, 16, 128, 8, False), (32, 32, 64, 8, False), (64, 64, 32, 8, False),
                  (128, 128, 16, 8, False), (256, 256, 8, 8, False), (None, 64, 32, 8, True))

_TIERS = {"forward": _FORWARD_TIERS, "inplace": _INPLACE_TIERS}
# Few tiers on purpose: tests/test_triton_aot.py compiles each for both
# layouts, every dtype, alignment case and arch.

# Software pipelining moves a loop's loads ahead of the previous iteration's
# stores, which the in-place kernel must never see reordered.
_NUM_STAGES = {"forward": 1, "inplace": 1}

# Options every launch (and every AOT compile) uses: no contraction of the
# two products and the sum into a fused multiply-add.
COMPILE_OPTIONS = NO_FP_FUSION


def launch_config(kernel_name: str, n_rows: int, n_cols: int, dtype: torch.dtype,
                  channels_last: bool) -> dict:
    """Constexprs, ``num_warps`` and ``num_stages`` for ``kernel_name`` on B images of N values.

    ``kernel_name`` is "forward" or "inplace". The forward picks its tile by
    N; inplace by B, with ``USE_SCRATCH`` when B does not fit one tile.
    ``CHANNELS_LAST`` is the layout. The same tiers serve every dtype.
    """
    if kernel_name not in KERNELS:
        raise ValueError(f"unknown kernel {kernel_name!r}; expected one of {sorted(KERNELS)}")
    del dtype  # the tiers are the same for every dtype (checked by the AOT test)
    size = n_rows if kernel_name == "inplace" else n_cols
    for bound, block_r, block_n, num_warps, *scratch in _TIERS[kernel_name]:
        if bound is None or size <= bound:
            cfg = {"BLOCK_R": block_r, "BLOCK_N": block_n, "CHANNELS_LAST": bool(channels_last),
                   "num_warps": num_warps, "num_stages": _NUM_STAGES[kernel_name]}
            if kernel_name == "inplace":
                cfg["USE_SCRATCH"] = scratch[0]
            return cfg
    raise AssertionError("unreachable")


# Every (kernel, constexprs, num_warps) the launchers can use; the AOT test
# compiles each for fp32/bf16/fp16 and sm_80/sm_90 and checks its resources.
SHIPPED_CONFIGS = [
    ("forward", {"BLOCK_R": block_r, "BLOCK_N": block_n, "CHANNELS_LAST": channels_last},
     num_warps)
    for _, block_r, block_n, num_warps in _TIERS["forward"]
    for channels_last in (False, True)
] + [
    ("inplace", {"BLOCK_R": block_r, "BLOCK_N": block_n, "CHANNELS_LAST": channels_last,
                 "USE_SCRATCH": use_scratch}, num_warps)
    for _, block_r, block_n, num_warps, use_scratch in _TIERS["inplace"]
    for channels_last in (False, True)
]

_TRITON_DTYPE = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def aot_cases(kernel_name: str, constexprs: dict, dtype: torch.dtype) -> list[dict]:
    """What to compile ahead of time for one shipped config and dtype of ``x``.

    Each case is a dict with ``signature``, ``attrs``, ``constexprs``,
    ``num_stages``, ``options`` (compile options the launchers pass:
    ``COMPILE_OPTIONS``) and a ``label``: the specialisations the JIT makes,

    * forward: "aligned" (N a multiple of 16: vector stores), "unaligned"
      (only the pointers 16-byte aligned, as torch allocates), and, in the
      smallest tier only, "N=1" (an integer equal to 1 becomes a constexpr:
      1x1x1 images);
    * inplace: "aligned pointers" only, since none of its integers is
      specialised.

    n_rows and the divisors are never specialised (``do_not_specialize``), so
    B, C, H, W add no cases beyond N's.
    """
    t = _TRITON_DTYPE[dtype]
    sig = {"x_ptr": f"*{t}", "src_ptr": "*i64", "w_self_ptr": "*fp32", "w_src_ptr": "*fp32",
           "box_self_ptr": "*i64", "box_src_ptr": "*i64"}
    if kernel_name == "forward":
        sig["out_ptr"] = f"*{t}"
    elif kernel_name == "inplace":
        sig["scratch_ptr"] = f"*{t}"
    else:
        raise ValueError(f"unknown kernel {kernel_name!r}; expected one of {sorted(KERNELS)}")
    sig.update({"n_rows": "i32", "n_cols": "i32"})
    sig.update({name: "i32" for name in _DIVISOR_ARGS})
    sig.update({name: "constexpr" for name in constexprs})
    if kernel_name == "forward":
        with_unit_n = constexprs["BLOCK_N"] == _TIERS["forward"][0][2]
        cases = specialisations(sig, ["n_cols"], constexprs, with_unit_c=with_unit_n)
        for case in cases:
            case["label"] = case["label"].replace("C=1", "N=1")
    else:
        # With no specialised integers, "aligned" and "unaligned" are one case.
        cases = [case for case in specialisations(sig, [], constexprs, with_unit_c=False)
                 if case["label"] == "aligned"]
        cases[0]["label"] = "aligned pointers"
    for case in cases:
        case["num_stages"] = _NUM_STAGES[kernel_name]
        case["options"] = dict(COMPILE_OPTIONS)
    return cases


def _layout(x: torch.Tensor) -> bool:
    """Whether ``x`` (4-D) is channels-last; raises unless it is contiguous or channels-last.

    A tensor that is both (C == 1, or H == W == 1) has one memory order that
    both formulas for (h, w) read alike; it is taken as contiguous.
    """
    if x.dim() != 4:
        raise ValueError(f"x must be a (B, C, H, W) batch of images, got {x.dim()}-D")
    if x.is_contiguous():
        return False
    if x.is_contiguous(memory_format=torch.channels_last):
        return True
    raise ValueError("x must be contiguous or channels-last")


def _check_row_length(n_cols: int) -> None:
    if n_cols > _MAX_ROW_LENGTH:
        raise ValueError(f"images of {n_cols} values: the Triton image-mixing kernels take at "
                         f"most {_MAX_ROW_LENGTH} an image")


def _magic_divisor(divisor: int) -> tuple[int, int, int]:
    """``(divisor, magic, shift)`` for the kernels' ``_divmod``, magic as int32 bits."""
    shift = (divisor - 1).bit_length()  # ceil(log2(divisor)); 0 for 1
    magic = -(-(1 << (31 + shift)) // divisor)
    assert 2**31 <= magic < 2**32, divisor
    return divisor, magic - 2**32, shift


def _row_arguments(x, src, w_self, w_src, box_self, box_src, channels_last):
    """The kernels' per-row tensors (contiguous) and integer arguments after them."""
    n_rows, channels, height, width = x.shape
    n_cols = channels * height * width
    _check_row_length(n_cols)
    tensors = (src.contiguous(), w_self.contiguous(), w_src.contiguous(),
               box_self.contiguous(), box_src.contiguous())
    inner, outer = (channels, width) if channels_last else (width, height)
    return tensors, (n_rows, n_cols, *_magic_divisor(inner), *_magic_divisor(outer))


def mix_images_forward(x: torch.Tensor, src: torch.Tensor, w_self: torch.Tensor,
                       w_src: torch.Tensor, box_self: torch.Tensor,
                       box_src: torch.Tensor) -> torch.Tensor:
    """``x`` mixed with ``x[src]`` under the box weights (module docstring), as a new tensor.

    ``x`` (B, C, H, W) fp32/bf16/fp16, contiguous or channels-last; the
    result is ``empty_like(x)``, in the same memory format. ``src`` int64
    (B,) with values in [0, B) and ``w_self``, ``w_src`` fp32 (B,), checked
    by the caller; ``box_self``, ``box_src`` int64 (B, 4) ``(y0, y1, x0,
    x1)``, half-open (any values: a box is the pixels it covers).
    """
    channels_last = _layout(x)
    out = torch.empty_like(x)
    if out.numel() == 0:
        return out
    tensors, sizes = _row_arguments(x, src, w_self, w_src, box_self, box_src,
                                    channels_last)
    n_rows, n_cols = sizes[:2]
    cfg = launch_config("forward", n_rows, n_cols, x.dtype, channels_last)
    programs = triton.cdiv(n_rows, cfg["BLOCK_R"]) * triton.cdiv(n_cols, cfg["BLOCK_N"])
    if programs > MAX_GRID_X:
        raise ValueError(f"x of {x.numel()} values is too large for one launch")
    grid = (programs,)
    with device_guard(x):
        _mix_images_forward_kernel[grid](
            x, *tensors, out, *sizes, BLOCK_R=cfg["BLOCK_R"], BLOCK_N=cfg["BLOCK_N"],
            CHANNELS_LAST=channels_last, num_warps=cfg["num_warps"],
            num_stages=cfg["num_stages"], **COMPILE_OPTIONS,
        )
    return out


def mix_images_inplace(x: torch.Tensor, src: torch.Tensor, w_self: torch.Tensor,
                       w_src: torch.Tensor, box_self: torch.Tensor,
                       box_src: torch.Tensor) -> None:
    """Overwrite ``x`` with ``mix_images_forward(x, ...)``, for any permutation.

    Same arguments as :func:`mix_images_forward`. Every read of a column
    strip precedes every write to it, so the result is the out-of-place one
    whatever cycles ``src`` has. No host sync. Values whose weights keep them
    (``w_own == 1``, ``w_partner == 0``) are not touched.

    Paths, as ``mix_batch.mix_rows_inplace``:

    * B fits one tile (B <= 256): one program per column strip (8 to 128
      columns), the strip held in registers;
    * otherwise, if there are at least as many strips as SMs: at most 4
      persistent programs per SM, each with a (B, 32) scratch strip;
    * otherwise (many small images): out of place into a temporary, then
      copied back.
    """
    channels_last = _layout(x)
    if x.numel() == 0:
        return
    tensors, sizes = _row_arguments(x, src, w_self, w_src, box_self, box_src,
                                    channels_last)
    n_rows, n_cols = sizes[:2]
    cfg = launch_config("inplace", n_rows, n_cols, x.dtype, channels_last)
    n_strips = triton.cdiv(n_cols, cfg["BLOCK_N"])
    sms = sm_count(x.device)
    if cfg["USE_SCRATCH"] and n_strips < sms:
        x.copy_(mix_images_forward(x, src, w_self, w_src, box_self, box_src))
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
        _mix_images_inplace_kernel[(programs,)](
            x, *tensors, scratch, *sizes, BLOCK_R=cfg["BLOCK_R"], BLOCK_N=cfg["BLOCK_N"],
            CHANNELS_LAST=channels_last, USE_SCRATCH=cfg["USE_SCRATCH"],
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **COMPILE_OPTIONS,
        )
