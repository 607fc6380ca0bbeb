"""The specification: every mixkernels op in plain, differentiable PyTorch.

Each function here is the meaning of the op of the same name. The compiled
backends are tested against these functions, and these functions are checked
with ``torch.autograd.gradcheck`` in fp64 (``tests/test_reference.py``).
They are written for clarity, not speed: dense targets are allowed here.

Conventions shared with :mod:`mixkernels.functional`:

* ``lam`` is the weight of the sample's own label ``y_a``; the partner label
  ``y_b`` gets ``1 - lam``. It is a float, a 0-d tensor or a ``(B,)`` tensor.
* Label smoothing follows timm's ``mixup_target``: each one-hot vector becomes
  ``(1 - s) * e_y + s / C`` before mixing, so the mixed target is
  ``(1 - s) * (lam * e_a + (1 - lam) * e_b) + s / C``.
* Losses are computed in fp32 (or fp64 for fp64 inputs) and returned in the
  logits' dtype, reduced over the batch as ``reduction`` says.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "ICM_AXES",
    "cutmix_batch",
    "cutmix_box_mask",
    "cutmix_lam",
    "ic_regmixup_loss",
    "icm_loss_from_scores",
    "icm_scores",
    "infinite_class_mixup_loss",
    "infinite_class_mixup_loss_dense",
    "mask_mix",
    "mix_batch",
    "mixed_classifier",
    "mixup_cross_entropy",
    "soft_target_cross_entropy",
    "mixup_target",
    "reduce_loss",
    "upsample_mask",
]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def reduce_loss(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce a per-sample loss ``(B,)`` as ``reduction`` says."""
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


