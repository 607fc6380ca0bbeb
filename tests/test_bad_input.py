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


# --------------------------------------------------------------------------- Infinite Class Mixup

@pytest.fixture
def no_icm_kernel(monkeypatch):
    """Fails the test if the ICM loss (or IC-RegMixup's clean term) is computed."""
    def forbidden(*args, **kwargs):
        raise AssertionError("a kernel ran before the input was rejected")

    monkeypatch.setattr(functional, "_icm_loss_on_backend", forbidden)
    monkeypatch.setattr(mixkernels.reference, "icm_scores", forbidden)
    monkeypatch.setattr(mixkernels.reference, "infinite_class_mixup_loss", forbidden)
    monkeypatch.setattr(functional, "mixup_cross_entropy_rows", forbidden)
    monkeypatch.setattr(mixkernels.reference, "mixup_cross_entropy", forbidden)


def good_icm(batch=4, num_classes=5, features=3):
    return (torch.randn(batch, features), torch.randn(num_classes, features), torch.randint(0, num_classes, (batch,)),
            torch.randint(0, num_classes, (batch,)), torch.rand(batch), torch.randn(num_classes))


def _icm_cases():
    h, w, y_a, y_b, lam, b = good_icm()
    return [
        ("hidden", TypeError, lambda: (h.numpy(), w, y_a, y_b, lam), {}),
        ("hidden", TypeError, lambda: (torch.randint(0, 3, (4, 3)), w, y_a, y_b, lam), {}),
        ("hidden", ValueError, lambda: (h.view(4, 3, 1), w, y_a, y_b, lam), {}),
        ("hidden", ValueError, lambda: (torch.randn(0, 3), w, y_a[:0], y_b[:0], 0.5), {}),
        ("hidden", ValueError, lambda: (torch.randn(4, 0), torch.randn(5, 0), y_a, y_b, lam), {}),
        ("weight", ValueError, lambda: (h, torch.randn(5, 4), y_a, y_b, lam), {}),
        ("weight", ValueError, lambda: (h, torch.randn(0, 3), y_a, y_b, lam), {}),
        ("weight", ValueError, lambda: (h, torch.randn(15), y_a, y_b, lam), {}),
        ("weight", TypeError, lambda: (h, w.double(), y_a, y_b, lam), {}),
        ("weight", TypeError, lambda: (h, w.tolist(), y_a, y_b, lam), {}),
        ("bias", ValueError, lambda: (h, w, y_a, y_b, lam), {"bias": b[:4]}),
        ("bias", TypeError, lambda: (h, w, y_a, y_b, lam), {"bias": b.half()}),
        ("bias", TypeError, lambda: (h, w, y_a, y_b, lam), {"bias": b.numpy()}),
        ("y_a", IndexError, lambda: (h, w, torch.tensor([0, 1, 5, 2]), y_b, lam), {}),
        ("y_b", IndexError, lambda: (h, w, y_a, torch.tensor([0, -1, 1, 2]), lam), {}),
        ("y_a", ValueError, lambda: (h, w, y_a[:3], y_b, lam), {}),
        ("y_b", TypeError, lambda: (h, w, y_a, y_b.float(), lam), {}),
        ("lam", ValueError, lambda: (h, w, y_a, y_b, 1.5), {}),
        ("lam", ValueError, lambda: (h, w, y_a, y_b, -0.1), {}),
        ("lam", ValueError, lambda: (h, w, y_a, y_b, torch.tensor([0.5, 0.5, 1.01, 0.2])), {}),
        ("lam", ValueError, lambda: (h, w, y_a, y_b, torch.tensor([0.5, float("nan"), 0.1, 0.2])), {}),
        ("lam", ValueError, lambda: (h, w, y_a, y_b, torch.rand(3)), {}),
        ("lam", TypeError, lambda: (h, w, y_a, y_b, "0.5"), {}),
        ("lam", TypeError, lambda: (h, w, y_a, y_b, torch.tensor([1, 0, 1, 0])), {}),
        ("axes", ValueError, lambda: (h, w, y_a, y_b, lam), {"axes": "diagonal"}),
        ("axes", ValueError, lambda: (h, w, y_a, y_b, lam), {"axes": None}),
        ("reduction", ValueError, lambda: (h, w, y_a, y_b, lam), {"reduction": "avg"}),
        ("backend", ValueError, lambda: (h, w, y_a, y_b, lam), {"backend": "tpu"}),
        ("MixedTargets", TypeError, lambda: (h, w, y_a, None, None), {}),
        ("MixedTargets", TypeError, lambda: (h, w, mixkernels.MixedTargets(y_a, y_b, lam), y_b, None), {}),
    ]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("case", range(len(_icm_cases())))
