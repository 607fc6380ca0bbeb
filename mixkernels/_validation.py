"""Input checks shared by every public function.

Each check raises a ``TypeError``/``ValueError``/``IndexError`` naming the
argument before any kernel runs. Checks on tensor *values* (label ranges, lam
in [0, 1]) run eagerly on CPU tensors; on CUDA tensors they are queued with
``torch._assert_async`` so that no host synchronisation happens (the error
then surfaces at the next synchronising call), and under ``torch.compile``
tracing they are skipped (values are not known while tracing).
"""

from __future__ import annotations

import numbers

import torch

from mixkernels.reference import ICM_AXES

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
REDUCTIONS = ("none", "mean", "sum")


def _tracing() -> bool:
    return torch.compiler.is_compiling()


def check_reduction(reduction) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_logits(logits, name: str = "logits") -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(f"{name} must be 2-D (batch, num_classes), got shape {tuple(logits.shape)}")
    if logits.dtype not in FLOAT_DTYPES and logits.dtype != torch.float64:
        raise TypeError(f"{name} must be float32, bfloat16 or float16 (float64 on backend='torch'), "
                        f"got {logits.dtype}")
    if logits.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(logits.shape)})")
    if logits.shape[1] == 0:
        raise ValueError(f"{name} has no classes (shape {tuple(logits.shape)})")


def check_labels(y, name: str, batch: int, num_classes: int, device: torch.device) -> None:
    """(batch,) integer class indices in [0, num_classes), on the logits' device."""
    check_class_labels(y, name, batch, num_classes, device, "logits")


def check_lam(lam, name: str, batch: int, device: torch.device) -> None:
    """``lam`` is a float, a 0-d tensor or a (batch,) tensor with values in [0, 1]."""
    if isinstance(lam, bool) or not isinstance(lam, (numbers.Real, torch.Tensor)):
        raise TypeError(f"{name} must be a float, a 0-d tensor or a ({batch},) tensor, got {type(lam).__name__}")
    if isinstance(lam, numbers.Real):
        if not 0.0 <= float(lam) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {lam}")
        return
    if not lam.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {lam.dtype}")
    if lam.dim() != 0 and lam.shape != (batch,):
        raise ValueError(f"{name} must be 0-d or have shape ({batch},), got {tuple(lam.shape)}")
    if lam.device != device:
        raise ValueError(f"{name} is on {lam.device} but logits are on {device}")
    if _tracing():
        return
    in_range = (lam >= 0) & (lam <= 1)  # NaN fails both
    if lam.device.type == "cpu":
        if not bool(in_range.all()):
            raise ValueError(f"{name} must be in [0, 1], got values from {float(lam.min())} to {float(lam.max())}"
                             if not torch.isnan(lam).any() else f"{name} contains NaN")
    else:
        torch._assert_async(in_range.all(), f"mixkernels: {name} has values outside [0, 1]")


def check_smoothing(label_smoothing) -> None:
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real):
        raise TypeError(f"label_smoothing must be a float, got {type(label_smoothing).__name__}")
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")


def lam_per_row(lam, batch: int, device: torch.device) -> torch.Tensor:
    """``lam`` as a contiguous fp32 (batch,) tensor; differentiable when lam requires grad."""
    if isinstance(lam, torch.Tensor):
        return lam.to(torch.float32).expand(batch).contiguous()
    return torch.full((batch,), float(lam), dtype=torch.float32, device=device)


def labels_int64(y: torch.Tensor) -> torch.Tensor:
    return y.to(torch.int64).contiguous()


def unit_class_stride(t: torch.Tensor) -> torch.Tensor:
    """Kernels accept any row stride but need unit stride along classes."""
    return t if t.stride(1) == 1 else t.contiguous()


