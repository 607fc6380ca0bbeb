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

import mixkernels  # noqa: E402,F401  (imported after TRITON_INTERPRET is set)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device; skipped without one")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none here)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield

