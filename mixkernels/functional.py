"""The public functions: input checks, backend choice, reduction.

Every function takes tensors first and options keyword-only, checks its
inputs (errors name the argument) before any kernel runs, resolves
``backend`` (see :mod:`mixkernels._backend`) and returns the loss in the
logits' dtype, reduced in fp32.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple, Optional

import torch

from mixkernels import _backend, _validation, reference
from mixkernels.ops.cutmix_batch import MIX_IMAGES_BACKENDS, mix_images
from mixkernels.ops.infinite_class_mixup import ICM_BACKENDS, PATHS as ICM_PATHS, infinite_class_mixup_loss_rows
from mixkernels.ops.mask_mix import MASK_MIX_BACKENDS, mask_mix_on_backend
from mixkernels.ops.mix_batch import mix_rows, mix_rows_inplace
from mixkernels.ops.mixup_cross_entropy import mixup_cross_entropy_rows
from mixkernels.ops.soft_target_cross_entropy import soft_target_cross_entropy_rows

__all__ = ["ICM_BACKENDS", "MixedTargets", "cutmix_batch", "ic_regmixup_loss", "infinite_class_mixup_loss",
           "mask_mix", "mix_batch", "mixup_cross_entropy", "soft_target_cross_entropy"]


class MixedTargets(NamedTuple):
    """Sparse mixup targets: the sample's label ``y_a``, its partner's ``y_b``
    and ``lam``, the weight of ``y_a`` (float, 0-d or (B,) tensor)."""

    y_a: torch.Tensor
    y_b: torch.Tensor
    lam: object

    def dense(self, num_classes: int, smoothing: float = 0.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dense (B, C) target timm's ``Mixup`` would return."""
        return reference.mixup_target(self.y_a, self.y_b, self.lam, num_classes, smoothing, dtype)


def _unpack_targets(y_a, y_b, lam):
    if isinstance(y_a, MixedTargets):
        if y_b is not None or lam is not None:
            raise TypeError("pass either MixedTargets or y_a, y_b, lam, not both")
        return y_a
    if y_b is None or lam is None:
        raise TypeError("mixup_cross_entropy needs y_a, y_b and lam (or one MixedTargets)")
    return MixedTargets(y_a, y_b, lam)


def _reduce(loss_rows: torch.Tensor, reduction: str, dtype: torch.dtype) -> torch.Tensor:
    return reference.reduce_loss(loss_rows, reduction).to(dtype)


def mixup_cross_entropy(logits: torch.Tensor, y_a, y_b: Optional[torch.Tensor] = None, lam=None, *,
                        label_smoothing: float = 0.0, reduction: str = "mean",
                        backend: str = "auto") -> torch.Tensor:
    """``lam * CE(logits, y_a) + (1 - lam) * CE(logits, y_b)`` with timm's label smoothing.

    Equal to the cross-entropy against timm's dense ``mixup_target`` but
    computed as log-sum-exp minus a two-index dot: no (B, C) target is built.

    Args:
        logits: (B, C) fp32, bf16 or fp16 (any strides).
        y_a, y_b: (B,) integer class indices of each sample and of its partner
            (or pass one :class:`MixedTargets` as ``y_a``).
        lam: weight of ``y_a``: a float, a 0-d tensor or a (B,) tensor in [0, 1].
            Receives a gradient when it is a tensor that requires grad.
        label_smoothing: ``s`` in ``(1 - s) * one_hot + s / C``, applied before mixing.
        reduction: ``"mean"`` (over the batch), ``"sum"`` or ``"none"``.
        backend: ``"auto"``, ``"torch"``, ``"cpu"``, ``"triton"`` or ``"cuda"``.
    """
    y_a, y_b, lam = _unpack_targets(y_a, y_b, lam)
    _validation.check_logits(logits)
    batch, num_classes = logits.shape
    device = logits.device
    _validation.check_labels(y_a, "y_a", batch, num_classes, device)
    _validation.check_labels(y_b, "y_b", batch, num_classes, device)
    _validation.check_lam(lam, "lam", batch, device)
    _validation.check_smoothing(label_smoothing)
    _validation.check_reduction(reduction)
    backend = _backend.resolve_backend(backend, device)
    if backend == "torch":
        return reference.mixup_cross_entropy(logits, y_a, y_b, lam, label_smoothing=float(label_smoothing),
                                             reduction=reduction)
    if logits.dtype == torch.float64:
        raise TypeError(f"logits must be float32, bfloat16 or float16 for backend {backend!r}, got float64")
    loss_rows = mixup_cross_entropy_rows(
        _validation.unit_class_stride(logits), _validation.labels_int64(y_a), _validation.labels_int64(y_b),
        _validation.lam_per_row(lam, batch, device), float(label_smoothing), backend)
    return _reduce(loss_rows, reduction, logits.dtype)