def mixup_target(y_a, y_b, lam, num_classes: int, label_smoothing: float = 0.0,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The dense ``(B, C)`` mixed and smoothed target (timm's ``mixup_target``)."""
    lam = torch.as_tensor(lam, dtype=dtype, device=y_a.device)
    lam = lam.reshape(-1, 1) if lam.dim() else lam
    off = label_smoothing / num_classes
    on = 1.0 - label_smoothing + off
    e_a = torch.full((y_a.shape[0], num_classes), off, dtype=dtype, device=y_a.device)
    e_a = e_a.scatter(1, y_a.long().view(-1, 1), on)
    e_b = torch.full((y_b.shape[0], num_classes), off, dtype=dtype, device=y_b.device)
    e_b = e_b.scatter(1, y_b.long().view(-1, 1), on)
    return lam * e_a + (1.0 - lam) * e_b


def mixup_cross_entropy(logits: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor, lam,
                        *, label_smoothing: float = 0.0, reduction: str = "mean") -> torch.Tensor:
    """``lam * CE(z, y_a) + (1 - lam) * CE(z, y_b)`` with timm's smoothing.

    Written as the cross-entropy of ``logits`` against the dense mixed target,
    which is the definition; the kernels use the equivalent
    ``lse(z) - (1-s) * (lam * z[y_a] + (1-lam) * z[y_b]) - s/C * sum(z)``.
    """
    dtype = _compute_dtype(logits.dtype)
    z = logits.to(dtype)
    lam_t = lam.to(dtype) if isinstance(lam, torch.Tensor) else lam
    target = mixup_target(y_a, y_b, lam_t if isinstance(lam_t, torch.Tensor) else float(lam_t),
                          logits.shape[1], label_smoothing, dtype)
    loss = -(target * _log_softmax_where_weighted(z, target)).sum(dim=1)
    return reduce_loss(loss, reduction).to(logits.dtype)


def _log_softmax_where_weighted(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log_softmax(z), with 0 where the target weight is 0: a class that gets no
    weight contributes nothing, even when its logit is -inf (masked classes),
    as in ``F.cross_entropy`` with class indices, rather than ``0 * -inf = nan``."""
    log_p = torch.log_softmax(z, dim=1)
    return torch.where((target == 0) & torch.isneginf(log_p), 0.0, log_p)


def soft_target_cross_entropy(logits: torch.Tensor, target: torch.Tensor, *,
                              reduction: str = "mean") -> torch.Tensor:
    """``sum_c -target_c * log_softmax(z)_c`` per row (timm's ``SoftTargetCrossEntropy``).

    The target need not sum to one; gradients flow to ``logits`` and, when it
    requires grad, to ``target``.
    """
    dtype = _compute_dtype(logits.dtype)
    target = target.to(dtype)
    loss = -(target * _log_softmax_where_weighted(logits.to(dtype), target)).sum(dim=1)
    return reduce_loss(loss, reduction).to(logits.dtype)


def _lam_like_samples(lam, x: torch.Tensor, dtype: torch.dtype):
    """lam as a float or a tensor broadcastable against x's samples (B, 1, ...)."""
    if not isinstance(lam, torch.Tensor):
        return float(lam)
    lam = lam.to(dtype)
    return lam.reshape((-1,) + (1,) * (x.dim() - 1)) if lam.dim() else lam


def mix_batch(x: torch.Tensor, perm: torch.Tensor, lam) -> torch.Tensor:
    """``lam * x + (1 - lam) * x[perm]``, sample by sample, over any trailing shape.

    ``perm`` is a permutation of ``range(B)``: sample ``i`` is mixed with
    sample ``perm[i]``. ``lam`` is a float, a 0-d or a (B,) tensor (one lam per
    sample); gradients flow to ``x`` (both through its own slot and through
    the partner's) and to ``lam``. Computed in fp32, returned in x's dtype.
    """
    dtype = _compute_dtype(x.dtype)
    lam = _lam_like_samples(lam, x, dtype)
    xc = x.to(dtype)
    return (lam * xc + (1.0 - lam) * xc[perm.long()]).to(x.dtype)


def cutmix_box_mask(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, H, W) bool: True inside each sample's box ``(y0, y1, x0, x1)``
    (half-open pixel ranges ``y0 <= h < y1``, ``x0 <= w < x1``)."""
    y0, y1, x0, x1 = boxes.to(torch.int64).unbind(1)
    rows = torch.arange(height, device=boxes.device).view(1, height, 1)
    cols = torch.arange(width, device=boxes.device).view(1, 1, width)
    return ((rows >= y0.view(-1, 1, 1)) & (rows < y1.view(-1, 1, 1))
            & (cols >= x0.view(-1, 1, 1)) & (cols < x1.view(-1, 1, 1)))


def cutmix_batch(x: torch.Tensor, perm: torch.Tensor, boxes: torch.Tensor):
    """CutMix: each image ``x[i]`` with the box ``boxes[i] = (y0, y1, x0, x1)``
    pasted from its partner ``x[perm[i]]``, as timm's
    ``x[:, :, y0:y1, x0:x1] = x.flip(0)[:, :, y0:y1, x0:x1]`` per sample.

    Returns ``(mixed, lam)``: lam[i] = 1 - box area / image area (fp32), the
    weight of the sample's own label (timm's ``correct_lam``). Gradient to x.
    """
    height, width = x.shape[-2], x.shape[-1]
    inside = cutmix_box_mask(boxes, height, width).unsqueeze(1)
    mixed = torch.where(inside, x[perm.long()], x)
    return mixed, cutmix_lam(boxes, height, width)


def cutmix_lam(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """1 - box area / image area per sample, fp32 (timm's ``correct_lam``)."""
    y0, y1, x0, x1 = boxes.to(torch.int64).unbind(1)
    return 1.0 - ((y1 - y0) * (x1 - x0)).to(torch.float32) / float(height * width)


def upsample_mask(mask: torch.Tensor, height: int, width: int, mode: str = "bilinear") -> torch.Tensor:
    """A low-resolution mask ``(B, 1, h, w)`` upsampled to ``(B, 1, height, width)``:
    bilinear with ``align_corners=False`` (SAMix) or ``"nearest"`` (AutoMix)."""
    if mode == "bilinear":
        return F.interpolate(mask, size=(height, width), mode="bilinear", align_corners=False)
    if mode == "nearest":
        return F.interpolate(mask, size=(height, width), mode="nearest")
    raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")


def mask_mix(x: torch.Tensor, perm: torch.Tensor, mask: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """``m * x + (1 - m) * x[perm]`` per pixel, every channel alike, with ``m``
    the mask ``(B, 1, h, w)`` upsampled to x's ``(H, W)`` (:func:`upsample_mask`).

    The mask's values are not restricted: weights outside [0, 1] extrapolate.
    Computed in fp32 (fp64 for fp64 inputs), returned in x's dtype; gradients
    flow to x (through its own slot and its partner's) and to the
    low-resolution mask.
    """
    dtype = _compute_dtype(x.dtype)
    xc = x.to(dtype)
    m = upsample_mask(mask.to(dtype), x.shape[-2], x.shape[-1], mode)
    return (m * xc + (1.0 - m) * xc[perm.long()]).to(x.dtype)


# --------------------------------------------------------------------------- Infinite Class Mixup

ICM_AXES = ("both", "row", "col")


def _lam_per_pair(lam, dtype: torch.dtype):
    """lam as a float or a tensor that broadcasts against (B, D) rows ((B, 1) for per-pair lam)."""
    if not isinstance(lam, torch.Tensor):
        return float(lam)
    lam = lam.to(dtype)
    return lam.reshape(-1, 1) if lam.dim() else lam


def mixed_classifier(weight: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor, lam, bias=None,
                     dtype: torch.dtype = torch.float32):
    """``(W~, b~)``: ``W~_k = lam_k W[y_a_k] + (1 - lam_k) W[y_b_k]`` (B, D), ``b~`` (B,) likewise
    (``None`` without a bias), in ``dtype``.

    Written as ``lerp(W[y_b], W[y_a], lam)``, which is exact at the edges:
    ``lam = 1`` gives ``W[y_a]``, ``lam = 0`` gives ``W[y_b]`` and a same-class
    pair (``y_a == y_b``, self-pairs included) gives ``W[y_a]`` for every lam,
    with a gradient to lam of exactly 0. Only the B rows used are converted to
    ``dtype``, never the whole (C, D) matrix.
    """
    y_a, y_b = y_a.long(), y_b.long()
    lam_rows = _lam_per_pair(lam, dtype)
    w_mixed = torch.lerp(weight[y_b].to(dtype), weight[y_a].to(dtype), lam_rows)
    if bias is None:
        return w_mixed, None
    lam_bias = lam_rows.reshape(lam_rows.shape[:1]) if isinstance(lam_rows, torch.Tensor) else lam_rows
    b_mixed = torch.lerp(bias[y_b].to(dtype), bias[y_a].to(dtype), lam_bias)
    return w_mixed, b_mixed


def icm_loss_from_scores(scores: torch.Tensor, axes: str = "both", reduction: str = "mean") -> torch.Tensor:
    """ICM's two contrastive terms of a (B, B) score matrix, positives on the diagonal.

    Per sample ``b``: the row term ``logsumexp(S[b, :]) - S[b, b]`` (``CE(S, arange)``:
    classifier b against the other pairs' classifiers, judged on output b) plus
    the column term ``logsumexp(S[:, b]) - S[b, b]`` (``CE(S.T, arange)``: output b
    against the other outputs, judged by classifier b). ``axes`` keeps both
    terms, ``"row"`` or ``"col"``. ``"mean"`` is the mean over B of each term,
    summed over the terms (the method's loss), ``"none"`` the (B,) per-sample sums.
    """
    if axes not in ICM_AXES:
        raise ValueError(f"axes must be one of {ICM_AXES}, got {axes!r}")
    positives = scores.diagonal()
    per_sample = torch.zeros_like(positives)
    if axes in ("both", "row"):
        per_sample = per_sample + (torch.logsumexp(scores, dim=1) - positives)
    if axes in ("both", "col"):
        per_sample = per_sample + (torch.logsumexp(scores, dim=0) - positives)
    return reduce_loss(per_sample, reduction)


def icm_scores(hidden: torch.Tensor, weight: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor, lam,
               bias=None) -> torch.Tensor:
    """``S = hidden @ W~.T + b~`` (B x B) in fp32 (fp64 for fp64 hidden): row b is
    output b, column k the mixed classifier of pair k."""
    dtype = _compute_dtype(hidden.dtype)
    w_mixed, b_mixed = mixed_classifier(weight, y_a, y_b, lam, bias, dtype)
    scores = hidden.to(dtype) @ w_mixed.T
    return scores if b_mixed is None else scores + b_mixed


def infinite_class_mixup_loss(hidden: torch.Tensor, weight: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor,
                              lam, bias=None, axes: str = "both", reduction: str = "mean") -> torch.Tensor:
    """Infinite Class Mixup: the contrast of the mixed outputs with the mixed classifiers.

    ``hidden`` (B, D) are the features of the B mixed inputs, ``weight`` (C, D)
    and ``bias`` (C,) the classifier (an ``nn.Linear``'s parameters). Pair k
    gets the mixed classifier ``W~_k = lam_k W[y_a_k] + (1 - lam_k) W[y_b_k]``
    and bias ``b~_k`` mixed alike (:func:`mixed_classifier`); the scores are
    ``S = hidden @ W~.T + b~`` (B x B, no normalisation, no temperature) and the
    loss is ``CE(S, arange(B)) + CE(S.T, arange(B))`` (:func:`icm_loss_from_scores`).

    Computed in fp32 (fp64 for fp64 inputs), returned in hidden's dtype;
    gradients flow to hidden, weight, bias and lam. Only the classes present
    in the batch receive a gradient, and the bias only from the row term.
    """
    scores = icm_scores(hidden, weight, y_a, y_b, lam, bias)
    return icm_loss_from_scores(scores, axes, reduction).to(hidden.dtype)


def infinite_class_mixup_loss_dense(hidden: torch.Tensor, weight: torch.Tensor, y_a: torch.Tensor,
                                    y_b: torch.Tensor, lam, bias=None, axes: str = "both",
                                    reduction: str = "mean") -> torch.Tensor:
    """The same loss the way the method's public code computes it: the C-way logits
    ``Z = hidden @ W.T + b`` (B x C), the dense mixup targets ``Y~`` (B x C) and
    ``S = Z @ Y~.T``. Equal to :func:`infinite_class_mixup_loss` up to rounding,
    at ``B*C*D + B*C*B`` multiply-adds and a (B, C) intermediate; kept as a
    cross-check. (The benchmark's ``dense`` provider is this form in the
    inputs' own dtype, as the public code runs under autocast.)
    """
    dtype = _compute_dtype(hidden.dtype)
    logits = hidden.to(dtype) @ weight.to(dtype).T
    if bias is not None:
        logits = logits + bias.to(dtype)
    lam_t = lam.to(dtype) if isinstance(lam, torch.Tensor) else float(lam)
    targets = mixup_target(y_a, y_b, lam_t, weight.shape[0], 0.0, dtype)
    return icm_loss_from_scores(logits @ targets.T, axes, reduction).to(hidden.dtype)


def ic_regmixup_loss(clean_logits: torch.Tensor, y: torch.Tensor, hidden_mixed: torch.Tensor,
                     weight: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor, lam, *, bias=None,
                     gamma: float = 1.0, axes: str = "both", label_smoothing: float = 0.0,
                     reduction: str = "mean") -> torch.Tensor:
    """IC-RegMixup: ``CE(clean_logits, y) + gamma * ICM(hidden_mixed, ...)``.

    The clean batch's ordinary C-way cross-entropy (what trains the C-way
    softmax used at evaluation) plus ``gamma`` times
    :func:`infinite_class_mixup_loss` of the mixed batch's features; the
    method's code takes two forward passes, one per batch. With
    ``reduction="none"`` both batches must have the same size and the result
    is per sample ``CE_b + gamma * ICM_b``. Returned in clean_logits' dtype.
    """
    dtype = _compute_dtype(clean_logits.dtype)
    clean = F.cross_entropy(clean_logits.to(dtype), y.long(), label_smoothing=label_smoothing, reduction="none")
    mixed = icm_loss_from_scores(icm_scores(hidden_mixed, weight, y_a, y_b, lam, bias), axes, "none").to(dtype)
    if reduction == "none":
        return (clean + gamma * mixed).to(clean_logits.dtype)
    return (reduce_loss(clean, reduction) + gamma * reduce_loss(mixed, reduction)).to(clean_logits.dtype)
