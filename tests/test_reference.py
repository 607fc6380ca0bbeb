"""The specification itself: gradcheck in fp64, and its documented identities."""

import pytest
import torch

from mixkernels import reference


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("lam_kind", ["scalar_tensor", "per_sample"])
def test_mixup_cross_entropy_gradcheck(smoothing, reduction, lam_kind):
    batch, num_classes = 4, 7
    logits = torch.randn(batch, num_classes, dtype=torch.float64, requires_grad=True)
    y_a = torch.randint(0, num_classes, (batch,))
    y_b = torch.randint(0, num_classes, (batch,))
    y_b[0] = y_a[0]
    shape = () if lam_kind == "scalar_tensor" else (batch,)
    lam = (0.1 + 0.8 * torch.rand(shape, dtype=torch.float64)).requires_grad_(True)

    def fn(z, l):
        return reference.mixup_cross_entropy(z, y_a, y_b, l, label_smoothing=smoothing, reduction=reduction)

    assert torch.autograd.gradcheck(fn, (logits, lam))
    assert torch.autograd.gradgradcheck(fn, (logits, lam))


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_soft_target_cross_entropy_gradcheck(reduction):
    logits = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    target = torch.rand(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda z, t: reference.soft_target_cross_entropy(z, t, reduction=reduction), (logits, target))


def test_mixup_target_is_timms():
    """timm: off = s/C, on = 1 - s + off, target = lam * y1 + (1 - lam) * y2."""
    y_a, y_b, lam, s, num_classes = torch.tensor([0, 2]), torch.tensor([1, 2]), 0.7, 0.1, 4
    off, on = s / num_classes, 1 - s + s / num_classes
    expected = torch.full((2, num_classes), off)
    expected[0, 0] = lam * on + (1 - lam) * off
    expected[0, 1] = lam * off + (1 - lam) * on
    expected[1, 2] = on
    torch.testing.assert_close(reference.mixup_target(y_a, y_b, lam, num_classes, s), expected)


def test_mixup_cross_entropy_is_two_cross_entropies():
    logits = torch.randn(6, 9, dtype=torch.float64)
    y_a, y_b = torch.randint(0, 9, (6,)), torch.randint(0, 9, (6,))
    lam = torch.rand(6, dtype=torch.float64)
    ce = torch.nn.functional.cross_entropy
    expected = lam * ce(logits, y_a, reduction="none", label_smoothing=0.2) + \
        (1 - lam) * ce(logits, y_b, reduction="none", label_smoothing=0.2)
    torch.testing.assert_close(
        reference.mixup_cross_entropy(logits, y_a, y_b, lam, label_smoothing=0.2, reduction="none"), expected)


def test_masked_classes_contribute_nothing():
    """A -inf logit with zero target weight gives a finite loss, as F.cross_entropy does."""
    logits = torch.tensor([[0.5, float("-inf"), 1.0]])
    y = torch.tensor([2])
    out = reference.mixup_cross_entropy(logits, y, y, 0.4, reduction="none")
    torch.testing.assert_close(out, torch.nn.functional.cross_entropy(logits, y, reduction="none"))