def soft_target_cross_entropy(logits: torch.Tensor, target, *, reduction: str = "mean",
                              backend: str = "auto") -> torch.Tensor:
    """``sum_c -target_c * log_softmax(logits)_c`` per row: timm's ``SoftTargetCrossEntropy``.

    ``target`` is a dense (B, C) tensor (fp32 or the logits' dtype; it receives
    a gradient when it requires grad). A :class:`MixedTargets` is also accepted
    and computed by :func:`mixup_cross_entropy` without building the dense target.
    """
    if isinstance(target, MixedTargets):
        return mixup_cross_entropy(logits, target, reduction=reduction, backend=backend)
    _validation.check_logits(logits)
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor or MixedTargets, got {type(target).__name__}")
    if target.shape != logits.shape:
        raise ValueError(f"target must have the shape of logits {tuple(logits.shape)}, got {tuple(target.shape)}")
    if target.device != logits.device:
        raise ValueError(f"target is on {target.device} but logits are on {logits.device}")
    if not target.is_floating_point():
        raise TypeError(f"target must be a floating-point tensor, got {target.dtype}")
    _validation.check_reduction(reduction)
    backend = _backend.resolve_backend(backend, logits.device)
    if backend == "torch":
        return reference.soft_target_cross_entropy(logits, target, reduction=reduction)
    if logits.dtype == torch.float64:
        raise TypeError(f"logits must be float32, bfloat16 or float16 for backend {backend!r}, got float64")
    if target.dtype not in (torch.float32, logits.dtype):
        raise TypeError(f"target must be float32 or the logits' dtype {logits.dtype} for backend {backend!r}, "
                        f"got {target.dtype}")
    loss_rows = soft_target_cross_entropy_rows(
        _validation.unit_class_stride(logits), _validation.unit_class_stride(target), backend)
    return _reduce(loss_rows, reduction, logits.dtype)


def mix_batch(x: torch.Tensor, perm: torch.Tensor, lam, *, inplace: bool = False,
              backend: str = "auto") -> torch.Tensor:
    """``lam * x + (1 - lam) * x[perm]``, sample by sample, in one kernel launch.

    Args:
        x: (B, ...) fp32, bf16 or fp16 batch of any trailing shape (images,
            token sequences, hidden features); contiguous, channels-last or
            strided. The result keeps x's memory format.
        perm: (B,) permutation: sample ``i`` is mixed with sample ``perm[i]``.
        lam: weight of each sample itself: a float, a 0-d or a (B,) tensor in
            [0, 1]; receives a gradient when it is a tensor that requires grad.
        inplace: write the result into ``x`` (only when no gradient is needed).
            Correct for any permutation, cycles included; the CPU kernel needs
            no copy of the batch, the GPU kernels may use a temporary one.
        backend: ``"auto"``, ``"torch"``, ``"cpu"``, ``"triton"`` or ``"cuda"``.

    Gradients flow to x (through each sample's own slot and its partner's)
    and to lam.
    """
    _validation.check_batch(x)
    batch = x.shape[0]
    _validation.check_permutation(perm, "perm", batch, x.device)
    _validation.check_lam(lam, "lam", batch, x.device)
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace must be a bool, got {type(inplace).__name__}")
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or (isinstance(lam, torch.Tensor) and lam.requires_grad))
    if inplace and needs_grad:
        raise ValueError("inplace=True overwrites x, which autograd needs: use inplace=False, "
                         "or call under torch.no_grad() when no gradient is wanted")
    backend = _backend.resolve_backend(backend, x.device)
    if backend == "torch":
        out = reference.mix_batch(x, perm, lam)
        return x.copy_(out) if inplace else out
    if x.dtype == torch.float64:
        raise TypeError(f"x must be float32, bfloat16 or float16 for backend {backend!r}, got float64")
    lam_rows = _validation.lam_per_row(lam, batch, x.device)
    src = perm.to(torch.int64).contiguous()
    rows, restore, is_view = _validation.samples_as_rows(x)
    if inplace:
        mix_rows_inplace(rows, src, lam_rows, 1.0 - lam_rows, backend)
        if not is_view:  # x's layout needed a contiguous copy: write the result back
            x.copy_(restore(rows))
        return x
    return restore(mix_rows(rows, src, lam_rows, 1.0 - lam_rows, backend))


