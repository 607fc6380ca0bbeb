"""Loss modules mirroring :mod:`mixkernels.functional`."""

from __future__ import annotations

import torch
from torch import nn

from mixkernels import functional

__all__ = ["MixupCrossEntropyLoss", "SoftTargetCrossEntropy"]


class MixupCrossEntropyLoss(nn.Module):
    """``lam * CE(z, y_a) + (1 - lam) * CE(z, y_b)``; call as ``loss(logits, y_a, y_b, lam)``
    or ``loss(logits, MixedTargets(...))``."""

    def __init__(self, label_smoothing: float = 0.0, reduction: str = "mean", backend: str = "auto"):
        super().__init__()
        self.label_smoothing = label_smoothing
        self.reduction = reduction
        self.backend = backend

    def forward(self, logits: torch.Tensor, y_a, y_b=None, lam=None) -> torch.Tensor:
        return functional.mixup_cross_entropy(logits, y_a, y_b, lam, label_smoothing=self.label_smoothing,
                                              reduction=self.reduction, backend=self.backend)

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}, reduction={self.reduction!r}, backend={self.backend!r}"


class SoftTargetCrossEntropy(nn.Module):
    """Drop-in for ``timm.loss.SoftTargetCrossEntropy``: dense (B, C) targets,
    or :class:`~mixkernels.MixedTargets` computed without a dense target."""

    def __init__(self, reduction: str = "mean", backend: str = "auto"):
        super().__init__()
        self.reduction = reduction
        self.backend = backend

    def forward(self, logits: torch.Tensor, target) -> torch.Tensor:
        return functional.soft_target_cross_entropy(logits, target, reduction=self.reduction, backend=self.backend)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, backend={self.backend!r}"
