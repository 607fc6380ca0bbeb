"""Triton kernels and launchers for mixing images through a low-resolution mask.

``mask_mix`` (schema and semantics in ``csrc/ops.cpp``) mixes each image with
its partner, every channel alike, with the weight ``m`` of each pixel taken
from the sample's ``(h, w)`` mask upsampled to the image's ``(H, W)`` as
``F.interpolate(mask, (H, W), mode="bilinear" or "nearest",
align_corners=False)`` computes it:

    out[i, :, p] = m[i, p] * x[i, :, p] + (1 - m[i, p]) * x[src[i], :, p]      (fp32)

Its gradients, with ``inv`` the inverse permutation of ``src`` and ``U`` the
upsampling:

    grad_x[i]    = m[i] * grad[i] + (1 - m[inv[i]]) * grad[inv[i]]
    grad_mask[i] = U^T d[i],   d[i, p] = sum_c grad[i, c, p] * (x[i, c, p] - x[src[i], c, p])

The upsampled mask is never stored: each pixel computes its taps (which mask
cells it reads, with which weights) and blends the cells, with the
arithmetic of ``csrc/include/mixkernels/mask_math.h`` that the CPU kernel
uses -- ATen's fp32 scale ``in_size / out_size`` (computed on the host in
fp32, since the GPU's default fp32 division is not correctly rounded), its
clamps, nearest's exact 1x and 2x shortcuts, bilinear along W first then
along H, nearest taking the cell's value as it is. Every mix is two fp32
products and a sum, never a fused multiply-add: the kernels are launched
(and must be compiled) with ``enable_fp_fusion=False``, so that they round
as the CPU kernel and eager PyTorch do.

Three kernels, reading any storage dtype of x and computing in fp32:

* forward: one program per (sample, block of pixels) computes the pixels'
  mask weights once and loops over the channels in (pixels, channels) tiles;
* backward: the same tiles. grad_x is a gather through ``inv`` (no
  atomics), with the weights of both samples' masks; the per-pixel fp32
  ``d`` (a (B, H, W) buffer, 1/C of x) is written when the mask's gradient is
  wanted. Only what the gradients asked for need is read and written;
* mask_grad: ``U^T d`` without atomics. One program per (sample, mask row r,
  block of mask columns); each mask cell gathers the image pixels that may
  read it, a window of image rows by a window of image columns, in
  (window rows, mask columns, window columns) tiles: weighted by their
  column taps and summed along the row, then weighted by the row's tap and
  summed over the rows, tile after tile in a fixed order: deterministic.
  The windows are integer bounds with a margin (``_window_start``); which
  pixels read a cell, and with what weight, is decided by the taps
  themselves, computed as the other kernels do.

Pixel and within-image offsets are int32 (one image holds fewer than 2^31
values, the launchers check); sample offsets are int64.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import triton
import triton.language as tl

from mixkernels.triton._aot import specialisations
from mixkernels.triton._launch import MAX_GRID_X, NO_FP_FUSION, device_guard

__all__ = [
    "mask_mix_forward",
    "mask_mix_backward",
    "launch_config",
    "SHIPPED_CONFIGS",
    "KERNELS",
    "aot_cases",
    "COMPILE_OPTIONS",
]

# Within-image offsets are int32 and a tile may run one block past the end.
_MAX_IMAGE_VALUES = 2**31 - 4096


@triton.jit
def _axis_tap(o, in_size, out_size, scale, BILINEAR: tl.constexpr):
    """The taps of output index ``o`` (int32, any shape) of an axis upsampled
    from ``in_size`` to ``out_size``: ``(first, second, w_first, w_second)``,
    as ``linear_axis_tap`` and ``nearest_axis_tap`` of mask_math.h compute
    them. ``scale`` is the fp32 ``in_size / out_size``."""
    if BILINEAR:
        src = scale * (o.to(tl.float32) + 0.5) - 0.5
        src = tl.maximum(src, 0.0)
        first = tl.minimum(tl.floor(src).to(tl.int32), in_size - 1)
        w_second = src - first.to(tl.float32)
        w_second = tl.minimum(tl.maximum(w_second, 0.0), 1.0)
        second = first + (first < in_size - 1).to(tl.int32)
        w_first = 1.0 - w_second
        # Equal sizes: ATen copies; weight 1 on the index itself, 0 on itself again.
        same = in_size == out_size
        first = tl.where(same, o, first)
        second = tl.where(same, o, second)
        w_first = tl.where(same, 1.0, w_first)
        w_second = tl.where(same, 0.0, w_second)
    else:
        first = tl.minimum(tl.floor(o.to(tl.float32) * scale).to(tl.int32), in_size - 1)
        first = tl.where(out_size == 2 * in_size, o >> 1, first)
        first = tl.where(out_size == in_size, o, first)
        second = first
        w_first = 1.0
        w_second = 0.0
    return first, second, w_first, w_second


@triton.jit
def _mask_value(mask_base, rf, rs, rwf, rws, cf, cs, cwf, cws, mask_w, valid,
                BILINEAR: tl.constexpr):
    """fp32 mask weight of pixels with row taps (rf, rs, rwf, rws) and
    column taps (cf, cs, cwf, cws) from one sample's mask at ``mask_base``:
    bilinear interpolates along W in both mask rows, then along H (two
    products and a sum each, every term kept, as the CPU kernel); nearest
    is the cell's value."""
    top = tl.load(mask_base + rf * mask_w + cf, mask=valid, other=0.0)
    if BILINEAR:
        top_right = tl.load(mask_base + rf * mask_w + cs, mask=valid, other=0.0)
        bottom_left = tl.load(mask_base + rs * mask_w + cf, mask=valid, other=0.0)
        bottom_right = tl.load(mask_base + rs * mask_w + cs, mask=valid, other=0.0)
        top = top * cwf + top_right * cws
        bottom = bottom_left * cwf + bottom_right * cws
        value = top * rwf + bottom * rws
    else:
        value = top
    return value