def cutmix_batch(x: torch.Tensor, perm: torch.Tensor, boxes: torch.Tensor, *, backend: str = "auto"):
    """CutMix: each image with its box pasted from its partner, in one kernel launch.

    Args:
        x: (B, C, H, W) fp32, bf16 or fp16 images (contiguous or channels-last;
            other layouts are copied). The result keeps x's memory format.
        perm: (B,) permutation: image ``i`` takes its box from image ``perm[i]``.
        boxes: (B, 4) integer boxes ``(y0, y1, x0, x1)`` in pixels, half-open:
            rows ``y0 <= h < y1`` and columns ``x0 <= w < x1``, inside the image.
        backend: ``"auto"``, ``"torch"`` or a compiled backend with kernels for
            this op (``mixkernels.ops.cutmix_batch.MIX_IMAGES_BACKENDS``).

    Returns ``(mixed, lam)``: lam[i] = 1 - box area / image area (fp32), the
    weight of image i's own label. Gradient to x.
    """
    _validation.check_batch(x)
    if x.dim() != 4:
        raise ValueError(f"x must be a (B, C, H, W) batch of images, got shape {tuple(x.shape)}")
    batch, _, height, width = x.shape
    _validation.check_permutation(perm, "perm", batch, x.device)
    _validation.check_boxes(boxes, "boxes", batch, height, width, x.device)
    backend = _backend.resolve_backend(backend, x.device, op="cutmix_batch", implemented=MIX_IMAGES_BACKENDS)
    if backend == "torch":
        return reference.cutmix_batch(x, perm, boxes)
    if x.dtype == torch.float64:
        raise TypeError(f"x must be float32, bfloat16 or float16 for backend {backend!r}, got float64")
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        x = x.contiguous()
    boxes64 = boxes.to(torch.int64).contiguous()
    ones = torch.ones(batch, dtype=torch.float32, device=x.device)
    mixed = mix_images(x, perm.to(torch.int64).contiguous(), ones, torch.zeros_like(ones), boxes64, boxes64,
                       backend)
    return mixed, reference.cutmix_lam(boxes64, height, width)


MASK_MODES = ("bilinear", "nearest")


