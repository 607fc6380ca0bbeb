"""Launch helpers shared by the Triton op modules."""

from __future__ import annotations

import contextlib

import torch


def device_guard(t: torch.Tensor):
    """Triton launches on the current CUDA device; make it the tensor's."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def unit_column_stride(x: torch.Tensor) -> torch.Tensor:
    """The kernels take a row stride but assume unit column stride. A single
    column is unit-stride whatever its stride says."""
    if x.shape[1] > 1 and x.stride(1) != 1:
        return x.contiguous()
    return x