@triton.jit
def _pixel_block(pid, n_pixels, width, BLOCK_P: tl.constexpr):
    """(sample, pixel indices p = y*W + x, their rows y and columns x, valid) of program ``pid``."""
    n_blocks = tl.cdiv(n_pixels, BLOCK_P)
    sample = pid // n_blocks
    p = (pid - sample * n_blocks) * BLOCK_P + tl.arange(0, BLOCK_P)
    valid = p < n_pixels
    y = p // width
    x = p - y * width
    return sample, p, y, x, valid


@triton.jit
def _tile_offsets(p, c, stride, CHANNELS_LAST: tl.constexpr):
    """Within-image offsets of the (pixels p, channels c) tile: NHWC p*C + c
    (``stride`` = C), NCHW c*H*W + p (``stride`` = H*W)."""
    if CHANNELS_LAST:
        offsets = p[:, None] * stride + c[None, :]
    else:
        offsets = c[None, :] * stride + p[:, None]
    return offsets


@triton.jit
def _counts(stride, n_pixels, channels, CHANNELS_LAST: tl.constexpr):
    """(pixels, channels) of an image, the one along the contiguous axis
    taken from ``stride`` (H*W for NCHW, C for NHWC): its 16-divisibility,
    which the JIT specialises, then reaches the offsets and the bounds
    masks, and the accesses vectorise."""
    if CHANNELS_LAST:
        channels = stride
    else:
        n_pixels = stride
    return n_pixels, channels


# Only ``stride`` is specialised (16-divisible: vector accesses; 1: 1x1
# images): the other sizes bound masks or feed the taps, where a
# specialisation would compile variants that run no faster and that the
# AOT test would not cover.
_SIZE_ARGS = ["n_pixels", "channels", "height", "width", "mask_h", "mask_w"]