def _check_mask(mask, batch: int, device: torch.device) -> None:
    """A floating-point (batch, 1, h, w) low-resolution mask on x's device."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if not mask.is_floating_point():
        raise TypeError(f"mask must be a floating-point tensor, got {mask.dtype}")
    if mask.dim() != 4 or mask.shape[0] != batch or mask.shape[1] != 1 or mask.shape[2] < 1 or mask.shape[3] < 1:
        raise ValueError(f"mask must have shape ({batch}, 1, h, w) with h, w >= 1, got {tuple(mask.shape)}")
    if mask.device != device:
        raise ValueError(f"mask is on {mask.device} but x is on {device}")


def mask_mix(x: torch.Tensor, perm: torch.Tensor, mask: torch.Tensor, *, mode: str = "bilinear",
             backend: str = "auto") -> torch.Tensor:
    """``m * x + (1 - m) * x[perm]`` with ``m`` the low-resolution mask upsampled
    inside the kernel (AutoMix, SAMix): the (B, 1, H, W) mask is never stored.

    Args:
        x: (B, C, H, W) fp32, bf16 or fp16 images (contiguous or channels-last;
            other layouts are copied). The result keeps x's dtype and memory format.
        perm: (B,) permutation: image ``i`` is mixed with image ``perm[i]``.
        mask: (B, 1, h, w) float mask, fp32 or x's dtype for the compiled
            backends; any values (weights outside [0, 1] extrapolate).
        mode: how ``mask`` is upsampled to (H, W), as ``F.interpolate`` does it:
            ``"bilinear"`` (``align_corners=False``; SAMix) or ``"nearest"`` (AutoMix).
        backend: ``"auto"``, ``"torch"`` or a compiled backend with kernels for
            this op (``mixkernels.ops.mask_mix.MASK_MIX_BACKENDS``).

    Computed in fp32. Gradients flow to x and to the low-resolution mask
    (deterministically: no atomics).
    """
    _validation.check_batch(x)
    if x.dim() != 4:
        raise ValueError(f"x must be a (B, C, H, W) batch of images, got shape {tuple(x.shape)}")
    if 0 in x.shape[1:]:
        raise ValueError(f"x must have at least one channel, row and column, got shape {tuple(x.shape)}")
    batch = x.shape[0]
    _validation.check_permutation(perm, "perm", batch, x.device)
    _check_mask(mask, batch, x.device)
    if not isinstance(mode, str) or mode not in MASK_MODES:
        raise ValueError(f"mode must be one of {MASK_MODES}, got {mode!r}")
    backend = _backend.resolve_backend(backend, x.device, op="mask_mix", implemented=MASK_MIX_BACKENDS)
    if backend == "torch":
        return reference.mask_mix(x, perm, mask, mode)
    if x.dtype == torch.float64:
        raise TypeError(f"x must be float32, bfloat16 or float16 for backend {backend!r}, got float64")
    if mask.dtype not in (torch.float32, x.dtype):
        raise TypeError(f"mask must be float32 or x's dtype {x.dtype} for backend {backend!r}, got {mask.dtype}")
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        x = x.contiguous()
    return mask_mix_on_backend(x, perm.to(torch.int64).contiguous(), mask, mode == "bilinear", backend)


# --------------------------------------------------------------------------- Infinite Class Mixup

# ICM_BACKENDS (from mixkernels.ops.infinite_class_mixup): the compiled
# backends with kernels for infinite_class_mixup_loss; another compiled backend
# asked for by name raises.
ICM_OP = "infinite_class_mixup_loss"


def _unpack_mixed_targets(y_a, y_b, lam, function: str) -> MixedTargets:
    if isinstance(y_a, MixedTargets):
        if y_b is not None or lam is not None:
            raise TypeError("pass either MixedTargets or y_a, y_b, lam, not both")
        return y_a
    if y_b is None or lam is None:
        raise TypeError(f"{function} needs y_a, y_b and lam (or one MixedTargets)")
    return MixedTargets(y_a, y_b, lam)


def _autocast_dtype(device: torch.device) -> Optional[torch.dtype]:
    """The dtype torch.autocast casts matmul inputs to on ``device``, or None outside autocast."""
    try:
        if not torch.is_autocast_enabled(device.type):
            return None
        return torch.get_autocast_dtype(device.type)
    except RuntimeError:  # a device type autocast does not know
        return None


def _cast_for_autocast(t, dtype: Optional[torch.dtype]):
    """As autocast treats a matmul operand: floating tensors other than fp64 go to ``dtype``."""
    if dtype is None or not isinstance(t, torch.Tensor) or t.dtype not in _validation.FLOAT_DTYPES:
        return t
    return t.to(dtype)


def _autocast_off(device: torch.device, autocast_dtype: Optional[torch.dtype]):
    """Inside an autocast region, a region without it: fp32 means fp32, the
    products inside are not cast down again."""
    return torch.autocast(device.type, enabled=False) if autocast_dtype is not None else contextlib.nullcontext()


def _loss_dtype(input_dtype: torch.dtype, autocast_dtype: Optional[torch.dtype]) -> torch.dtype:
    """The input's dtype; fp32 under autocast, where losses (cross_entropy among them) come out in fp32."""
    return torch.float32 if autocast_dtype is not None and input_dtype != torch.float64 else input_dtype


def _icm_loss_on_backend(backend: str, hidden, weight, y_a, y_b, lam, bias, axes: str,
                         reduction: str, path: str = "auto") -> torch.Tensor:
    """The loss in fp32 (fp64 for fp64 inputs), reduced as asked."""
    if backend == "torch":
        return reference.icm_loss_from_scores(reference.icm_scores(hidden, weight, y_a, y_b, lam, bias),
                                              axes, reduction)
    if hidden.dtype == torch.float64:
        raise TypeError(f"hidden must be float32, bfloat16 or float16 for backend {backend!r}, got float64")
    batch = hidden.shape[0]
    loss_rows = infinite_class_mixup_loss_rows(
        hidden, weight, bias, _validation.labels_int64(y_a), _validation.labels_int64(y_b),
        _validation.lam_per_row(lam, batch, hidden.device), axes, path, backend)
    return reference.reduce_loss(loss_rows, reduction)


