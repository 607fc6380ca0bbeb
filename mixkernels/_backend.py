"""Which backends are built and usable, and which one an op call runs on.

Backends: ``"torch"`` (mixkernels.reference), ``"cpu"`` (C++ kernels in
``mixkernels._C``), ``"triton"`` and ``"cuda"`` (C++/CUDA kernels in
``mixkernels._C``). ``"auto"`` picks the C++ kernel on CPU tensors and the
compiled GPU path on CUDA tensors; ``MIXKERNELS_BACKEND`` overrides ``"auto"``.
A backend asked for by name that cannot run raises; nothing falls back silently.
"""

from __future__ import annotations

import importlib.util
import os
from typing import NamedTuple

import torch

BACKENDS = ("torch", "cpu", "triton", "cuda")
ENV_VAR = "MIXKERNELS_BACKEND"

try:  # the compiled extension registers the C++/CUDA ops with torch.library
    from mixkernels import _C  # noqa: F401

    _EXTENSION_ERROR = None
    # Fixed for the life of the process; read once so that backend choice
    # under torch.compile involves no op calls.
    _CPU_CAPABILITY = torch.ops.mixkernels.cpu_kernel_capability()
    _BUILT_WITH_CUDA = torch.ops.mixkernels.built_with_cuda()
except ImportError as exc:  # the package still works through "torch" (and "triton")
    _EXTENSION_ERROR = f"{type(exc).__name__}: {exc}"
    _CPU_CAPABILITY = None
    _BUILT_WITH_CUDA = False


class BackendStatus(NamedTuple):
    usable: bool
    reason: str  # why not usable, or what the backend runs on


def extension_loaded() -> bool:
    return _EXTENSION_ERROR is None


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _status(name: str) -> BackendStatus:
    if name == "torch":
        return BackendStatus(True, "plain PyTorch reference (mixkernels.reference)")
    if name == "cpu":
        if not extension_loaded():
            return BackendStatus(False, f"cpu: the compiled extension did not load ({_EXTENSION_ERROR})")
        return BackendStatus(True, f"C++ kernels, {_CPU_CAPABILITY} build")
    if name == "cuda":
        if not extension_loaded():
            return BackendStatus(False, f"cuda: the compiled extension did not load ({_EXTENSION_ERROR})")
        if not _BUILT_WITH_CUDA:
            return BackendStatus(False, "cuda: extension built without CUDA")
        if not torch.cuda.is_available():
            return BackendStatus(False, "cuda: no CUDA device is available")
        return BackendStatus(True, "C++/CUDA kernels")
    if name == "triton":
        if importlib.util.find_spec("triton") is None:
            return BackendStatus(False, "triton: the triton package is not installed")
        if torch.cuda.is_available():
            return BackendStatus(True, "Triton kernels on the GPU")
        if triton_interpreting():
            return BackendStatus(True, "Triton kernels under the interpreter (TRITON_INTERPRET=1), CPU tensors")
        return BackendStatus(False, "triton: no CUDA device and TRITON_INTERPRET is not 1")
    raise ValueError(f"backend must be one of 'auto', {', '.join(map(repr, BACKENDS))}; got {name!r}")


def backends() -> dict[str, BackendStatus]:
    """What each backend is and whether it can run here; the reason when not."""
    return {name: _status(name) for name in BACKENDS}


def resolve_backend(backend: str, device: torch.device, *, op: str = "this op",
                    implemented=("cpu", "triton", "cuda")) -> str:
    """The backend that runs ``op`` on tensors of ``device``, or a clear error.

    ``implemented``: the compiled backends that have kernels for ``op``
    ("torch" always works); "auto" picks among them.
    """
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, got {type(backend).__name__}")
    if backend == "auto":
        backend = os.environ.get(ENV_VAR, "auto") or "auto"
        if backend == "auto":
            return _auto_backend(device, implemented)
        where = f" (from {ENV_VAR})"
    else:
        where = ""
    status = _status(backend)  # raises on an unknown name
    if not status.usable:
        raise RuntimeError(f"backend {backend!r}{where} is not usable: {status.reason}")
    if backend != "torch" and backend not in implemented:
        raise RuntimeError(f"{op} has no {backend!r} kernels yet; it runs on "
                           f"{', '.join(repr(b) for b in ('torch', *implemented))}")
    if backend == "cpu" and device.type != "cpu":
        raise ValueError(f"backend 'cpu'{where} runs on CPU tensors, got tensors on {device}")
    if backend == "cuda" and device.type != "cuda":
        raise ValueError(f"backend 'cuda'{where} runs on CUDA tensors, got tensors on {device}")
    if backend == "triton" and device.type != "cuda" and not (device.type == "cpu" and triton_interpreting()):
        raise ValueError(f"backend 'triton'{where} runs on CUDA tensors (or CPU tensors under "
                         f"TRITON_INTERPRET=1), got tensors on {device}")
    return backend


def _auto_backend(device: torch.device, implemented) -> str:
    if device.type == "cuda":
        # The CUDA kernels need no JIT warm-up; Triton is the other compiled path.
        for name in ("cuda", "triton"):
            if name in implemented and _status(name).usable:
                return name
        return "torch"
    if device.type == "cpu" and "cpu" in implemented and extension_loaded():
        return "cpu"
    return "torch"
