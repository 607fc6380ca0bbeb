"""The (backend, device) pairs that op tests are parametrised over."""

import pytest
import torch


def compiled_backends_for_tests():
    """The C++ CPU kernels; Triton on the GPU, or under the interpreter on CPU
    tensors when there is none; the CUDA kernels (GPU-marked, skipped without one)."""
    triton_device = "cuda" if torch.cuda.is_available() else "cpu"
    return [
        pytest.param("cpu", "cpu", id="cpu"),
        pytest.param("triton", triton_device, id=f"triton-{'cuda' if triton_device == 'cuda' else 'interpreter'}"),
        pytest.param("cuda", "cuda", id="cuda", marks=pytest.mark.gpu),
    ]