def _resolve_icm_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """As resolve_backend; "auto" runs fp64 inputs on the reference, which the
    compiled kernels (fp32 arithmetic) do not serve."""
    resolved = _backend.resolve_backend(backend, device, op=ICM_OP, implemented=ICM_BACKENDS)
    return "torch" if backend == "auto" and dtype == torch.float64 else resolved


def _check_icm_path(path) -> None:
    if not isinstance(path, str) or path not in ICM_PATHS:
        raise ValueError(f"path must be one of {ICM_PATHS}, got {path!r}")


def _check_icm_arguments(hidden, weight, y_a, y_b, lam, bias, axes, reduction, hidden_name: str) -> None:
    _validation.check_classifier_inputs(hidden, weight, bias, hidden_name)
    batch, num_classes = hidden.shape[0], weight.shape[0]
    _validation.check_class_labels(y_a, "y_a", batch, num_classes, hidden.device, hidden_name)
    _validation.check_class_labels(y_b, "y_b", batch, num_classes, hidden.device, hidden_name)
    _validation.check_lam_for(lam, "lam", batch, hidden.device, hidden_name)
    _validation.check_axes(axes)
    _validation.check_reduction(reduction)


def infinite_class_mixup_loss(hidden: torch.Tensor, weight: torch.Tensor, y_a, y_b: Optional[torch.Tensor] = None,
                              lam=None, *, bias: Optional[torch.Tensor] = None, axes: str = "both",
                              reduction: str = "mean", backend: str = "auto", path: str = "auto") -> torch.Tensor:
    """Infinite Class Mixup (ICM): the contrast of the mixed outputs with the mixed classifiers.

    Pair k gets the classifier ``W~_k = lam_k W[y_a_k] + (1 - lam_k) W[y_b_k]``
    and bias ``b~_k`` mixed alike; the scores ``S = hidden @ W~.T + b~`` (B x B)
    have the positives on the diagonal, and the loss is
    ``CE(S, arange(B)) + CE(S.T, arange(B))``: per output, its own pair's
    classifier against the other pairs' ("row"), and per classifier, its own
    output against the other outputs ("col"). The (B, C) logits and the dense
    mixed targets are never built.

    Args:
        hidden: (B, D) features of the mixed batch (the input of the
            classifier layer), fp32, bf16 or fp16; any strides.
        weight: (C, D) classifier weight (``nn.Linear.weight``), hidden's dtype and device.
        y_a, y_b: (B,) integer class indices of each mixed sample and of its
            partner (or pass one :class:`MixedTargets` as ``y_a``).
        lam: weight of ``y_a``'s classifier: a float, a 0-d tensor (one lam per
            batch, as the method draws it) or a (B,) tensor (per pair, e.g.
            Remix's label-side lam), in [0, 1]. Receives a gradient when it is a
            tensor that requires grad.
        bias: (C,) classifier bias (``nn.Linear.bias``) or None. It is trained
            by the row term only: the column term is invariant to it.
        axes: ``"both"`` (the method's ``-f``), ``"row"`` (softmax over the mixed
            classifiers, ``-s``) or ``"col"`` (softmax over the outputs, ``-c``).
        reduction: ``"mean"`` (each term averaged over the B pairs, the terms
            summed), ``"sum"`` or ``"none"`` ((B,): sample b's row term plus its
            column term).
        backend: ``"auto"``, ``"torch"`` or a compiled backend with kernels for
            this op (``ICM_BACKENDS``).
        path: how a compiled backend forms the scores, the same loss either
            way: ``"factorised"`` (``hidden @ W~.T + b~``: 3 B*B*D multiply-adds
            forward + backward), ``"logits"`` (gathered from the C-way logits
            ``hidden @ weight.T + bias``: 3 B*C*D) or ``"auto"``, the one with
            fewer multiply-adds (factorised when B <= C). The ``"torch"``
            backend always runs the reference's factorised form.

    Computed in fp32 and returned in hidden's dtype. Under ``torch.autocast``,
    hidden, weight and bias are first cast to the autocast dtype, as
    ``nn.Linear`` would be (the gradients reach the fp32 parameters), and the
    loss comes out in fp32, as autocast's ``cross_entropy`` does.
    """
    y_a, y_b, lam = _unpack_mixed_targets(y_a, y_b, lam, ICM_OP)
    device = hidden.device if isinstance(hidden, torch.Tensor) else None
    autocast_dtype = _autocast_dtype(device) if device is not None else None
    hidden, weight, bias = (_cast_for_autocast(t, autocast_dtype) for t in (hidden, weight, bias))
    _check_icm_arguments(hidden, weight, y_a, y_b, lam, bias, axes, reduction, "hidden")
    _check_icm_path(path)
    backend = _resolve_icm_backend(backend, device, hidden.dtype)
    with _autocast_off(device, autocast_dtype):
        loss = _icm_loss_on_backend(backend, hidden, weight, y_a, y_b, lam, bias, axes, reduction, path)
    return loss.to(_loss_dtype(hidden.dtype, autocast_dtype))


