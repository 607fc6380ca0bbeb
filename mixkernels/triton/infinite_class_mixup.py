"""Triton kernels and launchers for Infinite Class Mixup.

The maths is ``shared/notes/icm.md`` section 5 and ``csrc/include/mixkernels/icm_math.h``
(which the CPU and CUDA kernels share): pair k's mixed classifier
``W~_k = lerp(W[y_b_k], W[y_a_k], lam_k)``, scores ``S = H W~^T + b~`` (B x B),
per sample b the row term ``lse_k S[b, :] - S[b, b]`` and the column term
``lse_i S[:, b] - S[b, b]``, and with g the incoming per-sample gradient
``dL/dS[b, k] = g_b (P[b, k] - [b == k]) + g_k (Q[b, k] - [b == k])``.

Two exact ways to S (``path``, chosen in mixkernels/ops/infinite_class_mixup.py):

* ``"factorised"``: W~ by a gather-lerp (fp32, stored in hidden's dtype as a
  GEMM operand), S tile by tile with ``tl.dot``, never stored. The forward
  is one pass over the tiles: each program owns a block of rows, walks all
  column tiles keeping the rows' running (max, sum-exp), and writes its
  block's column (max, sum-exp) per column (a (B / 64, B) fp32 buffer, 1/64 of
  S); a second kernel merges those in row-block order into the column
  log-sum-exps and the loss. Up to 64 samples, one kernel does it all, the
  lerp fused into the operand load: one launch for the whole forward.
  Backward recomputes S a block of rows at a time, writes that block of
  ``G = dL/dS`` (hidden's dtype), and runs two GEMMs on it:
  ``dH = G W~`` and ``dW~ += G^T H`` (fp32 accumulator). ``dW`` and ``db``
  come from a deterministic class-ordered scatter of ``dW~`` and the row
  term's column sums ``db~``; ``d lam_k = dW~_k . (W[y_a_k] - W[y_b_k]) +
  db~_k (b[y_a_k] - b[y_b_k])``.
* ``"logits"``: ``Z = H W^T + b`` (B x C, fp32) by a GEMM, then S entries as
  ``lerp(Z[b, y_b_k], Z[b, y_a_k], lam_k)`` gathers in the same tile kernels.
  Backward: ``dZ`` a block of rows at a time by the transposed gather (class
  by class through the same sorted entries, no atomics), then
  ``dH = dZ W`` and ``dW += dZ^T H``; ``d lam_k = sum_b G[b, k] (Z[b, y_a_k] -
  Z[b, y_b_k])``. Z is kept from forward to backward when gradients are
  wanted (``keep_cache``), else recomputed.

Precision: every accumulation is fp32. Half inputs run the GEMMs on their
own dtype (tensor cores, fp32 accumulators); fp32 inputs use
``input_precision="tf32x3"`` (three TF32 products per multiply-add: the
tensor cores with about fp32's accuracy, where plain TF32 would lose 13 bits).

Determinism: no atomics anywhere. Sums across programs go through fp32
partial buffers reduced in a fixed order (``_icm_sum_rows_kernel``); the class
scatters walk each class's entries in pair order (a stable sort on the device,
no host synchronisation).

Row offsets are int64 (``rows.to(tl.int64) * stride``): B x B and B x C
matrices pass 2^31 entries at the sizes this loss is used for.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mixkernels.triton._aot import specialisations
from mixkernels.triton._launch import MAX_GRID_X, device_guard

__all__ = [
    "icm_forward",
    "icm_backward",
    "SHIPPED_CONFIGS",
    "KERNELS",
    "GEMM_KERNELS",
    "aot_cases",
    "COMPILE_OPTIONS",
    "SMALL_BATCH",
]

# How S is read in the tile kernels (constexpr MODE). The @triton.jit code sees
# no plain module globals, so it compares MODE with these values as literals
# (_score_tile) and the one-tile forward passes 1 (_FUSED_LERP).
_FACTORISED, _FUSED_LERP, _LOGITS = 0, 1, 2


# ------------------------------------------------------------------- helpers

@triton.jit
def _dot(a, b, acc, INTERPRETED: tl.constexpr):
    # fp32 operands: three TF32 products (hi*hi + hi*lo + lo*hi) on the tensor
    # cores, about fp32's accuracy; half operands: their own MMA. Under the
    # Triton interpreter (INTERPRETED), whose bf16 dot returns garbage, the
    # product is taken in fp32.
    if INTERPRETED:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
    elif a.dtype == tl.float32:
        acc = tl.dot(a, b, acc, input_precision="tf32x3")
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def _rounded(x, dtype: tl.constexpr, INTERPRETED: tl.constexpr):
    # fp32 x in dtype, rounded to nearest even. The interpreter truncates
    # fp32 -> bf16 conversions, so there the rounding is done on the bits.
    if INTERPRETED and dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(dtype)


@triton.jit
def _lerp(start, end, weight):
    # icm_lerp of icm_math.h: from the nearer end, exact at weight 0 and 1 and
    # for start == end.
    small = tl.abs(weight) < 0.5
    return tl.fma(tl.where(small, weight, weight - 1.0), end - start, tl.where(small, start, end))


@triton.jit
def _lse_shift(m):
    # icm_lse_shift: an infinite maximum shifts by 0, as torch.logsumexp does.
    return tl.where(tl.abs(m) == float("inf"), 0.0, m)


@triton.jit
def _rescale(s, delta):
    # icm_rescale: an empty sum stays exactly 0 (never 0 * inf).
    return tl.where(s == 0.0, 0.0, s * tl.exp(delta))


@triton.jit
def _lse_merge(m, s, block_m, block_s):
    # icm_lse_merge: running (max, sum-exp) with a block's, NaN winning.
    merged = tl.where(m != m, m, tl.where(block_m != block_m, block_m, tl.maximum(m, block_m)))
    shift = _lse_shift(merged)
    s = _rescale(s, _lse_shift(m) - shift) + _rescale(block_s, _lse_shift(block_m) - shift)
    return merged, s


@triton.jit
def _score_tile(h_ptr, ld_h, rhs_ptr, ld_rhs, bias_ptr, y_a_ptr, y_b_ptr, lam_ptr, rows, cols, row_mask,
                col_mask, features, HAS_BIAS: tl.constexpr, MODE: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, INTERPRETED: tl.constexpr):
    """The fp32 (BLOCK_M, BLOCK_N) tile of S at ``rows`` x ``cols`` (entries
    outside the masks are garbage-free but meaningless).

    MODE _FACTORISED: rhs is W~ (B, D) in hidden's dtype, bias b~ (B,) fp32.
    MODE _FUSED_LERP: rhs is W (C, D), bias (C,) in hidden's dtype; W~ rows are
    lerped in fp32 and rounded to hidden's dtype while loading, as the
    materialised W~ is. MODE _LOGITS: rhs is Z (B, C) fp32 (bias included).
    """
    if MODE == 2:
        y_a = tl.load(y_a_ptr + cols, mask=col_mask, other=0)
        y_b = tl.load(y_b_ptr + cols, mask=col_mask, other=0)
        lam = tl.load(lam_ptr + cols, mask=col_mask, other=0.0)
        base = rhs_ptr + rows.to(tl.int64)[:, None] * ld_rhs
        valid = row_mask[:, None] & col_mask[None, :]
        z_a = tl.load(base + y_a[None, :], mask=valid, other=0.0)
        z_b = tl.load(base + y_b[None, :], mask=valid, other=0.0)
        s = _lerp(z_b, z_a, lam[None, :])
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        ks = tl.arange(0, BLOCK_K)
        h_rows = h_ptr + rows.to(tl.int64)[:, None] * ld_h
        if MODE == 1:
            y_a = tl.load(y_a_ptr + cols, mask=col_mask, other=0)
            y_b = tl.load(y_b_ptr + cols, mask=col_mask, other=0)
            lam = tl.load(lam_ptr + cols, mask=col_mask, other=0.0)
            w_a = rhs_ptr + y_a.to(tl.int64)[None, :] * ld_rhs
            w_b = rhs_ptr + y_b.to(tl.int64)[None, :] * ld_rhs
        else:
            w_a = rhs_ptr + cols.to(tl.int64)[None, :] * ld_rhs
            w_b = w_a
        for k0 in range(0, features, BLOCK_K):
            k = k0 + ks
            k_mask = k < features
            a = tl.load(h_rows + k[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
            b_mask = k_mask[:, None] & col_mask[None, :]
            if MODE == 1:
                wa = tl.load(w_a + k[:, None], mask=b_mask, other=0.0).to(tl.float32)
                wb = tl.load(w_b + k[:, None], mask=b_mask, other=0.0).to(tl.float32)
                b = _rounded(_lerp(wb, wa, lam[None, :]), a.dtype, INTERPRETED)
            else:
                b = tl.load(w_a + k[:, None], mask=b_mask, other=0.0)
            acc = _dot(a, b, acc, INTERPRETED)
        s = acc
        if HAS_BIAS:
            if MODE == 1:
                b_a = tl.load(bias_ptr + y_a, mask=col_mask, other=0.0).to(tl.float32)
                b_b = tl.load(bias_ptr + y_b, mask=col_mask, other=0.0).to(tl.float32)
                b_mixed = _lerp(b_b, b_a, lam)
            else:
                b_mixed = tl.load(bias_ptr + cols, mask=col_mask, other=0.0)
            s = s + b_mixed[None, :]
    return s


@triton.jit
def _sample_loss(row_lse, col_lse, diag, row, col):
    # The CPU op's sum, (row - diag) + (col - diag), a missing term an exact 0.
    return tl.where(row != 0, row_lse - diag, 0.0) + tl.where(col != 0, col_lse - diag, 0.0)


# ------------------------------------------------------------------- forward

@triton.jit(do_not_specialize=["batch", "features", "row", "col"])
def _icm_small_batch_kernel(h_ptr, w_ptr, bias_ptr, y_a_ptr, y_b_ptr, lam_ptr, loss_ptr, row_lse_ptr, col_lse_ptr,
                            batch, features, ld_h, ld_w, row, col,
                            HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr, BLOCK_K: tl.constexpr,
                            INTERPRETED: tl.constexpr):
    """The whole forward for B <= BLOCK in one program: S in one tile, the lerp
    fused into the operand load, both log-sum-exps and the loss."""
    idx = tl.arange(0, BLOCK)
    mask = idx < batch
    s = _score_tile(h_ptr, ld_h, w_ptr, ld_w, bias_ptr, y_a_ptr, y_b_ptr, lam_ptr, idx, idx, mask, mask, features,
                    HAS_BIAS, 1, BLOCK, BLOCK, BLOCK_K, INTERPRETED)
    valid = mask[:, None] & mask[None, :]
    masked = tl.where(valid, s, float("-inf"))
    diag = tl.sum(tl.where(valid & (idx[:, None] == idx[None, :]), s, 0.0), axis=1)
    row_lse = diag
    col_lse = diag
    if row != 0:
        m = tl.max(masked, axis=1)
        row_lse = _lse_shift(m) + tl.log(tl.sum(tl.exp(masked - _lse_shift(m)[:, None]), axis=1))
        tl.store(row_lse_ptr + idx, row_lse, mask=mask)
    if col != 0:
        m = tl.max(masked, axis=0)
        col_lse = _lse_shift(m) + tl.log(tl.sum(tl.exp(masked - _lse_shift(m)[None, :]), axis=0))
        tl.store(col_lse_ptr + idx, col_lse, mask=mask)
    tl.store(loss_ptr + idx, _sample_loss(row_lse, col_lse, diag, row, col), mask=mask)


@triton.jit(do_not_specialize=["batch", "features", "row", "col"])
def _icm_score_stats_kernel(h_ptr, rhs_ptr, bias_ptr, y_a_ptr, y_b_ptr, lam_ptr, row_lse_ptr, diag_ptr,
                            col_max_ptr, col_sum_ptr, batch, features, ld_h, ld_rhs, row,
                            col, HAS_BIAS: tl.constexpr, MODE: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                            INTERPRETED: tl.constexpr):
    """One block of rows against every column tile: the rows' log-sum-exps and
    diagonal entries, and the block's (max, sum-exp) of every column in row
    ``program_id`` of the (n_row_tiles, B) partial buffers."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < batch
    run_max = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    run_sum = tl.zeros((BLOCK_M,), tl.float32)
    diag = tl.zeros((BLOCK_M,), tl.float32)
    part = pid.to(tl.int64) * batch
    for n0 in range(0, batch, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_mask = cols < batch
        s = _score_tile(h_ptr, ld_h, rhs_ptr, ld_rhs, bias_ptr, y_a_ptr, y_b_ptr, lam_ptr, rows, cols, row_mask,
                        col_mask, features, HAS_BIAS, MODE, BLOCK_M, BLOCK_N, BLOCK_K, INTERPRETED)
        valid = row_mask[:, None] & col_mask[None, :]
        masked = tl.where(valid, s, float("-inf"))
        diag += tl.sum(tl.where(valid & (rows[:, None] == cols[None, :]), s, 0.0), axis=1)
        if row != 0:
            block_max = tl.max(masked, axis=1)
            block_sum = tl.sum(tl.exp(masked - _lse_shift(block_max)[:, None]), axis=1)
            run_max, run_sum = _lse_merge(run_max, run_sum, block_max, block_sum)
        if col != 0:
            col_max = tl.max(masked, axis=0)
            col_sum = tl.sum(tl.exp(masked - _lse_shift(col_max)[None, :]), axis=0)
            tl.store(col_max_ptr + part + cols, col_max, mask=col_mask)
            tl.store(col_sum_ptr + part + cols, col_sum, mask=col_mask)
    tl.store(diag_ptr + rows, diag, mask=row_mask)
    if row != 0:
        tl.store(row_lse_ptr + rows, _lse_shift(run_max) + tl.log(run_sum), mask=row_mask)


@triton.jit(do_not_specialize=["batch", "n_row_tiles", "row", "col"])
def _icm_loss_kernel(row_lse_ptr, diag_ptr, col_max_ptr, col_sum_ptr, loss_ptr, col_lse_ptr, batch, n_row_tiles,
                     row, col, BLOCK: tl.constexpr):
    """Each sample's loss; the column log-sum-exps merged from the row blocks'
    partials in row-block order (deterministic)."""
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < batch
    diag = tl.load(diag_ptr + idx, mask=mask, other=0.0)
    row_lse = diag
    col_lse = diag
    if row != 0:
        row_lse = tl.load(row_lse_ptr + idx, mask=mask, other=0.0)
    if col != 0:
        run_max = tl.full((BLOCK,), float("-inf"), tl.float32)
        run_sum = tl.zeros((BLOCK,), tl.float32)
        max_ptrs = col_max_ptr + idx
        sum_ptrs = col_sum_ptr + idx
        for _ in range(0, n_row_tiles):  # pointer steps: 64-bit offsets past 2^31
            block_max = tl.load(max_ptrs, mask=mask, other=float("-inf"))
            block_sum = tl.load(sum_ptrs, mask=mask, other=0.0)
            run_max, run_sum = _lse_merge(run_max, run_sum, block_max, block_sum)
            max_ptrs += batch
            sum_ptrs += batch
        col_lse = _lse_shift(run_max) + tl.log(run_sum)
        tl.store(col_lse_ptr + idx, col_lse, mask=mask)
    tl.store(loss_ptr + idx, _sample_loss(row_lse, col_lse, diag, row, col), mask=mask)


# ------------------------------------------------------------------ backward

@triton.jit(do_not_specialize=["batch", "features", "row_begin", "rows_in_block", "tile_begin", "n_col_tiles",
                               "row", "col", "write_g", "want_db", "want_lam"])
def _icm_grad_scores_kernel(h_ptr, rhs_ptr, bias_ptr, y_a_ptr, y_b_ptr, lam_ptr, grad_loss_ptr, row_lse_ptr,
                            col_lse_ptr, g_ptr, db_part_ptr, lam_part_ptr, batch, features, ld_h, ld_rhs, row_begin,
                            rows_in_block, tile_begin, n_col_tiles, row, col, write_g, want_db, want_lam,
                            HAS_BIAS: tl.constexpr, MODE: tl.constexpr, BLOCK_M: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, INTERPRETED: tl.constexpr):
    """A tile of G = dL/dS in the block of rows [row_begin, row_begin + rows_in_block),
    S recomputed: G written at (row - row_begin, col) of the block buffer; the
    row term's column sums (db~) and, through the logits, sum_b G (Z_a - Z_b)
    (d lam) in row ``tile_begin + tile`` of the (n_row_tiles, B) partials."""
    pid = tl.program_id(0)
    pid_m = pid // n_col_tiles
    pid_n = pid % n_col_tiles
    local = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = row_begin + local
    row_mask = local < rows_in_block
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < batch
    s = _score_tile(h_ptr, ld_h, rhs_ptr, ld_rhs, bias_ptr, y_a_ptr, y_b_ptr, lam_ptr, rows, cols, row_mask,
                    col_mask, features, HAS_BIAS, MODE, BLOCK_M, BLOCK_N, BLOCK_K, INTERPRETED)
    valid = row_mask[:, None] & col_mask[None, :]
    eye = tl.where(rows[:, None] == cols[None, :], 1.0, 0.0)
    g = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    part = (tile_begin + pid_m).to(tl.int64) * batch
    if row != 0:
        g_row = tl.load(grad_loss_ptr + rows, mask=row_mask, other=0.0)
        lse_row = tl.load(row_lse_ptr + rows, mask=row_mask, other=0.0)
        term = tl.where(valid, g_row[:, None] * (tl.exp(s - lse_row[:, None]) - eye), 0.0)
        g += term
        if want_db != 0:  # the column term does not depend on b~
            tl.store(db_part_ptr + part + cols, tl.sum(term, axis=0), mask=col_mask)
    if col != 0:
        g_col = tl.load(grad_loss_ptr + cols, mask=col_mask, other=0.0)
        lse_col = tl.load(col_lse_ptr + cols, mask=col_mask, other=0.0)
        g += tl.where(valid, g_col[None, :] * (tl.exp(s - lse_col[None, :]) - eye), 0.0)
    if write_g != 0:
        offs = local.to(tl.int64)[:, None] * batch + cols[None, :]
        tl.store(g_ptr + offs, _rounded(g, g_ptr.dtype.element_ty, INTERPRETED), mask=valid)
    if want_lam != 0:  # through the logits: dS/dlam_k = Z[b, y_a_k] - Z[b, y_b_k]
        y_a = tl.load(y_a_ptr + cols, mask=col_mask, other=0)
        y_b = tl.load(y_b_ptr + cols, mask=col_mask, other=0)
        base = rhs_ptr + rows.to(tl.int64)[:, None] * ld_rhs
        z_a = tl.load(base + y_a[None, :], mask=valid, other=0.0)
        z_b = tl.load(base + y_b[None, :], mask=valid, other=0.0)
        tl.store(lam_part_ptr + part + cols, tl.sum(g * (z_a - z_b), axis=0), mask=col_mask)


@triton.jit(do_not_specialize=["M", "N", "K", "has_bias", "accumulate"])
def _icm_matmul_kernel(a_ptr, b_ptr, out_ptr, bias_ptr, M, N, K, lda, ldb, ldo, has_bias, accumulate,
                       A_TRANS: tl.constexpr, B_TRANS: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       GROUP_M: tl.constexpr, INTERPRETED: tl.constexpr):
    """out (M, N) (+)= A (M, K) @ B (K, N) (+ bias over N), fp32 accumulation.

    A is row-major with leading dimension lda, or (A_TRANS) its transpose is;
    B likewise. ``accumulate`` adds to out (fp32) instead of overwriting it.
    Programs go down GROUP_M row tiles before moving along N, so that
    consecutive programs share B tiles in L2.
    """
    pid = tl.program_id(0)
    n_m = tl.cdiv(M, BLOCK_M)
    n_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * n_n
    group = pid // per_group
    first_m = group * GROUP_M
    group_rows = tl.minimum(n_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_mask = rm < M
    n_mask = rn < N
    rm64 = rm.to(tl.int64)
    rn64 = rn.to(tl.int64)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + rk
        k64 = k.to(tl.int64)
        k_mask = k < K
        if A_TRANS:
            a = tl.load(a_ptr + rm64[:, None] + k64[None, :] * lda, mask=m_mask[:, None] & k_mask[None, :],
                        other=0.0)
        else:
            a = tl.load(a_ptr + rm64[:, None] * lda + k64[None, :], mask=m_mask[:, None] & k_mask[None, :],
                        other=0.0)
        if B_TRANS:
            b = tl.load(b_ptr + k64[:, None] + rn64[None, :] * ldb, mask=k_mask[:, None] & n_mask[None, :],
                        other=0.0)
        else:
            b = tl.load(b_ptr + k64[:, None] * ldb + rn64[None, :], mask=k_mask[:, None] & n_mask[None, :],
                        other=0.0)
        acc = _dot(a, b, acc, INTERPRETED)
    if has_bias != 0:
        acc += tl.load(bias_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    offs = rm64[:, None] * ldo + rn64[None, :]
    mask = m_mask[:, None] & n_mask[None, :]
    if accumulate != 0:
        acc += tl.load(out_ptr + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, _rounded(acc, out_ptr.dtype.element_ty, INTERPRETED), mask=mask)


@triton.jit(do_not_specialize=["batch", "features"])
def _icm_mixed_classifier_kernel(w_ptr, bias_ptr, y_a_ptr, y_b_ptr, lam_ptr, w_mixed_ptr, b_mixed_ptr, batch,
                                 features, ld_w, HAS_BIAS: tl.constexpr, BLOCK_P: tl.constexpr,
                                 BLOCK_D: tl.constexpr, INTERPRETED: tl.constexpr):
    """W~ (B, D) in w_mixed's dtype (lerped in fp32) and b~ (B,) fp32."""
    pid = tl.program_id(0)
    n_d = tl.cdiv(features, BLOCK_D)
    pairs = (pid // n_d) * BLOCK_P + tl.arange(0, BLOCK_P)
    pid_d = pid % n_d
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    p_mask = pairs < batch
    mask = p_mask[:, None] & (d < features)[None, :]
    y_a = tl.load(y_a_ptr + pairs, mask=p_mask, other=0).to(tl.int64)
    y_b = tl.load(y_b_ptr + pairs, mask=p_mask, other=0).to(tl.int64)
    lam = tl.load(lam_ptr + pairs, mask=p_mask, other=0.0)
    w_a = tl.load(w_ptr + y_a[:, None] * ld_w + d[None, :], mask=mask, other=0.0).to(tl.float32)
    w_b = tl.load(w_ptr + y_b[:, None] * ld_w + d[None, :], mask=mask, other=0.0).to(tl.float32)
    w_mixed = _lerp(w_b, w_a, lam[:, None])
    tl.store(w_mixed_ptr + pairs.to(tl.int64)[:, None] * features + d[None, :],
             _rounded(w_mixed, w_mixed_ptr.dtype.element_ty, INTERPRETED), mask=mask)
    if HAS_BIAS:
        if pid_d == 0:
            b_a = tl.load(bias_ptr + y_a, mask=p_mask, other=0.0).to(tl.float32)
            b_b = tl.load(bias_ptr + y_b, mask=p_mask, other=0.0).to(tl.float32)
            tl.store(b_mixed_ptr + pairs, _lerp(b_b, b_a, lam), mask=p_mask)


@triton.jit(do_not_specialize=["rows_in_block", "batch", "num_classes"])
def _icm_scatter_scores_kernel(g_ptr, class_begin_ptr, entry_pair_ptr, entry_weight_ptr, dz_ptr, rows_in_block,
                               batch, num_classes, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, INTERPRETED: tl.constexpr):
    """dZ[r, c] = sum over class c's entries e (pair order) of w_e G[r, pair_e]:
    the transpose of the gather, without atomics. dZ in its own dtype."""
    pid = tl.program_id(0)
    n_c = tl.cdiv(num_classes, BLOCK_C)
    r = (pid // n_c) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = (pid % n_c) * BLOCK_C + tl.arange(0, BLOCK_C)
    r_mask = r < rows_in_block
    c_mask = c < num_classes
    begin = tl.load(class_begin_ptr + c, mask=c_mask, other=0)
    count = tl.load(class_begin_ptr + c + 1, mask=c_mask, other=0) - begin
    g_rows = g_ptr + r.to(tl.int64)[:, None] * batch
    acc = tl.zeros((BLOCK_R, BLOCK_C), tl.float32)
    for j in range(0, tl.max(count, axis=0)):
        has = j < count
        pair = tl.load(entry_pair_ptr + begin + j, mask=has, other=0)
        w = tl.load(entry_weight_ptr + begin + j, mask=has, other=0.0)
        acc += w[None, :] * tl.load(g_rows + pair[None, :], mask=r_mask[:, None] & has[None, :], other=0.0)
    tl.store(dz_ptr + r.to(tl.int64)[:, None] * num_classes + c[None, :], _rounded(acc, dz_ptr.dtype.element_ty, INTERPRETED),
             mask=r_mask[:, None] & c_mask[None, :])


@triton.jit(do_not_specialize=["num_classes", "features"])
def _icm_class_scatter_kernel(class_begin_ptr, entry_pair_ptr, entry_weight_ptr, grad_w_mixed_ptr, grad_w_ptr,
                              grad_b_mixed_ptr, grad_b_ptr, num_classes, features, WANT_WEIGHT: tl.constexpr,
                              WANT_BIAS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr, INTERPRETED: tl.constexpr):
    """dW[c] = sum over class c's entries (pair order) of w_e dW~[pair_e], and
    db alike from db~; every class row written (exact zeros for classes
    absent from the batch), in the gradients' dtypes."""
    pid = tl.program_id(0)
    n_d = tl.cdiv(features, BLOCK_D)
    c = (pid // n_d) * BLOCK_C + tl.arange(0, BLOCK_C)
    pid_d = pid % n_d
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    c_mask = c < num_classes
    d_mask = d < features
    begin = tl.load(class_begin_ptr + c, mask=c_mask, other=0)
    count = tl.load(class_begin_ptr + c + 1, mask=c_mask, other=0) - begin
    acc = tl.zeros((BLOCK_C, BLOCK_D), tl.float32)
    acc_b = tl.zeros((BLOCK_C,), tl.float32)
    for j in range(0, tl.max(count, axis=0)):
        has = j < count
        pair = tl.load(entry_pair_ptr + begin + j, mask=has, other=0)
        w = tl.load(entry_weight_ptr + begin + j, mask=has, other=0.0)
        if WANT_WEIGHT:
            acc += w[:, None] * tl.load(grad_w_mixed_ptr + pair.to(tl.int64)[:, None] * features + d[None, :],
                                        mask=has[:, None] & d_mask[None, :], other=0.0)
        if WANT_BIAS:
            acc_b += w * tl.load(grad_b_mixed_ptr + pair, mask=has, other=0.0)
    if WANT_WEIGHT:
        tl.store(grad_w_ptr + c.to(tl.int64)[:, None] * features + d[None, :], _rounded(acc, grad_w_ptr.dtype.element_ty, INTERPRETED),
                 mask=c_mask[:, None] & d_mask[None, :])
    if WANT_BIAS:
        if pid_d == 0:
            tl.store(grad_b_ptr + c, _rounded(acc_b, grad_b_ptr.dtype.element_ty, INTERPRETED), mask=c_mask)


@triton.jit(do_not_specialize=["batch", "features"])
def _icm_grad_lam_kernel(w_ptr, bias_ptr, y_a_ptr, y_b_ptr, grad_w_mixed_ptr, grad_b_mixed_ptr, grad_lam_ptr, batch,
                         features, ld_w, HAS_BIAS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
    """d lam_k = dW~_k . (W[y_a_k] - W[y_b_k]) + db~_k (b[y_a_k] - b[y_b_k])."""
    pairs = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = pairs < batch
    y_a = tl.load(y_a_ptr + pairs, mask=p_mask, other=0).to(tl.int64)
    y_b = tl.load(y_b_ptr + pairs, mask=p_mask, other=0).to(tl.int64)
    acc = tl.zeros((BLOCK_P, BLOCK_D), tl.float32)
    for d0 in range(0, features, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        mask = p_mask[:, None] & (d < features)[None, :]
        w_a = tl.load(w_ptr + y_a[:, None] * ld_w + d[None, :], mask=mask, other=0.0).to(tl.float32)
        w_b = tl.load(w_ptr + y_b[:, None] * ld_w + d[None, :], mask=mask, other=0.0).to(tl.float32)
        grad = tl.load(grad_w_mixed_ptr + pairs.to(tl.int64)[:, None] * features + d[None, :], mask=mask, other=0.0)
        acc += grad * (w_a - w_b)
    total = tl.sum(acc, axis=1)
    if HAS_BIAS:
        b_a = tl.load(bias_ptr + y_a, mask=p_mask, other=0.0).to(tl.float32)
        b_b = tl.load(bias_ptr + y_b, mask=p_mask, other=0.0).to(tl.float32)
        total += tl.load(grad_b_mixed_ptr + pairs, mask=p_mask, other=0.0) * (b_a - b_b)
    tl.store(grad_lam_ptr + pairs, total, mask=p_mask)


@triton.jit(do_not_specialize=["n_row_tiles", "N"])
def _icm_sum_rows_kernel(part_ptr, out_ptr, n_row_tiles, N, BLOCK: tl.constexpr):
    """out[n] = sum over t of part[t, n], t in order (deterministic)."""
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < N
    acc = tl.zeros((BLOCK,), tl.float32)
    ptrs = part_ptr + idx
    for _ in range(0, n_row_tiles):  # pointer steps: 64-bit offsets past 2^31
        acc += tl.load(ptrs, mask=mask, other=0.0)
        ptrs += N
    tl.store(out_ptr + idx, acc, mask=mask)


KERNELS = {
    "small_batch": _icm_small_batch_kernel,
    "score_stats": _icm_score_stats_kernel,
    "loss": _icm_loss_kernel,
    "grad_scores": _icm_grad_scores_kernel,
    "matmul": _icm_matmul_kernel,
    "mixed_classifier": _icm_mixed_classifier_kernel,
    "scatter_scores": _icm_scatter_scores_kernel,
    "class_scatter": _icm_class_scatter_kernel,
    "grad_lam": _icm_grad_lam_kernel,
    "sum_rows": _icm_sum_rows_kernel,
}

# ------------------------------------------------------------ launch configs

# Tiles of the kernels that multiply (tl.dot), by operand dtype family. fp32
# operands run tf32x3, which splits each operand into two TF32 halves in
# registers: its tiles are thinner in K (and the GEMMs wider in warps) so
# that nothing spills on sm_80 or sm_90 (tests/test_triton_aot.py; fp32 with
# the half tiles spilled up to 5.9 KB of stack a thread). Each entry: the
# constexprs and num_warps.
#
#   score: S tiles (forward stats, backward G), 64 x 64, K in steps of 32 (half)
#          or 8 (fp32), two warpgroups (8 warps; a warpgroup is sm_90's wgmma
#          unit). Half with K = 64 took 242 registers a thread, one block an SM.
#   small_batch: the one-tile forward (B <= 64), with the lerp in the operand
#          load: the score tiles' K steps and warps, so that backward (score
#          tiles from the stored W~, the same values) rebuilds S bit for bit;
#          B = 1 must give P = 1 and a zero gradient exactly
#   matmul: "large" 128 x 128 output tiles, 8 warps, when both output sides
#          span a few tiles and every leading dimension is 16-divisible (with
#          unaligned rows the scalar loads' addresses spill it); "small"
#          64 x 64, 4 warps, otherwise (and more programs for small outputs)
_GEMM_TILES = {
    "half": {
        "score": ({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}, 8),
        "small_batch": ({"BLOCK": 64, "BLOCK_K": 32}, 8),
        "matmul": {"large": ({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32}, 8),
                   "small": ({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}, 4)},
    },
    "fp32": {
        "score": ({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 8}, 8),
        "small_batch": ({"BLOCK": 64, "BLOCK_K": 8}, 8),
        "matmul": {"large": ({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 16}, 8),
                   "small": ({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 16}, 4)},
    },
}
# Through the logits a tile is two gathers from Z, not a product, the same
# for every dtype: 32 x 64, 4 warps (64 x 64 tiles of 64-bit gather addresses
# spilled registers).
LOGITS_TILE = ({"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 16}, 4)
# B up to this many samples: the whole forward in one launch (one tile).
SMALL_BATCH = 64
# Pipelined loads over K for the kernels that multiply; nothing to hide elsewhere.
_GEMM_STAGES, _GROUP_M = 3, 8
# Elementwise kernels: 16 pairs or classes x 128 features, 32 x 64 tiles of
# dZ, 256-value vectors; 4 warps.
_ROWS_TILE = {"BLOCK_P": 16, "BLOCK_D": 128}
# (16 x 128 in fp16 left a 16-byte stack frame on sm_80 and sm_90: ptxas.)
_GRAD_LAM_TILE = {"BLOCK_P": 16, "BLOCK_D": 64}
_CLASS_TILE = {"BLOCK_C": 16, "BLOCK_D": 128}
_SCATTER_TILE = {"BLOCK_R": 32, "BLOCK_C": 64}
_VECTOR_BLOCK = 256
_SIMPLE_WARPS = 4
# A block of G (or dZ) holds at most this many values in backward: 64 MiB of fp32.
_BLOCK_VALUES = 1 << 24

# No compile option beyond the defaults: products and sums may contract into
# fused multiply-adds (only accuracy, not bit-equality with the CPU, is asked).
COMPILE_OPTIONS: dict = {}


def _family(dtype: torch.dtype) -> str:
    return "fp32" if dtype == torch.float32 else "half"


def gemm_tile(kernel_name: str, dtype: torch.dtype, mode: int = 0, m: int = 0, n: int = 0,
              aligned: bool = False) -> tuple[dict, int]:
    """(constexprs, num_warps) of the tiles of ``kernel_name`` for operands of
    ``dtype``; ``mode`` for the score kernels; for matmul the output's (m, n)
    and whether every leading dimension is 16-divisible."""
    if kernel_name in ("score_stats", "grad_scores"):
        return LOGITS_TILE if mode == _LOGITS else _GEMM_TILES[_family(dtype)]["score"]
    if kernel_name == "matmul":
        large = aligned and m >= 256 and n >= 256
        return _GEMM_TILES[_family(dtype)]["matmul"]["large" if large else "small"]
    return _GEMM_TILES[_family(dtype)][kernel_name]


def _shipped_configs():
    # Which terms (row, col) and which backward outputs a launch computes are
    # runtime flags, uniform branches that cost nothing next to the tiles;
    # what changes the code (the bias, how S is read, operand layouts, tile
    # sizes) is constexpr. Returns [(kernel, constexprs, num_warps, families)]:
    # the tiles of the kernels that multiply differ by operand dtype family.
    configs = []
    both = ("fp32", "half")
    for family in both:
        tiles = _GEMM_TILES[family]
        score, score_warps = tiles["score"]
        small, small_warps = tiles["small_batch"]
        for has_bias in (False, True):
            configs.append(("small_batch", {"HAS_BIAS": has_bias, **small}, small_warps, (family,)))
            for name in ("score_stats", "grad_scores"):
                configs.append((name, {"HAS_BIAS": has_bias, "MODE": _FACTORISED, **score}, score_warps, (family,)))
        for a_trans, b_trans in _MATMUL_LAYOUTS:
            for tile, warps in tiles["matmul"].values():
                configs.append(("matmul", {"A_TRANS": a_trans, "B_TRANS": b_trans, **tile, "GROUP_M": _GROUP_M},
                                warps, (family,)))
    logits_tile, logits_warps = LOGITS_TILE
    for name in ("score_stats", "grad_scores"):  # through the logits Z holds the bias
        configs.append((name, {"HAS_BIAS": False, "MODE": _LOGITS, **logits_tile}, logits_warps, both))
    for has_bias in (False, True):
        configs.append(("mixed_classifier", {"HAS_BIAS": has_bias, **_ROWS_TILE}, _SIMPLE_WARPS, both))
        configs.append(("grad_lam", {"HAS_BIAS": has_bias, **_GRAD_LAM_TILE}, _SIMPLE_WARPS, both))
    configs.append(("loss", {"BLOCK": _VECTOR_BLOCK}, _SIMPLE_WARPS, both))
    configs.append(("scatter_scores", dict(_SCATTER_TILE), _SIMPLE_WARPS, both))
    for want_weight, want_bias in ((True, False), (False, True), (True, True)):
        configs.append(("class_scatter", {"WANT_WEIGHT": want_weight, "WANT_BIAS": want_bias, **_CLASS_TILE},
                        _SIMPLE_WARPS, both))
    configs.append(("sum_rows", {"BLOCK": _VECTOR_BLOCK}, _SIMPLE_WARPS, both))
    return [(name, {**constexprs, "INTERPRETED": False} if name in _INTERPRETED_FLAG else constexprs, warps, fams)
            for name, constexprs, warps, fams in configs]


# (A_TRANS, B_TRANS) of the GEMMs the launchers run: G W~ and dZ W (plain),
# G^T H and dZ^T H (A transposed; the first row block writes, later ones
# accumulate), and Z = H W^T + b (B transposed).
_MATMUL_LAYOUTS = ((False, False), (True, False), (False, True))

# The kernels with a tl.dot (for some configs: score_stats and grad_scores
# gather through the logits without one).
GEMM_KERNELS = ("small_batch", "score_stats", "grad_scores", "matmul")

# The kernels that dot or round to bf16, with a constexpr INTERPRETED that works
# around the interpreter's defects there (False in every GPU launch).
_INTERPRETED_FLAG = GEMM_KERNELS + ("mixed_classifier", "scatter_scores", "class_scatter")

# Every (kernel, constexprs, num_warps) the launchers can use; the AOT test
# compiles each for the dtypes of :func:`config_dtypes` and sm_80/sm_90 and
# checks its resources and, where it multiplies (:func:`uses_dot`), its MMA
# instructions.
_CONFIGS = _shipped_configs()
SHIPPED_CONFIGS = [(name, constexprs, warps) for name, constexprs, warps, _ in _CONFIGS]
_FAMILIES = {(name, tuple(sorted(constexprs.items())), warps): fams for name, constexprs, warps, fams in _CONFIGS}


def config_dtypes(kernel_name: str, constexprs: dict, num_warps: int) -> tuple:
    """The operand dtypes a shipped config is launched with."""
    families = _FAMILIES[(kernel_name, tuple(sorted(constexprs.items())), num_warps)]
    return tuple(d for d in (torch.float32, torch.bfloat16, torch.float16) if _family(d) in families)


def uses_dot(kernel_name: str, constexprs: dict) -> bool:
    """Whether a shipped config computes a matrix product (tl.dot)."""
    if kernel_name in ("small_batch", "matmul"):
        return True
    return kernel_name in ("score_stats", "grad_scores") and constexprs["MODE"] != _LOGITS



def _num_stages(kernel_name: str) -> int:
    return _GEMM_STAGES if kernel_name in GEMM_KERNELS else 1


# ---------------------------------------------------------------- AOT cases

_TRITON_DTYPE = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


# Pointer arguments of the kernels that are not fp32, by name: "t" is the
# operand dtype (hidden's), "i64" the labels and the class-scatter entries.
_POINTER_TYPES = {
    "h_ptr": "t", "w_ptr": "t", "a_ptr": "t", "b_ptr": "t", "w_mixed_ptr": "t", "dz_ptr": "t", "grad_w_ptr": "t",
    "grad_b_ptr": "t", "y_a_ptr": "i64", "y_b_ptr": "i64", "class_begin_ptr": "i64", "entry_pair_ptr": "i64",
}


def _pointer_type(kernel_name: str, name: str, constexprs: dict, t: str) -> str:
    logits = constexprs.get("MODE") == _LOGITS
    kind = _POINTER_TYPES.get(name, "fp32")
    if name == "bias_ptr" and kernel_name in ("small_batch", "matmul", "mixed_classifier", "grad_lam"):
        kind = "t"  # the classifier's bias; score_stats and grad_scores read b~ (fp32)
    elif name == "rhs_ptr" and not logits:
        kind = "t"  # W~; through the logits Z (fp32)
    elif name == "g_ptr" and kernel_name == "grad_scores" and not logits:
        kind = "t"  # G feeds the GEMMs in the operand dtype; dZ's scatter reads it in fp32
    elif name == "out_ptr" and kernel_name == "matmul" and not (constexprs["A_TRANS"] or constexprs["B_TRANS"]):
        kind = "t"  # G W~ and dZ W write grad_hidden; G^T H, dZ^T H and Z write fp32
    return "*" + (t if kind == "t" else kind)


def _signature(kernel_name: str, constexprs: dict, t: str) -> tuple[dict, list]:
    """(signature, integer args the JIT specialises) of a kernel for operand dtype ``t``,
    in the kernel's argument order. Integers are i32; the JIT specialises the
    leading dimensions (``ld*``), every other integer is ``do_not_specialize``."""
    if kernel_name not in KERNELS:
        raise ValueError(f"unknown kernel {kernel_name!r}; expected one of {sorted(KERNELS)}")
    sig = {}
    for name in KERNELS[kernel_name].arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = _pointer_type(kernel_name, name, constexprs, t)
        else:
            sig[name] = "i32"
    return sig, [name for name in sig if name.startswith("ld")]


def aot_cases(kernel_name: str, constexprs: dict, dtype: torch.dtype) -> list[dict]:
    """What to compile ahead of time for one shipped config and operand dtype.

    The JIT specialises the leading dimensions (the sizes are
    ``do_not_specialize``): "aligned" (16-divisible, as D = 512 or 2048 gives),
    "unaligned" (D = 31) and "unit" (D = 1, or C = 1 for Z's rows). Pointers
    are 16-byte aligned, as torch allocates.
    """
    sig, ints = _signature(kernel_name, constexprs, _TRITON_DTYPE[dtype])
    cases = specialisations(sig, ints, constexprs, with_unit_c=bool(ints))
    if kernel_name == "matmul" and constexprs["BLOCK_M"] == 128:  # launched on aligned rows only
        cases = [case for case in cases if case["label"] == "aligned"]
    if not ints:  # nothing specialised: one compile, aligned pointers
        cases = cases[:1]
        cases[0]["label"] = "aligned pointers"
    for case in cases:
        case["label"] = case["label"].replace("C=1", "unit")
        case["num_stages"] = _num_stages(kernel_name)
        case["options"] = dict(COMPILE_OPTIONS)
    return cases


# ----------------------------------------------------------------- launchers

def _launch(kernel_name: str, grid, *args, num_warps: int, **constexprs):
    if kernel_name in _INTERPRETED_FLAG:  # the first argument is a tensor: CPU tensors mean the interpreter
        constexprs["INTERPRETED"] = not args[0].is_cuda
    if grid[0] > MAX_GRID_X:
        raise ValueError(f"infinite_class_mixup_loss: {grid[0]} programs are too many for one launch")
    KERNELS[kernel_name][grid](*args, **constexprs, num_warps=num_warps, num_stages=_num_stages(kernel_name),
                               **COMPILE_OPTIONS)


def _matmul(a, b, out, *, a_trans=False, b_trans=False, bias=None, accumulate=False):
    """out (+)= op(a) @ op(b) (+ bias): a, b contiguous 2-D in one dtype; op
    transposes when asked. out is a 2-D view with unit column stride."""
    m = a.shape[1] if a_trans else a.shape[0]
    k = a.shape[0] if a_trans else a.shape[1]
    n = b.shape[0] if b_trans else b.shape[1]
    assert out.shape == (m, n) and out.stride(1) == 1 and a.is_contiguous() and b.is_contiguous()
    aligned = all(ld % 16 == 0 for ld in (a.stride(0), b.stride(0), out.stride(0)))
    tile, warps = gemm_tile("matmul", a.dtype, m=m, n=n, aligned=aligned)
    grid = (triton.cdiv(m, tile["BLOCK_M"]) * triton.cdiv(n, tile["BLOCK_N"]),)
    _launch("matmul", grid, a, b, out, bias if bias is not None else a, m, n, k, a.stride(0), b.stride(0),
            out.stride(0), int(bias is not None), int(accumulate), num_warps=warps, A_TRANS=a_trans,
            B_TRANS=b_trans, **tile, GROUP_M=_GROUP_M)


def _mixed_classifier(weight, bias, y_a, y_b, lam):
    """(W~ in weight's dtype, b~ fp32 or None)."""
    batch, features = y_a.shape[0], weight.shape[1]
    w_mixed = torch.empty((batch, features), dtype=weight.dtype, device=weight.device)
    b_mixed = torch.empty((batch,), dtype=torch.float32, device=weight.device) if bias is not None else None
    grid = (triton.cdiv(batch, _ROWS_TILE["BLOCK_P"]) * triton.cdiv(features, _ROWS_TILE["BLOCK_D"]),)
    _launch("mixed_classifier", grid, weight, bias if bias is not None else weight, y_a, y_b, lam, w_mixed,
            b_mixed if b_mixed is not None else lam, batch, features, weight.stride(0), num_warps=_SIMPLE_WARPS,
            HAS_BIAS=bias is not None, **_ROWS_TILE)
    return w_mixed, b_mixed


def _logits(hidden, weight, bias):
    """Z = H W^T + b, (B, C) fp32."""
    z = torch.empty((hidden.shape[0], weight.shape[0]), dtype=torch.float32, device=hidden.device)
    _matmul(hidden, weight, z, b_trans=True, bias=bias)
    return z


def _sum_rows(part):
    out = torch.empty((part.shape[1],), dtype=torch.float32, device=part.device)
    _launch("sum_rows", (triton.cdiv(part.shape[1], _VECTOR_BLOCK),), part, out, part.shape[0], part.shape[1],
            num_warps=_SIMPLE_WARPS, BLOCK=_VECTOR_BLOCK)
    return out


def _class_entries(y_a, y_b, lam, num_classes):
    """The class scatter's entries, class by class in pair order: (class_begin
    (C + 1,), entry_pair (2B,), entry_weight (2B,)); pair k gives lam_k to
    y_a_k and 1 - lam_k to y_b_k, or 1 and 0 when they are one class (exact,
    whatever lam). On the device, no host synchronisation."""
    # Entry 2k is pair k's y_a, 2k + 1 its y_b: a stable sort keeps each class's
    # entries in pair order, as the CPU op's counting sort does, so that a sum
    # over a class adds the same terms in the same order whichever of a pair's
    # labels brings them (lam = 0 or 1 is then exactly one classifier).
    classes, order = torch.sort(torch.stack((y_a, y_b), dim=1).flatten(), stable=True)
    class_begin = torch.searchsorted(classes, torch.arange(num_classes + 1, device=y_a.device, dtype=classes.dtype))
    pair = order // 2
    # icm_weight_a/b of icm_math.h: a same-class pair gives its class 1 and 0.
    same_class = (y_a == y_b)[pair]
    weight = torch.where(order % 2 == 0, torch.where(same_class, 1.0, lam[pair]),
                         torch.where(same_class, 0.0, 1.0 - lam[pair]))
    return class_begin, pair.contiguous(), weight.contiguous()


def _check_sizes(hidden, weight):
    batch, features = hidden.shape
    if max(batch, features, weight.shape[0]) >= 2**31 - 2 * max(_BLOCK_VALUES, 1 << 16):
        raise ValueError("infinite_class_mixup_loss: sizes past 2^31 are not supported by the Triton kernels")


def icm_forward(hidden, weight, bias, y_a, y_b, lam, axes: str, path: str, keep_cache: bool):
    """(loss (B,), row_lse (B,) or (0,), col_lse (B,) or (0,), cache) in fp32.

    ``hidden`` (B, D) and ``weight`` (C, D) fp32/bf16/fp16 of one dtype,
    ``bias`` (C,) or None, ``y_a``/``y_b`` int64 (B,) in [0, C) (checked by
    the caller), ``lam`` fp32 (B,). ``path`` "factorised" or "logits". The
    cache is Z (B, C) fp32 on the logits path when ``keep_cache``, else (0,);
    the factorised path never keeps S (backward recomputes its tiles).
    """
    _check_sizes(hidden, weight)
    hidden, weight = hidden.contiguous(), weight.contiguous()
    bias = bias.contiguous() if bias is not None else None
    y_a, y_b, lam = y_a.contiguous(), y_b.contiguous(), lam.contiguous()
    batch, features = hidden.shape
    row, col = axes != "col", axes != "row"
    f32 = {"dtype": torch.float32, "device": hidden.device}
    loss = torch.empty((batch,), **f32)
    row_lse = torch.empty((batch if row else 0,), **f32)
    col_lse = torch.empty((batch if col else 0,), **f32)
    cache = torch.empty((0,), **f32)
    with device_guard(hidden):
        if path == "factorised" and batch <= SMALL_BATCH:
            tile, warps = gemm_tile("small_batch", hidden.dtype)
            _launch("small_batch", (1,), hidden, weight, bias if bias is not None else weight, y_a, y_b, lam, loss,
                    row_lse if row else loss, col_lse if col else loss, batch, features, hidden.stride(0),
                    weight.stride(0), int(row), int(col), num_warps=warps, HAS_BIAS=bias is not None, **tile)
            return loss, row_lse, col_lse, cache
        if path == "factorised":
            rhs, rhs_bias = _mixed_classifier(weight, bias, y_a, y_b, lam)
            mode = _FACTORISED
        else:
            rhs, rhs_bias = _logits(hidden, weight, bias), None
            mode = _LOGITS
            if keep_cache:
                cache = rhs
        score_tile, score_warps = gemm_tile("score_stats", hidden.dtype, mode)
        n_row_tiles = triton.cdiv(batch, score_tile["BLOCK_M"])
        diag = torch.empty((batch,), **f32)
        col_max = torch.empty((n_row_tiles, batch) if col else (0,), **f32)
        col_sum = torch.empty_like(col_max)
        _launch("score_stats", (n_row_tiles,), hidden, rhs, rhs_bias if rhs_bias is not None else lam, y_a, y_b, lam,
                row_lse if row else diag, diag, col_max if col else diag, col_sum if col else diag, batch, features,
                hidden.stride(0), rhs.stride(0), int(row), int(col), num_warps=score_warps,
                HAS_BIAS=rhs_bias is not None, MODE=mode, **score_tile)
        _launch("loss", (triton.cdiv(batch, _VECTOR_BLOCK),), row_lse if row else diag, diag,
                col_max if col else diag, col_sum if col else diag, loss, col_lse if col else diag, batch, n_row_tiles,
                int(row), int(col), num_warps=_SIMPLE_WARPS, BLOCK=_VECTOR_BLOCK)
    return loss, row_lse, col_lse, cache


def _block_rows(batch: int, width: int) -> int:
    """Rows of a block of G (or dZ) in backward: a multiple of both score tiles' rows,
    at most _BLOCK_VALUES values of width ``width``."""
    tile = 64  # a multiple of every score tile's rows
    rows = max(tile, (_BLOCK_VALUES // max(width, 1)) // tile * tile)
    return min(rows, triton.cdiv(batch, tile) * tile)


def icm_backward(grad_loss, hidden, weight, bias, y_a, y_b, lam, row_lse, col_lse, cache, axes: str, path: str,
                 output_mask):
    """(grad_hidden, grad_weight, grad_bias, grad_lam) of :func:`icm_forward`
    for the per-sample ``grad_loss`` (fp32 (B,)); a gradient not asked for in
    ``output_mask`` is returned empty, shape (0,)."""
    _check_sizes(hidden, weight)
    hidden, weight = hidden.contiguous(), weight.contiguous()
    bias = bias.contiguous() if bias is not None else None
    y_a, y_b, lam, grad_loss = y_a.contiguous(), y_b.contiguous(), lam.contiguous(), grad_loss.contiguous()
    batch, features = hidden.shape
    num_classes = weight.shape[0]
    row, col = axes != "col", axes != "row"
    need_hidden, need_weight = bool(output_mask[0]), bool(output_mask[1])
    need_bias, need_lam = bool(output_mask[2]) and bias is not None, bool(output_mask[3])
    f32 = {"dtype": torch.float32, "device": hidden.device}
    factorised = path == "factorised"
    grad_hidden = torch.empty_like(hidden) if need_hidden else hidden.new_empty((0,))
    grad_weight = weight.new_empty((0,))
    grad_bias = (bias if bias is not None else weight).new_empty((0,))
    grad_lam = torch.empty((0,), **f32)
    if not (need_hidden or need_weight or need_bias or need_lam):
        return grad_hidden, grad_weight, grad_bias, grad_lam

    need_w_mixed_grad = factorised and (need_weight or need_lam)
    need_logits_grad = not factorised and (need_hidden or need_weight)
    write_g = need_hidden or need_w_mixed_grad or need_logits_grad
    need_b_mixed_grad = need_bias or (factorised and need_lam and bias is not None)
    want_db = need_b_mixed_grad and row  # the column term does not depend on b~: db~ = 0 without the row term
    want_lam_sums = not factorised and need_lam
    score_tile, score_warps = gemm_tile("grad_scores", hidden.dtype, _FACTORISED if factorised else _LOGITS)
    tile = score_tile["BLOCK_M"]
    n_row_tiles = triton.cdiv(batch, tile)
    n_col_tiles = triton.cdiv(batch, score_tile["BLOCK_N"])
    with device_guard(hidden):
        if factorised:
            rhs, rhs_bias = _mixed_classifier(weight, bias, y_a, y_b, lam)
            mode = _FACTORISED
            block_rows = _block_rows(batch, batch)
            g_buffer = torch.empty((block_rows, batch), dtype=hidden.dtype, device=hidden.device) if write_g else None
            grad_w_mixed = torch.empty((batch, features), **f32) if need_w_mixed_grad else None
        else:
            rhs = cache if cache.numel() > 0 else _logits(hidden, weight, bias)
            rhs_bias = None
            mode = _LOGITS
            block_rows = _block_rows(batch, max(batch, num_classes))
            g_buffer = torch.empty((block_rows, batch), **f32) if write_g else None
            dz_buffer = (torch.empty((block_rows, num_classes), dtype=hidden.dtype, device=hidden.device)
                         if need_logits_grad else None)
            grad_weight32 = torch.empty((num_classes, features), **f32) if need_weight else None
        db_part = torch.empty((n_row_tiles, batch), **f32) if want_db else None
        lam_part = torch.empty((n_row_tiles, batch), **f32) if want_lam_sums else None
        entries = (_class_entries(y_a, y_b, lam, num_classes)
                   if need_logits_grad or need_bias or (factorised and need_weight) else None)
        # Stand-ins for pointers a launch does not use, of the dtype its compiled signature has.
        dummy = lam
        g_dummy = torch.empty((1,), dtype=hidden.dtype if factorised else torch.float32, device=hidden.device)
        for begin in range(0, batch, block_rows):
            rows = min(block_rows, batch - begin)
            grid = (triton.cdiv(rows, tile) * n_col_tiles,)
            _launch("grad_scores", grid, hidden, rhs, rhs_bias if rhs_bias is not None else dummy, y_a, y_b, lam,
                    grad_loss, row_lse if row else dummy, col_lse if col else dummy,
                    g_buffer if write_g else g_dummy, db_part if want_db else dummy,
                    lam_part if want_lam_sums else dummy, batch, features, hidden.stride(0), rhs.stride(0), begin,
                    rows, begin // tile, n_col_tiles, int(row), int(col), int(write_g), int(want_db),
                    int(want_lam_sums), num_warps=score_warps, HAS_BIAS=rhs_bias is not None, MODE=mode,
                    **score_tile)
            if not write_g:
                continue
            g_rows = g_buffer[:rows]
            hidden_rows = hidden[begin:begin + rows]
            if factorised:
                lhs, rhs_operand = g_rows, rhs
                if need_w_mixed_grad:
                    _matmul(g_rows, hidden_rows, grad_w_mixed, a_trans=True, accumulate=begin > 0)
            else:
                lhs, rhs_operand = dz_buffer[:rows], weight
                class_begin, entry_pair, entry_weight = entries
                grid = (triton.cdiv(rows, _SCATTER_TILE["BLOCK_R"]) *
                        triton.cdiv(num_classes, _SCATTER_TILE["BLOCK_C"]),)
                _launch("scatter_scores", grid, g_rows, class_begin, entry_pair, entry_weight, lhs, rows, batch,
                        num_classes, num_warps=_SIMPLE_WARPS, **_SCATTER_TILE)
                if need_weight:
                    _matmul(lhs, hidden_rows, grad_weight32, a_trans=True, accumulate=begin > 0)
            if need_hidden:
                _matmul(lhs, rhs_operand, grad_hidden[begin:begin + rows])
        del g_buffer
        grad_b_mixed = _sum_rows(db_part) if want_db else torch.zeros((batch,), **f32) if need_b_mixed_grad else None

        scatter_weight = factorised and need_weight
        if scatter_weight or need_bias:
            class_begin, entry_pair, entry_weight = entries
            if scatter_weight:
                grad_weight = torch.empty_like(weight)
            if need_bias:
                grad_bias = torch.empty_like(bias)
            grid = (triton.cdiv(num_classes, _CLASS_TILE["BLOCK_C"]) *
                    (triton.cdiv(features, _CLASS_TILE["BLOCK_D"]) if scatter_weight else 1),)
            _launch("class_scatter", grid, class_begin, entry_pair, entry_weight,
                    grad_w_mixed if scatter_weight else dummy, grad_weight if scatter_weight else weight,
                    grad_b_mixed if need_bias else dummy, grad_bias if need_bias else weight, num_classes,
                    features if scatter_weight else 1, num_warps=_SIMPLE_WARPS, WANT_WEIGHT=scatter_weight,
                    WANT_BIAS=need_bias, **_CLASS_TILE)
        if not factorised and need_weight:
            grad_weight = grad_weight32 if weight.dtype == torch.float32 else grad_weight32.to(weight.dtype)
        if need_lam:
            if factorised:
                grad_lam = torch.empty((batch,), **f32)
                _launch("grad_lam", (triton.cdiv(batch, _GRAD_LAM_TILE["BLOCK_P"]),), weight,
                        bias if bias is not None else weight, y_a, y_b, grad_w_mixed,
                        grad_b_mixed if bias is not None else dummy, grad_lam, batch, features, weight.stride(0),
                        num_warps=_SIMPLE_WARPS, HAS_BIAS=bias is not None, **_GRAD_LAM_TILE)
            else:
                grad_lam = _sum_rows(lam_part)
    return grad_hidden, grad_weight, grad_bias, grad_lam