def test_infinite_class_mixup_loss_rejects(backend, case, no_icm_kernel):
    name, error, make_args, kwargs = _icm_cases()[case]
    kwargs = {"backend": backend, **kwargs}
    with pytest.raises(error, match=name):
        mixkernels.infinite_class_mixup_loss(*make_args(), **kwargs)


def _ic_regmixup_cases():
    h, w, y_a, y_b, lam, b = good_icm()
    z, y = torch.randn(4, 5), torch.randint(0, 5, (4,))
    return [
        ("clean_logits", ValueError, lambda: (torch.randn(4, 6), y, h, w, y_a, y_b, lam), {}),
        ("clean_logits", TypeError, lambda: (z.long(), y, h, w, y_a, y_b, lam), {}),
        ("clean_logits", ValueError, lambda: (torch.randn(3, 5), y[:3], h, w, y_a, y_b, lam), {"reduction": "none"}),
        ("y", IndexError, lambda: (z, torch.tensor([0, 1, 2, 7]), h, w, y_a, y_b, lam), {}),
        ("y", ValueError, lambda: (z, y[:2], h, w, y_a, y_b, lam), {}),
        ("hidden_mixed", ValueError, lambda: (z, y, torch.randn(4, 2), w, y_a, y_b, lam), {}),
        ("hidden_mixed", ValueError, lambda: (z, y, h, w, y_a[:3], y_b, lam), {}),
        ("gamma", ValueError, lambda: (z, y, h, w, y_a, y_b, lam), {"gamma": -1.0}),
        ("gamma", TypeError, lambda: (z, y, h, w, y_a, y_b, lam), {"gamma": "1"}),
        ("label_smoothing", ValueError, lambda: (z, y, h, w, y_a, y_b, lam), {"label_smoothing": 2.0}),
        ("lam", ValueError, lambda: (z, y, h, w, y_a, y_b, 1.5), {}),
        ("axes", ValueError, lambda: (z, y, h, w, y_a, y_b, lam), {"axes": "rows"}),
    ]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("case", range(len(_ic_regmixup_cases())))
def test_ic_regmixup_loss_rejects(backend, case, no_icm_kernel):
    name, error, make_args, kwargs = _ic_regmixup_cases()[case]
    kwargs = {"backend": backend, **kwargs}
    with pytest.raises(error, match=name):
        mixkernels.ic_regmixup_loss(*make_args(), **kwargs)


def test_icm_inputs_survive_rejection():
    h, w, y_a, y_b, lam, b = good_icm()
    before = [t.clone() for t in (h, w, y_a, y_b, lam, b)]
    with pytest.raises(ValueError):
        mixkernels.infinite_class_mixup_loss(h, w, y_a, y_b, lam, bias=b, reduction="bad")
    for old, new in zip(before, (h, w, y_a, y_b, lam, b)):
        assert torch.equal(old, new)


@pytest.mark.gpu
def test_icm_cuda_tensors_rejected_without_host_sync():
    h, w, y_a, y_b, lam, b = (t.cuda() for t in good_icm())
    with pytest.raises(ValueError, match="weight"):
        mixkernels.infinite_class_mixup_loss(h, w.cpu(), y_a, y_b, lam, bias=b)
    with pytest.raises(ValueError, match="y_a"):
        mixkernels.infinite_class_mixup_loss(h, w, y_a[:3], y_b, lam, bias=b)
    with pytest.raises(ValueError, match="lam"):
        mixkernels.infinite_class_mixup_loss(h, w, y_a, y_b, lam.cpu(), bias=b)
