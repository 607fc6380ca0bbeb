"""Mixup: a drop-in for timm's ``Mixup`` that mixes the whole batch in one launch.

timm's ``Mixup`` mixes the batch with tensor ops in "batch" mode but with a
Python loop over samples in "pair" and "elem" mode. This class takes timm's
constructor arguments and defaults and returns what timm returns (the batch,
mixed in place, and dense smoothed targets), but

* samples every per-sample lam, box and mixup/cutmix switch as tensors on
  the batch's device (no host synchronisation in "pair" and "elem" mode),
* mixes the batch in one kernel launch in every mode: a sample either
  interpolates with its partner or takes the partner's box
  (``mixkernels::mix_images`` / ``mix_rows``), in place without a copy of the
  batch,
* can return ``MixedTargets(y_a, y_b, lam)`` for the fused losses instead of
  dense (B, C) targets (``return_sparse=True``),
* can pair samples at random (``pairing="random"``) instead of timm's
  ``i <-> B - 1 - i``.

Sampling and mixing are separate steps: ``sample()`` draws a
:class:`MixupParams`, ``mix()`` applies it; ``__call__`` does both.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Union

import torch

from mixkernels import _backend, _validation, reference
from mixkernels.functional import MixedTargets
from mixkernels.ops.cutmix_batch import MIX_IMAGES_BACKENDS, mix_images_inplace
from mixkernels.ops.mix_batch import MIX_ROWS_BACKENDS, mix_rows_inplace

__all__ = ["Mixup", "MixupParams"]

MODES = ("batch", "pair", "elem")
PAIRINGS = ("reverse", "random")


class MixupParams(NamedTuple):
    """One draw of the mixing parameters for a batch.

    ``lam`` is the weight of each sample's own label after box correction: a
    Python float in "batch" mode (as timm), else a (B,) fp32 tensor.
    ``mix_lam`` is the interpolation weight of mixup samples (before any box
    correction; 1 for unmixed samples). ``use_cutmix`` (B,) bool,
    ``boxes`` (B, 4) int64 ``(y0, y1, x0, x1)`` (empty for other samples) and
    ``perm`` (B,) int64, the partner of each sample.
    """

    lam: Union[float, torch.Tensor]
    mix_lam: Union[float, torch.Tensor]
    use_cutmix: torch.Tensor
    boxes: torch.Tensor
    perm: torch.Tensor


class Mixup:
    """Mixup/CutMix per batch, pair or element, with timm's arguments and defaults.

    Args (as timm's ``Mixup``):
        mixup_alpha: mixup is active if > 0; lam ~ Beta(mixup_alpha, mixup_alpha).
        cutmix_alpha: cutmix is active if > 0.
        cutmix_minmax: (min, max) box size ratios; forces cutmix on (alpha 1).
        prob: probability of mixing per batch (or per element / pair).
        switch_prob: probability of cutmix instead of mixup when both are active.
        mode: ``"batch"``, ``"pair"`` or ``"elem"``.
        correct_lam: recompute lam from the box area after clipping.
        label_smoothing: smoothing of the dense targets.
        num_classes: number of classes of the dense targets.

    Keyword-only additions:
        pairing: ``"reverse"`` (timm: sample i with B - 1 - i) or ``"random"``
            (a random permutation; a random perfect matching in "pair" mode).
        return_sparse: return ``MixedTargets`` instead of dense targets.
        backend: backend of the mixing kernel (see ``mixkernels.backends()``).
    """

    def __init__(self, mixup_alpha=1., cutmix_alpha=0., cutmix_minmax=None, prob=1.0, switch_prob=0.5,
                 mode='batch', correct_lam=True, label_smoothing=0.1, num_classes=1000, *,
                 pairing: str = "reverse", return_sparse: bool = False, backend: str = "auto"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if pairing not in PAIRINGS:
            raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.cutmix_minmax = cutmix_minmax
        if self.cutmix_minmax is not None:
            assert len(self.cutmix_minmax) == 2  # timm's check, timm's error
            self.cutmix_alpha = 1.0  # as timm: minmax boxes need cutmix on
        self.mix_prob = prob
        self.switch_prob = switch_prob
        self.label_smoothing = label_smoothing
        self.num_classes = num_classes
        self.mode = mode
        self.correct_lam = correct_lam
        self.mixup_enabled = True  # the train loop may switch mixing off, as with timm
        self.pairing = pairing
        self.return_sparse = return_sparse
        self.backend = backend

    # ------------------------------------------------------------------ sampling

    def _check_active(self):
        if not (self.mixup_alpha > 0. or self.cutmix_alpha > 0.):
            raise AssertionError("One of mixup_alpha > 0., cutmix_alpha > 0., cutmix_minmax not None should be true.")

    def _partners(self, batch: int, device) -> torch.Tensor:
        if self.pairing == "reverse":
            return torch.arange(batch - 1, -1, -1, device=device)
        order = torch.randperm(batch, device=device)
        if self.mode != "pair":
            return order
        # A random perfect matching: consecutive entries of a shuffle are partners.
        perm = torch.empty_like(order)
        perm[order[0::2]] = order[1::2]
        perm[order[1::2]] = order[0::2]
        return perm

    def _box_sizes_and_corners(self, lam: torch.Tensor, height: int, width: int):
        """Boxes for cutmix samples, on lam's device and in lam's precision:
        ``rand_bbox`` (square-ish box of area 1 - lam around a uniform centre)
        or ``rand_bbox_minmax`` (uniform size ratios in [min, max))."""
        n, device = lam.shape[0], lam.device
        if self.cutmix_minmax is not None:
            lo, hi = self.cutmix_minmax
            cut_h = _randint(int(height * lo), int(height * hi), n, device)
            cut_w = _randint(int(width * lo), int(width * hi), n, device)
            y0 = _randint(0, height - cut_h + 1, n, device)
            x0 = _randint(0, width - cut_w + 1, n, device)
            return torch.stack([y0, y0 + cut_h, x0, x0 + cut_w], dim=1)
        ratio = torch.sqrt(1 - lam)
        cut_h = torch.floor(height * ratio).to(torch.int64)
        cut_w = torch.floor(width * ratio).to(torch.int64)
        cy = _randint(0, height, n, device)
        cx = _randint(0, width, n, device)
        return torch.stack([(cy - cut_h // 2).clamp(0, height), (cy + (cut_h + 1) // 2).clamp(0, height),
                            (cx - cut_w // 2).clamp(0, width), (cx + (cut_w + 1) // 2).clamp(0, width)], dim=1)

    def _corrected_lam(self, lam: torch.Tensor, boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
        if not (self.correct_lam or self.cutmix_minmax is not None):
            return lam
        area = (boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2])
        return (1.0 - area.to(torch.float64) / float(height * width)).to(lam.dtype)

    def _sample_per_elem(self, n: int, device):
        """(mix_lam fp32, use_cutmix) for n samples or pairs, as timm's ``_params_per_elem``."""
        lam = torch.ones(n, dtype=torch.float32, device=device)
        use_cutmix = torch.zeros(n, dtype=torch.bool, device=device)
        if not self.mixup_enabled:
            return lam, use_cutmix
        self._check_active()
        if self.mixup_alpha > 0. and self.cutmix_alpha > 0.:
            use_cutmix = torch.rand(n, device=device) < self.switch_prob
            lam_mix = torch.where(use_cutmix, _beta(self.cutmix_alpha, n, device), _beta(self.mixup_alpha, n, device))
        elif self.mixup_alpha > 0.:
            lam_mix = _beta(self.mixup_alpha, n, device)
        else:
            use_cutmix = torch.ones(n, dtype=torch.bool, device=device)
            lam_mix = _beta(self.cutmix_alpha, n, device)
        lam = torch.where(torch.rand(n, device=device) < self.mix_prob, lam_mix.to(torch.float32), lam)
        return lam, use_cutmix

    def sample(self, batch: int, image_size=None, device="cpu") -> MixupParams:
        """Draw the parameters for a batch of ``batch`` samples of spatial size
        ``image_size = (H, W)`` (needed when cutmix is active)."""
        device = torch.device(device)
        perm = self._partners(batch, device)
        height, width = image_size if image_size is not None else (0, 0)
        if self.mode == "batch":
            return self._sample_batch_mode(batch, height, width, perm)
        n = batch // 2 if self.mode == "pair" else batch
        mix_lam, use_cutmix = self._sample_per_elem(n, device)
        cut = use_cutmix & (mix_lam != 1.0)
        if bool(self.cutmix_alpha > 0.) and image_size is None:
            raise ValueError("image_size=(H, W) is needed to sample cutmix boxes")
        boxes = torch.zeros(n, 4, dtype=torch.int64, device=device)
        lam = mix_lam
        if self.cutmix_alpha > 0.:
            boxes = torch.where(cut.unsqueeze(1), self._box_sizes_and_corners(mix_lam, height, width), boxes)
            lam = torch.where(cut, self._corrected_lam(mix_lam, boxes, height, width), mix_lam)
        if self.mode == "pair":  # pair (i, B - 1 - i) shares its draw; with random pairing, i and perm[i]
            first = torch.arange(n, device=device) if self.pairing == "reverse" else _pair_leaders(perm)
            per_sample = torch.empty(batch, dtype=torch.int64, device=device)
            per_sample[first] = torch.arange(n, device=device)
            per_sample[perm[first]] = torch.arange(n, device=device)
            mix_lam, lam, cut, boxes = mix_lam[per_sample], lam[per_sample], cut[per_sample], boxes[per_sample]
        return MixupParams(lam, mix_lam, cut, boxes, perm)

    def _sample_batch_mode(self, batch, height, width, perm) -> MixupParams:
        """One draw for the whole batch, as timm's ``_params_per_batch`` (host
        scalars drawn with torch's CPU generator: nothing waits on the device)."""
        lam, use_cutmix = 1.0, False
        if self.mixup_enabled and float(torch.rand(())) < self.mix_prob:
            self._check_active()
            if self.mixup_alpha > 0. and self.cutmix_alpha > 0.:
                use_cutmix = float(torch.rand(())) < self.switch_prob
                lam = float(_beta(self.cutmix_alpha if use_cutmix else self.mixup_alpha, 1, "cpu")[0])
            elif self.mixup_alpha > 0.:
                lam = float(_beta(self.mixup_alpha, 1, "cpu")[0])
            else:
                use_cutmix = True
                lam = float(_beta(self.cutmix_alpha, 1, "cpu")[0])
        box = (0, 0, 0, 0)
        mix_lam = lam
        if use_cutmix and lam != 1.0:
            box_t = self._box_sizes_and_corners(torch.tensor([lam], dtype=torch.float64), height, width)
            box = tuple(int(v) for v in box_t[0])
            lam = float(self._corrected_lam(torch.tensor([lam], dtype=torch.float64), box_t, height, width)[0])
        device = perm.device
        boxes = torch.tensor([box], dtype=torch.int64).expand(batch, 4).to(device, non_blocking=True)
        cut = torch.full((batch,), bool(use_cutmix and mix_lam != 1.0), device=device)
        return MixupParams(lam, mix_lam, cut, boxes, perm)

    # -------------------------------------------------------------------- mixing

    def _weights(self, params: MixupParams, batch: int, device):
        """(w_self, w_src) fp32 per sample: cutmix samples keep themselves
        outside the box (1, 0); mixup samples interpolate, rounding the weights
        as timm's arithmetic does (a float lam in "batch" mode, fp32 per sample
        otherwise)."""
        if isinstance(params.mix_lam, float):
            w_self = torch.full((batch,), params.mix_lam, dtype=torch.float32, device=device)
            w_src = torch.full((batch,), 1.0 - params.mix_lam, dtype=torch.float32, device=device)
        else:
            w_self = params.mix_lam.to(torch.float32)
            w_src = 1.0 - w_self
        cut = params.use_cutmix
        return torch.where(cut, 1.0, w_self).contiguous(), torch.where(cut, 0.0, w_src).contiguous()

    def mix(self, x: torch.Tensor, target: torch.Tensor, params: MixupParams):
        """Mix ``x`` in place with ``params``; return ``(x, targets)`` as timm does."""
        _validation.check_batch(x)
        batch = x.shape[0]
        device = x.device
        backend = _backend.resolve_backend(self.backend, device, op="Mixup",
                                           implemented=MIX_IMAGES_BACKENDS if x.dim() == 4 else MIX_ROWS_BACKENDS)
        perm = params.perm.to(torch.int64).contiguous()
        w_self, w_src = self._weights(params, batch, device)
        has_cutmix = bool(self.cutmix_alpha > 0.)
        if has_cutmix and x.dim() != 4:
            raise ValueError(f"cutmix needs a (B, C, H, W) batch of images, got shape {tuple(x.shape)}")
        with torch.no_grad():
            if backend == "torch":
                x.copy_(_reference_mix(x, perm, w_self, w_src, params.boxes))
            elif x.dim() == 4:
                images = x if (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)) \
                    else x.contiguous()
                boxes = params.boxes.to(torch.int64).contiguous()
                mix_images_inplace(images, perm, w_self, w_src, boxes, boxes, backend)
                if images is not x:
                    x.copy_(images)
            else:
                rows, restore, is_view = _validation.samples_as_rows(x)
                mix_rows_inplace(rows, perm, w_self, w_src, backend)
                if not is_view:
                    x.copy_(restore(rows))
        return x, self._targets(target, params, x.dtype)

    def _targets(self, target: torch.Tensor, params: MixupParams, dtype: torch.dtype):
        lam = params.lam
        if self.return_sparse:
            return MixedTargets(target, target[params.perm], lam)
        if not isinstance(lam, float):
            lam = lam.to(dtype).unsqueeze(1)  # timm: torch.tensor(lam_batch, dtype=x.dtype).unsqueeze(1)
        return _dense_mixup_target(target, params.perm, self.num_classes, lam, self.label_smoothing,
                                   reverse=self.pairing == "reverse")

    def __call__(self, x: torch.Tensor, target: torch.Tensor):
        assert len(x) % 2 == 0, 'Batch size should be even when using this'  # timm's restriction and error
        image_size = tuple(x.shape[-2:]) if x.dim() == 4 else None
        params = self.sample(len(x), image_size, x.device)
        return self.mix(x, target, params)


