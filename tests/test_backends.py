"""backend= and MIXKERNELS_BACKEND: what is usable, what auto picks, and clear
errors (never a silent fallback) for a backend that cannot run."""

import pytest
import torch

import mixkernels
from mixkernels import _backend


def test_backends_reports_every_backend_with_a_reason():
    status = mixkernels.backends()
    assert set(status) == {"torch", "cpu", "triton", "cuda"}
    for name, entry in status.items():
        assert isinstance(entry.usable, bool) and entry.reason, name
    assert status["torch"].usable
    if not torch.cuda.is_available():
        assert not status["cuda"].usable
        assert "cuda" in status["cuda"].reason


def test_auto_on_cpu_tensors_is_the_cpp_kernel():
    assert _backend.resolve_backend("auto", torch.device("cpu")) == "cpu"


def test_environment_variable_overrides_auto_only(monkeypatch):
    monkeypatch.setenv("MIXKERNELS_BACKEND", "torch")
    assert _backend.resolve_backend("auto", torch.device("cpu")) == "torch"
    assert _backend.resolve_backend("cpu", torch.device("cpu")) == "cpu"
    monkeypatch.setenv("MIXKERNELS_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="backend"):
        _backend.resolve_backend("auto", torch.device("cpu"))


def test_environment_variable_changes_what_runs(monkeypatch):
    calls = []
    real = mixkernels.reference.mixup_cross_entropy
    monkeypatch.setattr(mixkernels.reference, "mixup_cross_entropy",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    z, y = torch.randn(3, 4), torch.tensor([0, 1, 2])
    mixkernels.mixup_cross_entropy(z, y, y, 0.5)
    assert calls == []
    monkeypatch.setenv("MIXKERNELS_BACKEND", "torch")
    mixkernels.mixup_cross_entropy(z, y, y, 0.5)
    assert calls == [1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU errors")
def test_unusable_backend_is_an_error_not_a_fallback(monkeypatch):
    z, y = torch.randn(3, 4), torch.tensor([0, 1, 2])
    with pytest.raises(RuntimeError, match="cuda"):
        mixkernels.mixup_cross_entropy(z, y, y, 0.5, backend="cuda")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        mixkernels.mixup_cross_entropy(z, y, y, 0.5, backend="triton")
    monkeypatch.setenv("MIXKERNELS_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="MIXKERNELS_BACKEND"):
        mixkernels.mixup_cross_entropy(z, y, y, 0.5)


def test_backend_must_match_the_device(monkeypatch):
    monkeypatch.setattr(_backend, "_status", lambda name: _backend.BackendStatus(True, "forced for the test"))
    with pytest.raises(ValueError, match="CUDA tensors"):
        _backend.resolve_backend("cuda", torch.device("cpu"))
    with pytest.raises(ValueError, match="CPU tensors"):
        _backend.resolve_backend("cpu", torch.device("cuda"))


@pytest.mark.gpu
def test_auto_on_cuda_tensors_is_compiled():
    assert _backend.resolve_backend("auto", torch.device("cuda")) in ("cuda", "triton")
