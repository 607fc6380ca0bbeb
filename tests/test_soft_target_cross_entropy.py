"""soft_target_cross_entropy on every compiled backend against mixkernels.reference."""

import pytest
import torch

import mixkernels
from tests.backend_cases import compiled_backends_for_tests
from tests.numerics import assert_matches_ground_truth

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
BACKENDS = compiled_backends_for_tests()


def make_inputs(batch, num_classes, dtype, target_dtype, device, layout="contiguous"):
    if layout == "column_slice":
        logits = (3 * torch.randn(batch, num_classes + 4, device=device)).to(dtype)[:, 1:1 + num_classes]
        target = torch.rand(batch, num_classes + 3, device=device).to(target_dtype)[:, :num_classes]
    elif layout == "transposed":
        logits = (3 * torch.randn(num_classes, batch, device=device)).to(dtype).t()
        target = torch.rand(num_classes, batch, device=device).to(target_dtype).t()
    else:
        logits = (3 * torch.randn(batch, num_classes, device=device)).to(dtype)
        target = torch.softmax(torch.randn(batch, num_classes, device=device), dim=1).to(target_dtype)
    return logits, target


def run_and_compare(backend, device, batch, num_classes, dtype, target_dtype, reduction, *,
                    logits_grad=True, target_grad=False, layout="contiguous"):
    logits, target = make_inputs(batch, num_classes, dtype, target_dtype, device, layout)

    def call(fn_backend, z_dtype, t_dtype):
        z = logits.detach().to(z_dtype).requires_grad_(logits_grad)
        t = target.detach().to(t_dtype).requires_grad_(target_grad)
        out = mixkernels.soft_target_cross_entropy(z, t, reduction=reduction, backend=fn_backend)
        grad_output = (torch.linspace(-1.5, 2.0, out.numel(), device=out.device) if reduction == "none"
                       else torch.tensor(0.37, device=out.device)).to(out.dtype)
        inputs = [x for x, wanted in ((z, logits_grad), (t, target_grad)) if wanted]
        return out, torch.autograd.grad(out, inputs, grad_output), float(grad_output.abs().max())

    out, grads, grad_output = call(backend, dtype, target_dtype)
    base_out, base_grads, _ = call("torch", dtype, target_dtype)
    true_out, true_grads, _ = call("torch", torch.float64, torch.float64)
    tag = f"{backend} {dtype}/{target_dtype} B={batch} C={num_classes} {reduction}"
    assert_matches_ground_truth(out, base_out, true_out, dtype, f"loss [{tag}]")
    row_grad = grad_output / (batch if reduction == "mean" else 1)
    names = [(n, d) for n, d, wanted in (("grad logits", dtype, logits_grad), ("grad target", target_dtype, target_grad))
             if wanted]
    for (name, grad_dtype), g, bg, tg in zip(names, grads, base_grads, true_grads):
        # d loss / d target = -log_softmax: its scale is |lse - z|, not the incoming gradient alone.
        floor = row_grad * (1.0 if name == "grad logits" else 10.0)
        assert_matches_ground_truth(g, bg, tg, grad_dtype, f"{name} [{tag}]", scale_floor=floor)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("target_is_fp32", [True, False], ids=["target_fp32", "target_same_dtype"])
@pytest.mark.parametrize("batch,num_classes", [(1, 1), (3, 7), (37, 1000)])
def test_matches_reference(backend, device, dtype, target_is_fp32, batch, num_classes):
    target_dtype = torch.float32 if target_is_fp32 else dtype
    for reduction in ("none", "mean", "sum"):
        run_and_compare(backend, device, batch, num_classes, dtype, target_dtype, reduction, target_grad=True)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("logits_grad,target_grad", [(True, False), (False, True)])
def test_partial_requires_grad(backend, device, logits_grad, target_grad):
    run_and_compare(backend, device, 37, 31, torch.float32, torch.float32, "none",
                    logits_grad=logits_grad, target_grad=target_grad)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("layout", ["column_slice", "transposed"])
def test_non_contiguous(backend, device, layout):
    run_and_compare(backend, device, 37, 31, torch.bfloat16, torch.float32, "mean", target_grad=True, layout=layout)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_mixed_targets_take_the_sparse_path(backend, device):
    """Given MixedTargets, the timm-style module computes the same loss as with
    the dense target, without building it."""
    logits = torch.randn(37, 1000, device=device)
    y_a, y_b = torch.randint(0, 1000, (37,), device=device), torch.randint(0, 1000, (37,), device=device)
    targets = mixkernels.MixedTargets(y_a, y_b, 0.6)
    loss_fn = mixkernels.SoftTargetCrossEntropy(backend=backend)
    torch.testing.assert_close(loss_fn(logits, targets), loss_fn(logits, targets.dense(1000)), rtol=1e-5, atol=1e-5)


def test_timm_soft_target_formula():
    logits, target = torch.randn(5, 11), torch.rand(5, 11)
    timm_loss = torch.sum(-target * torch.log_softmax(logits, dim=-1), dim=-1).mean()
    torch.testing.assert_close(mixkernels.soft_target_cross_entropy(logits, target, backend="cpu"), timm_loss)