def _beta(alpha: float, n: int, device) -> torch.Tensor:
    concentration = torch.full((n,), float(alpha), dtype=torch.float64, device=device)
    return torch.distributions.Beta(concentration, concentration).sample()


def _randint(low, high, n: int, device) -> torch.Tensor:
    """Uniform integers in [low, high) per sample (high may be a tensor)."""
    span = (high - low) if isinstance(high, torch.Tensor) else torch.full((n,), high - low, device=device)
    return low + torch.floor(torch.rand(n, dtype=torch.float64, device=device) * span).to(torch.int64)


def _pair_leaders(perm: torch.Tensor) -> torch.Tensor:
    """The smaller index of each pair of an involution without fixed points."""
    index = torch.arange(perm.shape[0], device=perm.device)
    return index[index < perm]


def _reference_mix(x, perm, w_self, w_src, boxes):
    """The mix in plain PyTorch (backend='torch'): interpolation, then boxes."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    partner = x[perm]
    mixed = (x * w_self.to(x.dtype).view(shape) + partner * w_src.to(x.dtype).view(shape)) \
        if x.dtype == torch.float32 else \
        (x.float() * w_self.view(shape) + partner.float() * w_src.view(shape)).to(x.dtype)
    if x.dim() == 4:
        inside = reference.cutmix_box_mask(boxes, x.shape[2], x.shape[3]).unsqueeze(1)
        mixed = torch.where(inside, partner, mixed)
    return mixed


def _dense_mixup_target(target, perm, num_classes, lam, smoothing, reverse):
    """timm's ``mixup_target``: smoothed one-hots of each label and its partner's, mixed by lam."""
    off_value = smoothing / num_classes
    on_value = 1. - smoothing + off_value
    y1 = torch.full((target.shape[0], num_classes), off_value, device=target.device)
    y1 = y1.scatter_(1, target.long().view(-1, 1), on_value)
    y2 = y1.flip(0) if reverse else y1[perm]
    return y1 * lam + y2 * (1. - lam)
