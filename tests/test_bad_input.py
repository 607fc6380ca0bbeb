"""Bad input raises a clear error naming the argument, before any kernel runs,
on every backend; direct op calls are guarded too."""

import pytest
import torch

import mixkernels
from mixkernels import functional

ALL_BACKENDS = ["torch", "cpu", "triton"]


@pytest.fixture
def no_kernel(monkeypatch):
    """Fails the test if a kernel is launched: checks must come first."""
    def forbidden(*args, **kwargs):
        raise AssertionError("a kernel ran before the input was rejected")

    monkeypatch.setattr(functional, "mixup_cross_entropy_rows", forbidden)
    monkeypatch.setattr(functional, "soft_target_cross_entropy_rows", forbidden)
    monkeypatch.setattr(mixkernels.reference, "mixup_cross_entropy", forbidden)
    monkeypatch.setattr(mixkernels.reference, "soft_target_cross_entropy", forbidden)


def good(batch=4, num_classes=5):
    return (torch.randn(batch, num_classes), torch.randint(0, num_classes, (batch,)),
            torch.randint(0, num_classes, (batch,)), torch.rand(batch))


def _mixup_cases():
    z, y_a, y_b, lam = good()
    return [
        ("y_a", IndexError, lambda: (z, torch.tensor([0, 1, 5, 2]), y_b, lam), {}),
        ("y_b", IndexError, lambda: (z, y_a, torch.tensor([0, -1, 1, 2]), lam), {}),
        ("y_a", ValueError, lambda: (z, y_a[:3], y_b, lam), {}),
        ("y_a", TypeError, lambda: (z, y_a.float(), y_b, lam), {}),
        ("lam", ValueError, lambda: (z, y_a, y_b, 1.5), {}),
        ("lam", ValueError, lambda: (z, y_a, y_b, -0.1), {}),
        ("lam", ValueError, lambda: (z, y_a, y_b, torch.tensor([0.5, 0.5, 1.01, 0.2])), {}),
        ("lam", ValueError, lambda: (z, y_a, y_b, torch.tensor([0.5, float("nan"), 0.1, 0.2])), {}),
        ("lam", ValueError, lambda: (z, y_a, y_b, torch.rand(3)), {}),
        ("lam", TypeError, lambda: (z, y_a, y_b, "0.5"), {}),
        ("lam", TypeError, lambda: (z, y_a, y_b, torch.tensor([1, 0, 1, 0])), {}),
        ("logits", ValueError, lambda: (torch.randn(0, 5), y_a[:0], y_b[:0], 0.5), {}),
        ("logits", ValueError, lambda: (torch.randn(4, 0), y_a, y_b, 0.5), {}),
        ("logits", ValueError, lambda: (torch.randn(4, 5, 1), y_a, y_b, 0.5), {}),
        ("logits", TypeError, lambda: (torch.randint(0, 3, (4, 5)), y_a, y_b, 0.5), {}),
        ("logits", TypeError, lambda: (z.numpy(), y_a, y_b, 0.5), {}),
        ("reduction", ValueError, lambda: (z, y_a, y_b, lam), {"reduction": "avg"}),
        ("label_smoothing", ValueError, lambda: (z, y_a, y_b, lam), {"label_smoothing": 1.5}),
        ("label_smoothing", TypeError, lambda: (z, y_a, y_b, lam), {"label_smoothing": None}),
        ("backend", ValueError, lambda: (z, y_a, y_b, lam), {"backend": "tpu"}),
        ("MixedTargets", TypeError, lambda: (z, y_a, None, None), {}),
    ]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("case", range(len(_mixup_cases())))
def test_mixup_cross_entropy_rejects(backend, case, no_kernel):
    name, error, make_args, kwargs = _mixup_cases()[case]
    kwargs = {"backend": backend, **kwargs}
    with pytest.raises(error, match=name):
        mixkernels.mixup_cross_entropy(*make_args(), **kwargs)


def _soft_cases():
    z = torch.randn(4, 5)
    return [
        ("target", ValueError, lambda: (z, torch.rand(4, 6)), {}),
        ("target", TypeError, lambda: (z, torch.randint(0, 2, (4, 5))), {}),
        ("target", TypeError, lambda: (z, [[0.2] * 5] * 4), {}),
        ("logits", ValueError, lambda: (torch.randn(0, 5), torch.rand(0, 5)), {}),
        ("reduction", ValueError, lambda: (z, torch.rand(4, 5)), {"reduction": None}),
    ]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("case", range(len(_soft_cases())))
def test_soft_target_cross_entropy_rejects(backend, case, no_kernel):
    name, error, make_args, kwargs = _soft_cases()[case]
    with pytest.raises(error, match=name):
        mixkernels.soft_target_cross_entropy(*make_args(), backend=backend, **kwargs)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_target_dtype_for_compiled_backends(backend, no_kernel):
    with pytest.raises(TypeError, match="target"):
        mixkernels.soft_target_cross_entropy(torch.randn(4, 5, dtype=torch.bfloat16),
                                             torch.rand(4, 5, dtype=torch.float16), backend=backend)


def test_direct_op_calls_are_guarded():
    """torch.ops.mixkernels.* called directly still never reads out of bounds."""
    z, y_a, y_b, lam = good()
    ops = torch.ops.mixkernels
    with pytest.raises(IndexError, match="y_a"):
        ops.mixup_cross_entropy(z, torch.tensor([0, 1, 9, 2]), y_b, lam, 0.0)
    with pytest.raises(RuntimeError, match="y_b"):
        ops.mixup_cross_entropy(z, y_a, y_b.int(), lam, 0.0)
    with pytest.raises(RuntimeError, match="lam"):
        ops.mixup_cross_entropy(z, y_a, y_b, lam[:2], 0.0)
    with pytest.raises(RuntimeError, match="unit stride"):
        ops.mixup_cross_entropy(torch.randn(5, 4).t(), y_a, y_b, lam, 0.0)
    with pytest.raises(RuntimeError, match="target"):
        ops.soft_target_cross_entropy(z, torch.rand(4, 6))


def test_inputs_survive_rejection():
    z, y_a, y_b, lam = good()
    before = [t.clone() for t in (z, y_a, y_b, lam)]
    with pytest.raises(ValueError):
        mixkernels.mixup_cross_entropy(z, y_a, y_b, lam, reduction="bad", backend="cpu")
    for b, a in zip(before, (z, y_a, y_b, lam)):
        assert torch.equal(b, a)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_cuda_tensors_rejected_without_host_sync(backend):
    """On CUDA tensors, shape/dtype/device errors raise at once. (Value errors,
    labels and lam, are queued with torch._assert_async: a device-side assert
    that ends the CUDA context, so it is not triggered here.)"""
    z, y_a, y_b, lam = (t.cuda() for t in good())
    with pytest.raises(ValueError, match="y_a"):
        mixkernels.mixup_cross_entropy(z, y_a[:3], y_b, lam, backend=backend)
    with pytest.raises(ValueError, match="y_b"):
        mixkernels.mixup_cross_entropy(z, y_a, y_b.cpu(), lam, backend=backend)
