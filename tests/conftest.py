"""Test set-up shared by every test module.

Without a GPU, Triton kernels run under the interpreter on CPU tensors. The
interpreter is chosen when ``@triton.jit`` runs, so TRITON_INTERPRET must be
set before any mixkernels.triton module is imported: here, at collection.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import mixkernels  # noqa: E402  (after TRITON_INTERPRET)
from mixkernels import _backend  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device; skipped without one")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none here)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def compiled_backends_for_tests():
    """(backend, device) pairs the op tests run on here: the C++ CPU kernels,
    Triton (interpreted on the CPU without a GPU) and, with a GPU, CUDA."""
    pairs = [pytest.param("cpu", "cpu", id="cpu")]
    if torch.cuda.is_available():
        pairs.append(pytest.param("triton", "cuda", id="triton-cuda", marks=pytest.mark.gpu))
        pairs.append(pytest.param("cuda", "cuda", id="cuda", marks=pytest.mark.gpu))
    else:
        pairs.append(pytest.param("triton", "cpu", id="triton-interpreter"))
        pairs.append(pytest.param("cuda", "cuda", id="cuda", marks=pytest.mark.gpu))
    return pairs


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


__all__ = ["compiled_backends_for_tests", "mixkernels", "_backend"]
