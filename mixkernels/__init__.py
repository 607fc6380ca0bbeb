"""mixkernels: fused kernels for mixup-style training.

Public API (see README.md and design.md): the loss functions in
:mod:`mixkernels.functional`, the modules in :mod:`mixkernels.nn`, the
plain-PyTorch specification in :mod:`mixkernels.reference`, and
:func:`backends` to see what is built and usable here; global-batch
Infinite Class Mixup over ``torch.distributed`` in :mod:`mixkernels.distributed`.
"""

from mixkernels._backend import BackendStatus, backends
from mixkernels.functional import (MixedTargets, cutmix_batch, ic_regmixup_loss, infinite_class_mixup_loss,
                                  mask_mix, mix_batch, mixup_cross_entropy, soft_target_cross_entropy)
from mixkernels.mixup import Mixup, MixupParams
from mixkernels.nn import InfiniteClassMixupLoss, MixupCrossEntropyLoss, SoftTargetCrossEntropy
from mixkernels import distributed, reference

__version__ = "0.1.0"

__all__ = [
    "BackendStatus",
    "InfiniteClassMixupLoss",
    "MixedTargets",
    "Mixup",
    "MixupParams",
    "MixupCrossEntropyLoss",
    "SoftTargetCrossEntropy",
    "backends",
    "cutmix_batch",
    "distributed",
    "ic_regmixup_loss",
    "infinite_class_mixup_loss",
    "mask_mix",
    "mix_batch",
    "mixup_cross_entropy",
    "reference",
    "soft_target_cross_entropy",
]
