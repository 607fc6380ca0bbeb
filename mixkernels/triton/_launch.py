"""Launch helpers shared by the Triton op modules."""

from __future__ import annotations

import contextlib
import functools

import torch

# Compile option of kernels whose mixes are two products then a sum, rounded
# as eager PyTorch and the CPU and CUDA kernels round them: Triton would
# otherwise fuse them into an fma on the GPU.
NO_FP_FUSION = {"enable_fp_fusion": False}

# CUDA's cap on grid axis 0 (axes 1 and 2 stop at 65535, so the image kernels use a 1-D grid).
MAX_GRID_X = 2**31 - 1


def device_guard(t: torch.Tensor):
    """Triton launches on the current CUDA device; make it the tensor's."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def unit_column_stride(x: torch.Tensor) -> torch.Tensor:
    """The kernels take a row stride but assume unit column stride. A single
    column is unit-stride whatever its stride says."""
    if x.shape[1] > 1 and x.stride(1) != 1:
        return x.contiguous()
    return x


@functools.lru_cache(maxsize=None)
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device``; under the interpreter (CPU
    tensors) a small stand-in, so that the tests reach the multi-program
    paths with small shapes."""
    if device.type == "cuda":
        return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return 2