@triton.jit(do_not_specialize=_SIZE_ARGS)
def _mask_mix_forward_kernel(
    x_ptr,
    src_ptr,
    mask_ptr,
    out_ptr,
    stride,
    n_pixels,
    channels,
    height,
    width,
    mask_h,
    mask_w,
    row_scale,
    col_scale,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
    BILINEAR: tl.constexpr,
):
    n_pixels, channels = _counts(stride, n_pixels, channels, CHANNELS_LAST)
    # A 1-D grid: CUDA caps axes 1 and 2 at 65535 programs.
    sample, p, y, x, valid = _pixel_block(tl.program_id(0), n_pixels, width, BLOCK_P)
    rf, rs, rwf, rws = _axis_tap(y, mask_h, height, row_scale, BILINEAR)
    cf, cs, cwf, cws = _axis_tap(x, mask_w, width, col_scale, BILINEAR)
    mask_base = mask_ptr + sample.to(tl.int64) * mask_h * mask_w
    m = _mask_value(mask_base, rf, rs, rwf, rws, cf, cs, cwf, cws, mask_w, valid, BILINEAR)
    m = m[:, None]
    image_size = n_pixels.to(tl.int64) * channels
    own_base = sample.to(tl.int64) * image_size
    partner_base = tl.load(src_ptr + sample) * image_size
    for c0 in range(0, channels, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        offsets = _tile_offsets(p, c, stride, CHANNELS_LAST)
        tile_mask = valid[:, None] & (c < channels)[None, :]
        own = tl.load(x_ptr + own_base + offsets, mask=tile_mask, other=0.0)
        partner = tl.load(x_ptr + partner_base + offsets, mask=tile_mask, other=0.0)
        mixed = m * own.to(tl.float32) + (1.0 - m) * partner.to(tl.float32)
        tl.store(out_ptr + own_base + offsets, mixed.to(own.dtype), mask=tile_mask)


@triton.jit(do_not_specialize=_SIZE_ARGS)
def _mask_mix_backward_kernel(
    grad_ptr,
    x_ptr,
    src_ptr,
    inv_ptr,
    mask_ptr,
    grad_x_ptr,
    d_ptr,
    stride,
    n_pixels,
    channels,
    height,
    width,
    mask_h,
    mask_w,
    row_scale,
    col_scale,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
    BILINEAR: tl.constexpr,
    NEEDS_X_GRAD: tl.constexpr,
    NEEDS_MASK_GRAD: tl.constexpr,
):
    n_pixels, channels = _counts(stride, n_pixels, channels, CHANNELS_LAST)
    sample, p, y, x, valid = _pixel_block(tl.program_id(0), n_pixels, width, BLOCK_P)
    image_size = n_pixels.to(tl.int64) * channels
    own_base = sample.to(tl.int64) * image_size
    if NEEDS_X_GRAD:
        # grad_x[i] gathers from the sample k that took i as its partner.
        rf, rs, rwf, rws = _axis_tap(y, mask_h, height, row_scale, BILINEAR)
        cf, cs, cwf, cws = _axis_tap(x, mask_w, width, col_scale, BILINEAR)
        mask_size = mask_h.to(tl.int64) * mask_w
        taker = tl.load(inv_ptr + sample)
        m_own = _mask_value(mask_ptr + sample.to(tl.int64) * mask_size, rf, rs, rwf, rws, cf, cs,
                            cwf, cws, mask_w, valid, BILINEAR)[:, None]
        m_taker = _mask_value(mask_ptr + taker * mask_size, rf, rs, rwf, rws, cf, cs, cwf, cws,
                              mask_w, valid, BILINEAR)[:, None]
        taker_base = taker * image_size
    if NEEDS_MASK_GRAD:
        partner_base = tl.load(src_ptr + sample) * image_size
        d = tl.zeros([BLOCK_P], dtype=tl.float32)
    for c0 in range(0, channels, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        offsets = _tile_offsets(p, c, stride, CHANNELS_LAST)
        tile_mask = valid[:, None] & (c < channels)[None, :]
        grad = tl.load(grad_ptr + own_base + offsets, mask=tile_mask, other=0.0)
        if NEEDS_X_GRAD:
            taker_grad = tl.load(grad_ptr + taker_base + offsets, mask=tile_mask, other=0.0)
            grad_x = m_own * grad.to(tl.float32) + (1.0 - m_taker) * taker_grad.to(tl.float32)
            tl.store(grad_x_ptr + own_base + offsets, grad_x.to(grad.dtype), mask=tile_mask)
        if NEEDS_MASK_GRAD:
            own = tl.load(x_ptr + own_base + offsets, mask=tile_mask, other=0.0)
            partner = tl.load(x_ptr + partner_base + offsets, mask=tile_mask, other=0.0)
            # Masked lanes load 0 and add 0: channels are summed in order, a tile at a time.
            d += tl.sum(grad.to(tl.float32) * (own.to(tl.float32) - partner.to(tl.float32)),
                        axis=1)
    if NEEDS_MASK_GRAD:
        tl.store(d_ptr + sample.to(tl.int64) * n_pixels + p, d, mask=valid)


@triton.jit
def _window_start(r, in_size, out_size, BILINEAR: tl.constexpr):
    """The first output index of a window that holds every output index
    reading input index ``r`` (int32, any shape); ``_window_length`` (the
    host) gives the window's length. Integer bounds with a margin of one
    index each side, so that fp32 rounding of the taps cannot put a reader
    outside (see ``_window_bounds``). int32 throughout: the launchers
    check that ``(2 * in + 3) * out`` fits (``_check_sizes``), and an int64
    division would be a subroutine with a stack frame on sm_90."""
    if BILINEAR:
        # Readers have first tap r - 1 or r: src >= r - 1, i.e.
        # o >= ((2r - 1) * out - in) / (2 * in); src is clamped at 0, so
        # every o from 0 on may read r = 1 (and 0).
        numerator = tl.where(r <= 1, 0, (2 * r - 1) * out_size - in_size)
        denominator = 2 * in_size
    else:
        numerator = r * out_size
        denominator = in_size
    start = tl.maximum(numerator, 0) // denominator - 1
    return tl.maximum(start, 0)


@triton.jit
def _row_weighted(t, y, r, height, mask_h, row_scale, BILINEAR: tl.constexpr):
    """Image rows y's shares of mask row r of their column sums ``t`` (rows
    along axis 0): each of a row's taps that is r adds its weight times t
    (both when both are r, as the CPU kernel adds them); nothing from a row
    that does not read r or is past the image."""
    rf, rs, rwf, rws = _axis_tap(y, mask_h, height, row_scale, BILINEAR)
    inside = y < height
    share = tl.where((inside & (rf == r))[:, None], rwf[:, None] * t, 0.0)
    if BILINEAR:
        share += tl.where((inside & (rs == r))[:, None], rws[:, None] * t, 0.0)
    return share


@triton.jit(do_not_specialize=["height", "width", "mask_h", "mask_w", "row_window",
                               "col_window"])
def _mask_mix_mask_grad_kernel(
    d_ptr,
    grad_mask_ptr,
    height,
    width,
    mask_h,
    mask_w,
    row_scale,
    col_scale,
    row_window,
    col_window,
    BLOCK_K: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BILINEAR: tl.constexpr,
):
    pid = tl.program_id(0)
    n_col_blocks = tl.cdiv(mask_w, BLOCK_S)
    sample_row = pid // n_col_blocks
    s = (pid - sample_row * n_col_blocks) * BLOCK_S + tl.arange(0, BLOCK_S)
    sample = sample_row // mask_h
    r = sample_row - sample * mask_h
    s_valid = s < mask_w
    x_start = _window_start(s, mask_w, width, BILINEAR)
    y_start = _window_start(r, mask_h, height, BILINEAR)
    d_base = d_ptr + sample.to(tl.int64) * height * width
    acc = tl.zeros([BLOCK_S], dtype=tl.float32)
    # (window rows, mask columns, window columns) tiles: for each block of
    # the cells' window columns, each block of r's window rows, in order;
    # the same order for every launch.
    for j0 in range(0, col_window, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        x = x_start[:, None] + j[None, :]
        x_valid = s_valid[:, None] & (j < col_window)[None, :] & (x < width)
        cf, cs, cwf, cws = _axis_tap(x, mask_w, width, col_scale, BILINEAR)
        reads_first = x_valid & (cf == s[:, None])
        if BILINEAR:
            reads_second = x_valid & (cs == s[:, None])
            reads = reads_first | reads_second
        else:
            reads = reads_first
        for k0 in range(0, row_window, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            y = y_start + k
            y_valid = (k < row_window) & (y < height)
            v = tl.load(d_base + (y.to(tl.int64) * width)[:, None, None] + x[None, :, :],
                        mask=y_valid[:, None, None] & reads[None, :, :], other=0.0)
            if BILINEAR:
                terms = (tl.where(reads_first[None, :, :], cwf[None, :, :] * v, 0.0)
                         + tl.where(reads_second[None, :, :], cws[None, :, :] * v, 0.0))
            else:
                terms = tl.where(reads_first[None, :, :], v, 0.0)
            t = tl.sum(terms, axis=2)
            acc += tl.sum(_row_weighted(t, y, r, height, mask_h, row_scale, BILINEAR), axis=0)
    tl.store(grad_mask_ptr + sample_row.to(tl.int64) * mask_w + s, acc, mask=s_valid)


KERNELS = {
    "forward": _mask_mix_forward_kernel,
    "backward": _mask_mix_backward_kernel,
    "mask_grad": _mask_mix_mask_grad_kernel,
}

# Pixel tiles of the forward and backward (bound on C, BLOCK_P, BLOCK_C,
# num_warps), first match wins, 512 values a tile:
#   NCHW, any C  : 512 pixels x 1 channel, 4 warps; each channel plane is
#                  contiguous, so a thread holds 4 consecutive pixels (one
#                  16-byte access in fp32). 8 pixels a thread took up to 130
#                  registers in the bilinear backward (two masks a pixel),
#                  a quarter of an SM's warps for a bandwidth-bound kernel.
#   NHWC, C <= 4 : 128 pixels x 4 channels, 4 warps (RGB: a thread holds a
#                  pixel)
#   NHWC, C > 4  : 16 pixels x 32 channels, 4 warps, looping over blocks of
#                  32 channels (feature maps)
# The pixels' mask weights are computed once a program and serve all its
# channels.
_PIXEL_TIERS = {
    False: ((None, 512, 1, 4),),
    True: ((4, 128, 4, 4), (None, 16, 32, 4)),
}

# mask_grad: (8 window rows, 8 mask columns, 32 window columns) tiles, 4
# warps. A cell's window spans about 2W/w (bilinear) or W/w (nearest) image
# columns plus a margin, 35 or 19 at the usual 14 -> 224 (16x): 3 x 5 or
# 2 x 3 tiles a program.
_MASK_GRAD_TILE = (8, 8, 32, 4)

# The loops carry nothing that pipelining would hide.
_NUM_STAGES = {"forward": 1, "backward": 1, "mask_grad": 1}

# Options every launch (and every AOT compile) uses: no contraction of the
# products and sums into fused multiply-adds.
COMPILE_OPTIONS = NO_FP_FUSION

# The (NEEDS_X_GRAD, NEEDS_MASK_GRAD) combinations the backward is launched with.
_GRADIENT_CHOICES = ((True, True), (True, False), (False, True))


def launch_config(kernel_name: str, channels: int, channels_last: bool, bilinear: bool,
                  needs_x_grad: bool = True, needs_mask_grad: bool = True) -> dict:
    """Constexprs, ``num_warps`` and ``num_stages`` for ``kernel_name``.

    ``kernel_name`` is "forward", "backward" or "mask_grad". The pixel tiles
    of the first two go by the layout and, channels-last, by C; the backward
    carries which gradients it computes. The same configs serve every dtype.
    """
    if kernel_name not in KERNELS:
        raise ValueError(f"unknown kernel {kernel_name!r}; expected one of {sorted(KERNELS)}")
    if kernel_name == "mask_grad":
        block_k, block_s, block_j, num_warps = _MASK_GRAD_TILE
        return {"BLOCK_K": block_k, "BLOCK_S": block_s, "BLOCK_J": block_j,
                "BILINEAR": bool(bilinear),
                "num_warps": num_warps, "num_stages": _NUM_STAGES[kernel_name]}
    for bound, block_p, block_c, num_warps in _PIXEL_TIERS[bool(channels_last)]:
        if bound is None or channels <= bound:
            cfg = {"BLOCK_P": block_p, "BLOCK_C": block_c, "CHANNELS_LAST": bool(channels_last),
                   "BILINEAR": bool(bilinear)}
            if kernel_name == "backward":
                if not (needs_x_grad or needs_mask_grad):
                    raise ValueError("the backward kernel needs a gradient to compute")
                cfg["NEEDS_X_GRAD"] = bool(needs_x_grad)
                cfg["NEEDS_MASK_GRAD"] = bool(needs_mask_grad)
            cfg.update(num_warps=num_warps, num_stages=_NUM_STAGES[kernel_name])
            return cfg
    raise AssertionError("unreachable")


def _pixel_configs(kernel_name, gradients):
    return [
        (kernel_name, {"BLOCK_P": block_p, "BLOCK_C": block_c, "CHANNELS_LAST": channels_last,
                       "BILINEAR": bilinear, **gradient_flags}, num_warps)
        for channels_last, tiers in _PIXEL_TIERS.items()
        for _, block_p, block_c, num_warps in tiers
        for bilinear in (False, True)
        for gradient_flags in gradients
    ]


# Every (kernel, constexprs, num_warps) the launchers can use; the AOT test
# compiles each for fp32/bf16/fp16 and sm_80/sm_90 and checks its resources.
SHIPPED_CONFIGS = (
    _pixel_configs("forward", [{}])
    + _pixel_configs("backward", [{"NEEDS_X_GRAD": x, "NEEDS_MASK_GRAD": m}
                                  for x, m in _GRADIENT_CHOICES])
    + [("mask_grad", {"BLOCK_K": _MASK_GRAD_TILE[0], "BLOCK_S": _MASK_GRAD_TILE[1],
                      "BLOCK_J": _MASK_GRAD_TILE[2], "BILINEAR": bilinear}, _MASK_GRAD_TILE[3])
       for bilinear in (False, True)]
)

_TRITON_DTYPE = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}

_SCALAR_SIGNATURE = {**{name: "i32" for name in ["stride"] + _SIZE_ARGS},
                     "row_scale": "fp32", "col_scale": "fp32"}


def aot_cases(kernel_name: str, constexprs: dict, dtype: torch.dtype) -> list[dict]:
    """What to compile ahead of time for one shipped config and dtype of ``x``.

    Each case is a dict with ``signature``, ``attrs``, ``constexprs``,
    ``num_stages``, ``options`` (``COMPILE_OPTIONS``) and a ``label``: the
    specialisations the JIT makes of the one integer it specialises,
    ``stride``:

    * NCHW (stride = H*W): "aligned" (16-divisible), "unaligned" and
      "stride=1" (1x1 images);
    * NHWC (stride = C, never 1: a channels-last batch with C == 1 is
      contiguous and runs as NCHW): "aligned" where the tier admits C
      16-divisible, and "unaligned";
    * mask_grad reads the fp32 buffer the backward writes whatever x's
      dtype, and specialises no integer: one case, "aligned pointers".

    Pointers are 16-byte aligned, as torch allocates.
    """
    t = _TRITON_DTYPE[dtype]
    if kernel_name == "mask_grad":
        sig = {"d_ptr": "*fp32", "grad_mask_ptr": "*fp32", "height": "i32", "width": "i32",
               "mask_h": "i32", "mask_w": "i32", "row_scale": "fp32", "col_scale": "fp32",
               "row_window": "i32", "col_window": "i32"}
        sig.update({name: "constexpr" for name in constexprs})
        cases = [case for case in specialisations(sig, [], constexprs, with_unit_c=False)
                 if case["label"] == "aligned"]
        cases[0]["label"] = "aligned pointers"
    else:
        if kernel_name == "forward":
            sig = {"x_ptr": f"*{t}", "src_ptr": "*i64", "mask_ptr": "*fp32", "out_ptr": f"*{t}"}
        elif kernel_name == "backward":
            sig = {"grad_ptr": f"*{t}", "x_ptr": f"*{t}", "src_ptr": "*i64", "inv_ptr": "*i64",
                   "mask_ptr": "*fp32", "grad_x_ptr": f"*{t}", "d_ptr": "*fp32"}
        else:
            raise ValueError(f"unknown kernel {kernel_name!r}; expected one of {sorted(KERNELS)}")
        sig.update(_SCALAR_SIGNATURE)
        sig.update({name: "constexpr" for name in constexprs})
        channels_last = constexprs["CHANNELS_LAST"]
        cases = specialisations(sig, ["stride"], constexprs, with_unit_c=not channels_last)
        if channels_last:
            small_c_only = _PIXEL_TIERS[True][0][2] == constexprs["BLOCK_C"]
            if small_c_only:  # C <= 4 is never 16-divisible
                cases = [case for case in cases if case["label"] != "aligned"]
        for case in cases:
            case["label"] = case["label"].replace("C=1", "stride=1")
    for case in cases:
        case["num_stages"] = _NUM_STAGES[kernel_name]
        case["options"] = dict(COMPILE_OPTIONS)
    return cases


def _layout(x: torch.Tensor) -> bool:
    """Whether ``x`` (4-D) is channels-last; raises unless it is contiguous or channels-last.

    A tensor that is both (C == 1, or H == W == 1) has one memory order,
    read as NCHW.
    """
    if x.dim() != 4:
        raise ValueError(f"x must be a (B, C, H, W) batch of images, got {x.dim()}-D")
    if x.is_contiguous():
        return False
    if x.is_contiguous(memory_format=torch.channels_last):
        return True
    raise ValueError("x must be contiguous or channels-last")


def upsample_scale(in_size: int, out_size: int) -> float:
    """ATen's fp32 ``in_size / out_size`` (correctly rounded, as on the CPU)."""
    return float(np.float32(in_size) / np.float32(out_size))


def _window_bounds(r: int, in_size: int, out_size: int, bilinear: bool) -> tuple[int, int]:
    """[start, end) of the output indices that may read input index r: the
    kernels' ``_window_start`` and an end with the same one-index margin.

    Bilinear readers have first tap r - 1 or r: ``r - 1 <= src < r + 1``
    with ``src = (o + 0.5) * in / out - 0.5`` clamped at 0 (so the window
    of r = 1 starts at 0); nearest readers have
    ``r <= o * in / out < r + 1``. Widened by one output index each side,
    these exact bounds leave a margin of at least ``in / out`` in src
    units, far above fp32's rounding of the taps for any image size the
    kernels take; the clamps at the last input index only add readers of
    that index, whose window ends at ``out`` anyway.
    """
    if bilinear:
        numerator = 0 if r <= 1 else (2 * r - 1) * out_size - in_size
        start = max(numerator, 0) // (2 * in_size) - 1
        end = ((2 * r + 3) * out_size - in_size) // (2 * in_size) + 2
    else:
        start = (r * out_size) // in_size - 1
        end = ((r + 1) * out_size) // in_size + 2
    return max(start, 0), min(end, out_size)


@functools.lru_cache(maxsize=256)
def _window_length(in_size: int, out_size: int, bilinear: bool) -> int:
    """The longest window of ``_window_bounds`` over the input indices."""
    return max(end - start for start, end in
               (_window_bounds(r, in_size, out_size, bilinear) for r in range(in_size)))


def _check_sizes(x: torch.Tensor, mask: torch.Tensor) -> None:
    batch, channels, height, width = x.shape
    if mask.dim() != 4 or mask.shape[0] != batch or mask.shape[1] != 1:
        raise ValueError(f"mask must have shape ({batch}, 1, h, w), got {tuple(mask.shape)}")
    if mask.device != x.device:
        raise ValueError(f"mask is on {mask.device} but x is on {x.device}")
    if not mask.is_floating_point():
        raise TypeError(f"mask must be floating point, got {mask.dtype}")
    if x.dtype not in _TRITON_DTYPE:
        raise TypeError(f"x must be float32, bfloat16 or float16, got {x.dtype}")
    if channels * height * width > _MAX_IMAGE_VALUES or mask[0].numel() > _MAX_IMAGE_VALUES:
        raise ValueError(f"images of {channels * height * width} values (masks of "
                         f"{mask[0].numel()}): the Triton mask_mix kernels take at most "
                         f"{_MAX_IMAGE_VALUES} an image")
    axes = ((mask.shape[2], height, "height"), (mask.shape[3], width, "width"))
    for mask_size, image_size, axis in axes:
        # The mask gradient's window bounds are computed in int32.
        if (2 * mask_size + 3) * image_size >= 2**31:
            raise ValueError(f"a mask {axis} of {mask_size} upsampled to {image_size}: the Triton "
                             f"mask_mix kernels take (2 * mask {axis} + 3) * image {axis} < 2^31")


def _image_arguments(x: torch.Tensor, mask: torch.Tensor, channels_last: bool) -> tuple:
    """The kernels' integer and scale arguments after the pointers."""
    _, channels, height, width = x.shape
    mask_h, mask_w = mask.shape[-2:]
    n_pixels = height * width
    stride = channels if channels_last else n_pixels
    return (stride, n_pixels, channels, height, width, mask_h, mask_w,
            upsample_scale(mask_h, height), upsample_scale(mask_w, width))


def _pixel_grid(batch: int, n_pixels: int, cfg: dict) -> tuple[int]:
    programs = batch * triton.cdiv(n_pixels, cfg["BLOCK_P"])
    if programs > MAX_GRID_X:
        raise ValueError(f"a batch of {batch} images of {n_pixels} pixels is too large for one "
                         "launch")
    return (programs,)


def _launch_options(cfg: dict) -> tuple[dict, dict]:
    cfg = dict(cfg)
    options = {"num_warps": cfg.pop("num_warps"), "num_stages": cfg.pop("num_stages"),
               **COMPILE_OPTIONS}
    return cfg, options


def mask_mix_forward(x: torch.Tensor, src: torch.Tensor, mask: torch.Tensor,
                     bilinear: bool) -> torch.Tensor:
    """``m * x + (1 - m) * x[src]``, m the mask upsampled to x's (H, W), as a new tensor.

    ``x`` (B, C, H, W) fp32/bf16/fp16, contiguous or channels-last; the
    result is ``empty_like(x)``, in the same memory format. ``src`` int64
    (B,), a permutation (checked by the caller); ``mask`` (B, 1, h, w), any
    float dtype and strides (read as fp32). No host sync.
    """
    channels_last = _layout(x)
    _check_sizes(x, mask)
    out = torch.empty_like(x)
    if out.numel() == 0 or mask.numel() == 0:
        return out
    mask32 = mask.to(torch.float32).contiguous()
    args = _image_arguments(x, mask, channels_last)
    cfg, options = _launch_options(launch_config("forward", x.shape[1], channels_last, bilinear))
    with device_guard(x):
        _mask_mix_forward_kernel[_pixel_grid(x.shape[0], args[1], cfg)](
            x, src.contiguous(), mask32, out, *args, **cfg, **options)
    return out


def mask_mix_backward(grad: torch.Tensor, x: torch.Tensor, src: torch.Tensor, mask: torch.Tensor,
                      bilinear: bool, needs_x_grad: bool,
                      needs_mask_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grad_x, grad_mask)`` of :func:`mask_mix_forward` for the incoming ``grad``.

    ``grad`` has x's shape, dtype and memory format. grad_x (x's dtype and
    format) and grad_mask (mask's dtype, contiguous (B, 1, h, w)) are
    computed only when asked for; a gradient not asked for is returned
    empty, shape (0,). Deterministic (no atomics), no host sync.
    """
    channels_last = _layout(x)
    _check_sizes(x, mask)
    if grad.shape != x.shape or grad.dtype != x.dtype:
        raise ValueError(f"grad must have x's shape {tuple(x.shape)} and dtype {x.dtype}, got "
                         f"{tuple(grad.shape)} and {grad.dtype}")
    if _layout(grad) != channels_last:
        raise ValueError("grad must have x's memory format (both contiguous or both channels-last)")
    grad_x = torch.empty_like(x) if needs_x_grad else x.new_empty((0,))
    # Every cell is written by the mask_grad kernel.
    grad_mask32 = (torch.empty(mask.shape, dtype=torch.float32, device=mask.device)
                   if needs_mask_grad else mask.new_empty((0,)))
    if not (needs_x_grad or needs_mask_grad) or x.numel() == 0 or mask.numel() == 0:
        # Images without values read no cell: a zero gradient.
        return grad_x, (grad_mask32.zero_().to(mask.dtype) if needs_mask_grad else grad_mask32)
    batch, channels, height, width = x.shape
    mask_h, mask_w = mask.shape[-2:]
    mask32 = mask.to(torch.float32).contiguous()
    src = src.contiguous()
    # The sample that took i as its partner; a permutation's inverse, no atomics.
    inv = torch.argsort(src) if needs_x_grad else src
    d = (torch.empty((batch, height, width), dtype=torch.float32, device=x.device)
         if needs_mask_grad else mask32)
    args = _image_arguments(x, mask, channels_last)
    cfg, options = _launch_options(launch_config("backward", channels, channels_last, bilinear,
                                                 needs_x_grad, needs_mask_grad))
    # Outputs not computed are never touched; tensors of the right dtype keep
    # the AOT-compiled signature.
    with device_guard(x):
        _mask_mix_backward_kernel[_pixel_grid(batch, args[1], cfg)](
            grad, x, src, inv, mask32, grad_x if needs_x_grad else x, d, *args, **cfg, **options)
        if needs_mask_grad:
            cfg, options = _launch_options(launch_config("mask_grad", channels, channels_last,
                                                         bilinear))
            programs = batch * mask_h * triton.cdiv(mask_w, cfg["BLOCK_S"])
            if programs > MAX_GRID_X:
                raise ValueError(f"a mask of {mask.numel()} cells is too large for one launch")
            _mask_mix_mask_grad_kernel[(programs,)](
                d, grad_mask32, height, width, mask_h, mask_w, args[-2], args[-1],
                _window_length(mask_h, height, bilinear), _window_length(mask_w, width, bilinear),
                **cfg, **options)
    return grad_x, (grad_mask32.to(mask.dtype) if needs_mask_grad else grad_mask32)