def ic_regmixup_loss(clean_logits: torch.Tensor, y: torch.Tensor, hidden_mixed: torch.Tensor, weight: torch.Tensor,
                     y_a, y_b: Optional[torch.Tensor] = None, lam=None, *, bias: Optional[torch.Tensor] = None,
                     gamma: float = 1.0, axes: str = "both", label_smoothing: float = 0.0,
                     reduction: str = "mean", backend: str = "auto") -> torch.Tensor:
    """IC-RegMixup: ``CE(clean_logits, y) + gamma * infinite_class_mixup_loss(hidden_mixed, ...)``.

    The cross-entropy of the clean batch's C-way logits (which trains the
    softmax used at evaluation: ICM alone never does) plus ``gamma`` times ICM
    on the mixed batch's features, as the method's paper does it (two forward
    passes; alpha = 20 there). ``weight``/``bias`` are the layer that produced
    ``clean_logits``.

    Args:
        clean_logits: (N, C) logits of the clean batch.
        y: (N,) its integer labels.
        hidden_mixed, weight, y_a, y_b, lam, bias, axes: as in
            :func:`infinite_class_mixup_loss` (``MixedTargets`` as ``y_a`` too).
        gamma: weight of the ICM term (>= 0; the method's ``-g``, default 1).
        label_smoothing: for the clean cross-entropy (0 in the method).
        reduction: ``"mean"``: the clean term averaged over N plus gamma times
            ICM's mean; ``"sum"``; ``"none"``: per sample ``CE_b + gamma * ICM_b``
            (needs N == B).
        backend: for both terms; ``"auto"`` picks for each its fastest path.

    Returned in clean_logits' dtype (fp32 under ``torch.autocast``).
    """
    y_a, y_b, lam = _unpack_mixed_targets(y_a, y_b, lam, "ic_regmixup_loss")
    _validation.check_logits(clean_logits, "clean_logits")
    _validation.check_class_labels(y, "y", clean_logits.shape[0], clean_logits.shape[1], clean_logits.device,
                                   "clean_logits")
    _validation.check_smoothing(label_smoothing)
    _validation.check_gamma(gamma)
    device = hidden_mixed.device if isinstance(hidden_mixed, torch.Tensor) else None
    autocast_dtype = _autocast_dtype(device) if device is not None else None
    hidden_mixed, weight, bias = (_cast_for_autocast(t, autocast_dtype) for t in (hidden_mixed, weight, bias))
    _check_icm_arguments(hidden_mixed, weight, y_a, y_b, lam, bias, axes, reduction, "hidden_mixed")
    if clean_logits.shape[1] != weight.shape[0]:
        raise ValueError(f"clean_logits must have weight's {weight.shape[0]} classes, got shape "
                         f"{tuple(clean_logits.shape)}")
    if clean_logits.device != device:
        raise ValueError(f"clean_logits is on {clean_logits.device} but hidden_mixed is on {device}")
    if reduction == "none" and clean_logits.shape[0] != hidden_mixed.shape[0]:
        raise ValueError(f"reduction='none' needs clean_logits and hidden_mixed of one batch size, got "
                         f"{clean_logits.shape[0]} and {hidden_mixed.shape[0]}")
    icm_backend = _resolve_icm_backend(backend, device, hidden_mixed.dtype)
    clean = mixup_cross_entropy(clean_logits, y, y, 1.0, label_smoothing=label_smoothing, reduction=reduction,
                                backend=backend)
    with _autocast_off(device, autocast_dtype):
        mixed = _icm_loss_on_backend(icm_backend, hidden_mixed, weight, y_a, y_b, lam, bias, axes, reduction)
    compute = torch.float64 if clean_logits.dtype == torch.float64 else torch.float32
    return (clean.to(compute) + float(gamma) * mixed.to(compute)).to(_loss_dtype(clean_logits.dtype, autocast_dtype))
