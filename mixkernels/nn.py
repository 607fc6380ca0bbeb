"""Loss modules mirroring :mod:`mixkernels.functional`."""

from __future__ import annotations

import numbers

import torch
from torch import nn

from mixkernels import _validation, functional

__all__ = ["InfiniteClassMixupLoss", "MixupCrossEntropyLoss", "SoftTargetCrossEntropy"]


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


class InfiniteClassMixupLoss(nn.Module):
    """Infinite Class Mixup with the model's own classifier layer:
    ``weight * infinite_class_mixup_loss(hidden, classifier.weight, ..., bias=classifier.bias)``.

    Call as ``loss(hidden, y_a, y_b, lam)`` or ``loss(hidden, MixedTargets(...))``,
    where ``hidden`` (B, D) is what the mixed batch feeds the classifier (the
    backbone's pooled features, e.g. timm's ``forward_head(..., pre_logits=True)``).

    The loss uses the classifier but does not own it: the classifier is the
    model's, and it is not registered here as a submodule. So the loss has no
    parameters and an empty ``state_dict``; putting it inside the model (or an
    optimizer over ``loss.parameters()``) adds nothing twice to checkpoints,
    optimizers or DDP; ``loss.to(...)`` moves nothing; and each call reads the
    classifier's current parameters, wherever the model has moved them.
    Point it at another layer with ``loss.classifier = layer``.

    Args:
        classifier: the model's final layer, an ``nn.Linear`` (or any module
            with a (C, D) ``weight`` and a (C,) ``bias`` or ``None``).
        axes: ``"both"``, ``"row"`` or ``"col"`` (see :func:`~mixkernels.infinite_class_mixup_loss`).
        weight: the factor the loss is multiplied by (the ICM term's weight in
            a sum of losses), not a class weight.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        backend: as for :func:`~mixkernels.infinite_class_mixup_loss`.
    """

    def __init__(self, classifier: nn.Module, axes: str = "both", weight: float = 1.0, reduction: str = "mean",
                 backend: str = "auto"):
        super().__init__()
        self.classifier = classifier
        _validation.check_axes(axes)
        _validation.check_reduction(reduction)
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
            raise TypeError(f"weight must be a float (the loss's factor), got {type(weight).__name__}")
        self.axes = axes
        self.weight = float(weight)
        self.reduction = reduction
        self.backend = backend

    @property
    def classifier(self) -> nn.Module:
        return self.__dict__["_classifier"]

    def __setattr__(self, name, value):
        if name == "classifier":
            if not isinstance(value, nn.Module) or not isinstance(getattr(value, "weight", None), torch.Tensor):
                raise TypeError(f"classifier must be an nn.Linear (a module with a weight tensor), "
                                f"got {type(value).__name__}")
            # A plain attribute, not a submodule: the model owns the classifier.
            self.__dict__["_classifier"] = value
            return
        super().__setattr__(name, value)

    def forward(self, hidden: torch.Tensor, y_a, y_b=None, lam=None) -> torch.Tensor:
        classifier = self.classifier
        loss = functional.infinite_class_mixup_loss(
            hidden, classifier.weight, y_a, y_b, lam, bias=getattr(classifier, "bias", None), axes=self.axes,
            reduction=self.reduction, backend=self.backend)
        return loss if self.weight == 1.0 else loss * self.weight

    def extra_repr(self) -> str:
        weight = self.classifier.weight
        return (f"classifier={type(self.classifier).__name__}{tuple(weight.shape)} (not owned), axes={self.axes!r}, "
                f"weight={self.weight}, reduction={self.reduction!r}, backend={self.backend!r}")
