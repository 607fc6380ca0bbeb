"""mixup_cross_entropy on every compiled backend against mixkernels.reference.

Forward and every gradient (logits, lam) in fp32, bf16 and fp16, odd shapes,
per-batch and per-sample lam, label smoothing, every reduction, grad_output
other than 1, partial requires_grad and non-contiguous logits.
"""

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mixkernels
from mixkernels import reference
from tests.backend_cases import compiled_backends_for_tests
from tests.numerics import assert_matches_ground_truth

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = [(1, 1), (3, 7), (37, 1000), (3, 1)]
LAM_KINDS = ["float", "scalar_tensor", "per_sample"]


def make_inputs(batch, num_classes, dtype, device, lam_kind, *, same_labels=False, layout="contiguous"):
    if layout == "column_slice":  # rows strided wider than C
        logits = (3 * torch.randn(batch, num_classes + 5, device=device)).to(dtype)[:, 2:2 + num_classes]
    elif layout == "transposed":  # unit stride along the batch, not the classes
        logits = (3 * torch.randn(num_classes, batch, device=device)).to(dtype).t()
    else:
        logits = (3 * torch.randn(batch, num_classes, device=device)).to(dtype)
    y_a = torch.randint(0, num_classes, (batch,), device=device)
    y_b = y_a.clone() if same_labels else torch.randint(0, num_classes, (batch,), device=device)
    if batch > 1 and not same_labels:
        y_b[0] = y_a[0]  # a same-class pair is always present
    if lam_kind == "float":
        lam = 0.3
    elif lam_kind == "scalar_tensor":
        lam = torch.tensor(0.65, device=device)
    else:
        lam = torch.rand(batch, device=device)
        lam[0] = 1.0  # the ends of [0, 1] are legal
        if batch > 2:
            lam[1] = 0.0
    return logits, y_a, y_b, lam


def _grad_output(loss, reduction):
    if reduction == "none":
        return torch.linspace(-1.5, 2.0, loss.numel(), device=loss.device).to(loss.dtype)
    return torch.tensor(0.37, device=loss.device, dtype=loss.dtype)


def run_and_compare(backend, device, batch, num_classes, dtype, lam_kind, smoothing, reduction, *,
                    logits_grad=True, lam_grad=False, same_labels=False, layout="contiguous"):
    logits, y_a, y_b, lam = make_inputs(batch, num_classes, dtype, device, lam_kind, same_labels=same_labels,
                                        layout=layout)
    lam_is_tensor = isinstance(lam, torch.Tensor)
    lam_grad = lam_grad and lam_is_tensor

    def call(fn_backend, z_dtype):
        z = logits.detach().to(z_dtype).requires_grad_(logits_grad)
        lam_in = lam.detach().to(torch.float64 if z_dtype == torch.float64 else lam.dtype).requires_grad_(lam_grad) \
            if lam_is_tensor else lam
        out = mixkernels.mixup_cross_entropy(z, y_a, y_b, lam_in, label_smoothing=smoothing, reduction=reduction,
                                             backend=fn_backend)
        inputs = [t for t, wanted in ((z, logits_grad), (lam_in, lam_grad)) if wanted]
        grads = torch.autograd.grad(out, inputs, _grad_output(out, reduction).to(out.dtype)) if inputs else ()
        return out, grads, _grad_output(out, reduction)

    out, grads, grad_output = call(backend, dtype)
    base_out, base_grads, _ = call("torch", dtype)
    true_out, true_grads, _ = call("torch", torch.float64)
    # Each row's gradient is its incoming gradient times terms of size <= 1.
    row_grad = float(grad_output.abs().max()) / (batch if reduction == "mean" else 1)
    tag = f"{backend} {dtype} B={batch} C={num_classes} lam={lam_kind} s={smoothing} {reduction}"
    assert_matches_ground_truth(out, base_out, true_out, dtype, f"loss [{tag}]")
    names = [n for n, wanted in (("grad logits", logits_grad), ("grad lam", lam_grad)) if wanted]
    for name, g, bg, tg in zip(names, grads, base_grads, true_grads):
        grad_dtype = dtype if name == "grad logits" else torch.float32
        assert_matches_ground_truth(g, bg, tg, grad_dtype, f"{name} [{tag}]", scale_floor=row_grad)