def check_batch(x, name: str = "x") -> None:
    """A batch of samples: a float tensor with a non-empty first dimension."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0:
        raise ValueError(f"{name} must have a batch dimension, got a 0-d tensor")
    if x.dtype not in FLOAT_DTYPES and x.dtype != torch.float64:
        raise TypeError(f"{name} must be float32, bfloat16 or float16 (float64 on backend='torch'), got {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)})")


def check_permutation(perm, name: str, batch: int, device: torch.device) -> None:
    """``perm`` is a permutation of ``range(batch)``: checked exactly on CPU
    tensors, queued with ``torch._assert_async`` on GPU tensors."""
    if not isinstance(perm, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of sample indices, got {type(perm).__name__}")
    if perm.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"{name} must hold integer sample indices, got {perm.dtype}")
    if perm.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},) to match the batch, got {tuple(perm.shape)}")
    if perm.device != device:
        raise ValueError(f"{name} is on {perm.device} but the batch is on {device}")
    if _tracing():
        return
    is_permutation = (torch.sort(perm.to(torch.int64)).values == torch.arange(batch, device=perm.device)).all()
    if perm.device.type == "cpu":
        if not bool(is_permutation):
            raise ValueError(f"{name} must be a permutation of range({batch})")
    else:
        torch._assert_async(is_permutation, f"mixkernels: {name} is not a permutation")


def samples_as_rows(x: torch.Tensor):
    """``(rows, restore, is_view)``: a (B, N) view of the batch with unit stride
    along N, a function that gives a (B, N) result x's shape and memory
    format, and whether ``rows`` shares x's memory.

    Each sample is one dense block in memory for contiguous and channels-last
    batches (and any other order of the sample's dimensions): the kernels mix
    those blocks element by element, which is the same for every order, so the
    result keeps x's layout. Other layouts are copied to a contiguous batch.
    """
    batch = x.shape[0]
    if x.dim() == 1:
        return x.view(batch, 1), lambda rows: rows.view(batch), True
    # Sample dimensions from the largest stride to the smallest.
    order = sorted(range(1, x.dim()), key=lambda d: -x.stride(d))
    permuted = x.permute(0, *order)
    is_view = permuted[0].is_contiguous()
    if not is_view:
        permuted = permuted.contiguous()
    sample_numel = permuted[0].numel()
    if permuted.is_contiguous():
        # A view: its backward is a view too (as_strided's would allocate and
        # zero-fill a batch-sized buffer in every backward).
        rows = permuted.view(batch, sample_numel)
    else:  # dense samples spaced wider than one sample (a slice of a larger batch)
        rows = permuted.as_strided((batch, sample_numel), (permuted.stride(0), 1))
    inverse = [0] * x.dim()
    for position, dim in enumerate([0, *order]):
        inverse[dim] = position

    def restore(result_rows: torch.Tensor) -> torch.Tensor:
        return result_rows.view(permuted.shape).permute(*inverse)

    return rows, restore, is_view


def check_boxes(boxes, name: str, batch: int, height: int, width: int, device: torch.device) -> None:
    """(batch, 4) integer boxes ``(y0, y1, x0, x1)`` with 0 <= y0 <= y1 <= height
    and 0 <= x0 <= x1 <= width (eager on CPU tensors, queued on GPU tensors)."""
    if not isinstance(boxes, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of (y0, y1, x0, x1) boxes, got {type(boxes).__name__}")
    if boxes.is_floating_point() or boxes.is_complex() or boxes.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer pixel coordinates, got {boxes.dtype}")
    if boxes.shape != (batch, 4):
        raise ValueError(f"{name} must have shape ({batch}, 4), got {tuple(boxes.shape)}")
    if boxes.device != device:
        raise ValueError(f"{name} is on {boxes.device} but the batch is on {device}")
    if _tracing():
        return
    y0, y1, x0, x1 = boxes.to(torch.int64).unbind(1)
    valid = ((0 <= y0) & (y0 <= y1) & (y1 <= height) & (0 <= x0) & (x0 <= x1) & (x1 <= width)).all()
    if boxes.device.type == "cpu":
        if not bool(valid):
            bad = int((~((0 <= y0) & (y0 <= y1) & (y1 <= height) & (0 <= x0) & (x0 <= x1) & (x1 <= width)))
                      .nonzero()[0, 0])
            raise ValueError(f"{name}[{bad}] = {tuple(boxes[bad].tolist())} is not a box inside the "
                             f"{height}x{width} image (need 0 <= y0 <= y1 <= {height}, 0 <= x0 <= x1 <= {width})")
    else:
        torch._assert_async(valid, f"mixkernels: {name} has boxes outside the image")


# --------------------------------------------------------------------------- Infinite Class Mixup

def check_axes(axes) -> None:
    if not isinstance(axes, str) or axes not in ICM_AXES:
        raise ValueError(f"axes must be one of {ICM_AXES}, got {axes!r}")


def check_classifier_inputs(hidden, weight, bias, hidden_name: str = "hidden") -> None:
    """``hidden`` (B, D) features, ``weight`` (C, D) and ``bias`` (C,) or None of
    the classifier: one floating dtype and one device, B, C and D at least 1."""
    if not isinstance(hidden, torch.Tensor):
        raise TypeError(f"{hidden_name} must be a torch.Tensor, got {type(hidden).__name__}")
    if hidden.dim() != 2:
        raise ValueError(f"{hidden_name} must be 2-D (batch, features), got shape {tuple(hidden.shape)}")
    if hidden.dtype not in FLOAT_DTYPES and hidden.dtype != torch.float64:
        raise TypeError(f"{hidden_name} must be float32, bfloat16 or float16 (float64 on backend='torch'), "
                        f"got {hidden.dtype}")
    if hidden.shape[0] == 0:
        raise ValueError(f"{hidden_name} is an empty batch (shape {tuple(hidden.shape)})")
    if hidden.shape[1] == 0:
        raise ValueError(f"{hidden_name} has no features (shape {tuple(hidden.shape)})")
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    features = hidden.shape[1]
    if weight.dim() != 2 or weight.shape[1] != features or weight.shape[0] == 0:
        raise ValueError(f"weight must have shape (num_classes, {features}) with num_classes >= 1 to match "
                         f"{hidden_name} {tuple(hidden.shape)}, got {tuple(weight.shape)}")
    if weight.dtype != hidden.dtype:
        raise TypeError(f"weight must have {hidden_name}'s dtype {hidden.dtype}, got {weight.dtype} "
                        f"(under torch.autocast both are cast to the autocast dtype)")
    if weight.device != hidden.device:
        raise ValueError(f"weight is on {weight.device} but {hidden_name} is on {hidden.device}")
    if bias is None:
        return
    if not isinstance(bias, torch.Tensor):
        raise TypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
    if bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},) to match weight, got {tuple(bias.shape)}")
    if bias.dtype != weight.dtype:
        raise TypeError(f"bias must have weight's dtype {weight.dtype}, got {bias.dtype}")
    if bias.device != weight.device:
        raise ValueError(f"bias is on {bias.device} but weight is on {weight.device}")


def check_class_labels(y, name: str, batch: int, num_classes: int, device: torch.device,
                       batch_name: str) -> None:
    """(batch,) integer class indices in [0, num_classes) on ``device``; the shape
    and device errors name ``batch_name``, the tensor the batch size comes from."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of class indices, got {type(y).__name__}")
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"{name} must hold integer class indices, got {y.dtype}")
    if y.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},) to match {batch_name}, got {tuple(y.shape)}")
    if y.device != device:
        raise ValueError(f"{name} is on {y.device} but {batch_name} is on {device}")
    if _tracing():
        return
    in_range = (y >= 0) & (y < num_classes)
    if y.device.type == "cpu":
        if not bool(in_range.all()):
            bad = int((~in_range).nonzero()[0, 0])
            raise IndexError(f"{name}[{bad}] = {int(y[bad])} is outside [0, {num_classes})")
    else:
        torch._assert_async(in_range.all(), f"mixkernels: {name} has labels outside [0, {num_classes})")


def check_lam_for(lam, name: str, batch: int, device: torch.device, batch_name: str) -> None:
    """As :func:`check_lam`, with the shape and device errors naming ``batch_name``."""
    if isinstance(lam, torch.Tensor):
        if lam.is_floating_point() and lam.dim() != 0 and lam.shape != (batch,):
            raise ValueError(f"{name} must be 0-d or have shape ({batch},) to match {batch_name}, "
                             f"got {tuple(lam.shape)}")
        if lam.device != device:
            raise ValueError(f"{name} is on {lam.device} but {batch_name} is on {device}")
    check_lam(lam, name, batch, device)


def check_gamma(gamma) -> None:
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real):
        raise TypeError(f"gamma must be a float, got {type(gamma).__name__}")
    if not 0.0 <= float(gamma) < float("inf"):
        raise ValueError(f"gamma must be finite and >= 0, got {gamma}")