BACKENDS = compiled_backends_for_tests()


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch,num_classes", SHAPES)
@pytest.mark.parametrize("lam_kind", LAM_KINDS)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_matches_reference(backend, device, dtype, batch, num_classes, lam_kind, smoothing):
    for reduction in ("none", "mean", "sum"):
        run_and_compare(backend, device, batch, num_classes, dtype, lam_kind, smoothing, reduction,
                        lam_grad=lam_kind != "float")


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("logits_grad,lam_grad", [(True, False), (False, True)])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_partial_requires_grad(backend, device, logits_grad, lam_grad, reduction):
    run_and_compare(backend, device, 37, 1000, torch.float32, "per_sample", 0.1, reduction,
                    logits_grad=logits_grad, lam_grad=lam_grad)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("layout", ["column_slice", "transposed"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_non_contiguous_logits(backend, device, layout, dtype):
    run_and_compare(backend, device, 37, 31, dtype, "per_sample", 0.1, "mean", lam_grad=True, layout=layout)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_same_labels_is_plain_cross_entropy(backend, device):
    run_and_compare(backend, device, 3, 7, torch.float32, "per_sample", 0.0, "none", same_labels=True, lam_grad=True)
    logits, y_a, _, lam = make_inputs(3, 7, torch.float32, device, "per_sample")
    out = mixkernels.mixup_cross_entropy(logits, y_a, y_a, lam, reduction="none", backend=backend)
    torch.testing.assert_close(out, torch.nn.functional.cross_entropy(logits, y_a, reduction="none"))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_matches_timm_dense_target_and_torch_label_smoothing(backend, device):
    """The documented equivalences: timm's dense mixup target, and the two-CE form
    with torch's own label_smoothing (which uses the same convention)."""
    logits, y_a, y_b, _ = make_inputs(37, 1000, torch.float32, device, "float")
    lam, s = 0.3, 0.1
    out = mixkernels.mixup_cross_entropy(logits, y_a, y_b, lam, label_smoothing=s, backend=backend)
    dense = mixkernels.MixedTargets(y_a, y_b, lam).dense(1000, s)
    timm_form = torch.sum(-dense * torch.log_softmax(logits, dim=-1), dim=-1).mean()
    two_ce = lam * torch.nn.functional.cross_entropy(logits, y_a, label_smoothing=s) + \
        (1 - lam) * torch.nn.functional.cross_entropy(logits, y_b, label_smoothing=s)
    torch.testing.assert_close(out, timm_form, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, two_ce, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_mixed_targets_and_module(backend, device):
    logits, y_a, y_b, lam = make_inputs(3, 7, torch.float32, device, "per_sample")
    expected = mixkernels.mixup_cross_entropy(logits, y_a, y_b, lam, label_smoothing=0.1, backend=backend)
    targets = mixkernels.MixedTargets(y_a, y_b, lam)
    torch.testing.assert_close(
        mixkernels.mixup_cross_entropy(logits, targets, label_smoothing=0.1, backend=backend), expected)
    module = mixkernels.MixupCrossEntropyLoss(label_smoothing=0.1, backend=backend)
    torch.testing.assert_close(module(logits, targets), expected)
    torch.testing.assert_close(module(logits, y_a, y_b, lam), expected)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_inputs_not_modified_and_deterministic(backend, device):
    logits, y_a, y_b, lam = make_inputs(37, 1000, torch.bfloat16, device, "per_sample")
    logits.requires_grad_(True)
    lam.requires_grad_(True)
    copies = [t.detach().clone() for t in (logits, y_a, y_b, lam)]
    results = []
    for _ in range(2):
        out = mixkernels.mixup_cross_entropy(logits, y_a, y_b, lam, label_smoothing=0.1, backend=backend)
        results.append((out, *torch.autograd.grad(out, (logits, lam))))
    for before, after in zip(copies, (logits, y_a, y_b, lam)):
        assert torch.equal(before, after.detach()), "an input tensor was modified"
    for first, second in zip(*results):
        assert torch.equal(first, second), "two identical calls gave different bits"


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_nan_and_inf_propagate_like_reference(backend, device):
    logits, y_a, y_b, lam = make_inputs(3, 7, torch.float32, device, "per_sample")
    logits[0, 2] = float("nan")
    logits[1, :] = float("-inf")
    logits[1, y_a[1]] = 0.0  # one finite logit: finite loss unless y_b points at -inf
    logits[2, 4] = float("inf")
    out = mixkernels.mixup_cross_entropy(logits, y_a, y_b, lam, reduction="none", backend=backend)
    ref = reference.mixup_cross_entropy(logits, y_a, y_b, lam, reduction="none")
    assert torch.isnan(out[0]) and torch.isnan(ref[0])
    assert torch.isnan(out[2]) == torch.isnan(ref[2])
    torch.testing.assert_close(out[1], ref[1], equal_nan=True)


def test_float64_runs_on_torch_backend_only():
    logits, y_a, y_b, lam = make_inputs(3, 7, torch.float64, "cpu", "float")
    out = mixkernels.mixup_cross_entropy(logits, y_a, y_b, lam, backend="torch")
    assert out.dtype == torch.float64
    with pytest.raises(TypeError, match="logits"):
        mixkernels.mixup_cross_entropy(logits, y_a, y_b, lam, backend="cpu")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_int32_labels(backend, device):
    logits, y_a, y_b, lam = make_inputs(37, 31, torch.float32, device, "per_sample")
    expected = mixkernels.mixup_cross_entropy(logits, y_a, y_b, lam, backend=backend)
    torch.testing.assert_close(
        mixkernels.mixup_cross_entropy(logits, y_a.int(), y_b.int(), lam, backend=backend), expected)


def test_full_product_on_cpu_kernel_small():
    """Every combination of the options once on the C++ kernel, including
    grad_output != 1 on every reduction (cheap on the CPU)."""
    for dtype, lam_kind, smoothing, reduction in itertools.product(
            DTYPES, LAM_KINDS, (0.0, 0.25), ("none", "mean", "sum")):
        run_and_compare("cpu", "cpu", 5, 33, dtype, lam_kind, smoothing, reduction, lam_grad=True)


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 40), num_classes=st.integers(1, 300), smoothing=st.floats(0.0, 1.0),
       dtype=st.sampled_from(DTYPES), lam_kind=st.sampled_from(LAM_KINDS),
       reduction=st.sampled_from(["none", "mean", "sum"]))
def test_cpu_kernel_random_shapes(batch, num_classes, smoothing, dtype, lam_kind, reduction):
    """Random shapes cover every split of a row into vector chunks and tail."""
    run_and_compare("cpu", "cpu", batch, num_classes, dtype, lam_kind, smoothing, reduction,
                    lam_grad=lam_kind != "float")
