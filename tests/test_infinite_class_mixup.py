"""infinite_class_mixup_loss, ic_regmixup_loss and InfiniteClassMixupLoss against
mixkernels.reference, on every backend with kernels for the op.

Forward and every gradient (hidden, weight, bias, lam) in fp32, bf16 and fp16
against an fp64 ground truth (tests/numerics.py), odd shapes, per-batch and
per-sample lam, every axes and reduction, grad_output other than 1, partial
requires_grad, non-contiguous inputs, MixedTargets, the module, autocast.
The compiled backends' two paths (factorised, through the logits), with the
scores kept from forward or recomputed block by block, each forced; the edge
cases that must be exact; determinism.
"""

import copy
import itertools

import pytest
import torch
from torch import nn

import mixkernels
from mixkernels import reference
from mixkernels.functional import ICM_BACKENDS
from mixkernels.ops import infinite_class_mixup as icm_ops
from tests.backend_cases import compiled_backends_for_tests
from tests.numerics import assert_matches_ground_truth

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = [(b, c) for b in (1, 3, 37) for c in (1, 7, 1000)]
FEATURES = 31
LAM_KINDS = ["float", "scalar_tensor", "per_sample"]
AXES = ["both", "row", "col"]
REDUCTIONS = ["none", "mean", "sum"]
GRADS = ("hidden", "weight", "bias", "lam")


def icm_backends():
    """"torch" (the reference), "auto", and every compiled backend that has ICM kernels."""
    params = [pytest.param("torch", "cpu", id="torch"), pytest.param("auto", "cpu", id="auto")]
    params += [p for p in compiled_backends_for_tests() if p.values[0] in ICM_BACKENDS]
    return params


BACKENDS = icm_backends()


def make_inputs(batch, num_classes, dtype, device, lam_kind, *, bias=True, layout="contiguous", features=FEATURES):
    if layout == "transposed":  # unit stride along the batch (and the classes), not the features
        hidden = torch.randn(features, batch, device=device).to(dtype).t()
        weight = (0.5 * torch.randn(features, num_classes, device=device)).to(dtype).t()
    elif layout == "column_slice":  # rows strided wider than D
        hidden = torch.randn(batch, features + 5, device=device).to(dtype)[:, 3:3 + features]
        weight = (0.5 * torch.randn(num_classes, features + 2, device=device)).to(dtype)[:, 1:1 + features]
    else:
        hidden = torch.randn(batch, features, device=device).to(dtype)
        weight = (0.5 * torch.randn(num_classes, features, device=device)).to(dtype)
    if not bias:
        b = None
    elif layout == "contiguous":
        b = torch.randn(num_classes, device=device).to(dtype)
    else:  # a strided bias too
        b = torch.randn(2 * num_classes, device=device).to(dtype)[::2]
    y_a = torch.randint(0, num_classes, (batch,), device=device)
    y_b = y_a[torch.randperm(batch, device=device)]
    if batch > 2:
        y_b[1] = y_a[1]  # a same-class pair
        y_b[2] = (y_a[2] + 1) % num_classes
    if lam_kind == "float":
        lam = 0.3
    elif lam_kind == "scalar_tensor":
        lam = torch.tensor(0.65, device=device)
    else:
        lam = torch.rand(batch, device=device)
        lam[0] = 1.0  # the ends of [0, 1] are legal
        if batch > 2:
            lam[2] = 0.0
    return hidden, weight, b, y_a, y_b, lam


def grad_output_for(loss, reduction):
    if reduction == "none":
        return torch.linspace(-1.5, 2.0, loss.numel(), device=loss.device).to(loss.dtype)
    return torch.tensor(0.37, device=loss.device, dtype=loss.dtype)


def run_and_compare(backend, device, batch, num_classes, dtype, lam_kind, axes, reduction, *, bias=True,
                    grads=GRADS, layout="contiguous", path="auto", features=FEATURES):
    hidden, weight, b, y_a, y_b, lam = make_inputs(batch, num_classes, dtype, device, lam_kind, bias=bias,
                                                   layout=layout, features=features)
    lam_is_tensor = isinstance(lam, torch.Tensor)
    wanted = {"hidden": "hidden" in grads, "weight": "weight" in grads, "bias": "bias" in grads and bias,
              "lam": "lam" in grads and lam_is_tensor}

    def call(fn_backend, as_fp64):
        def leaf(t, name):
            if not isinstance(t, torch.Tensor):
                return t
            t = t.detach().to(torch.float64) if as_fp64 else t.detach()
            return t.requires_grad_(wanted[name])

        h, w, bb, lm = (leaf(t, n) for t, n in zip((hidden, weight, b, lam), GRADS))
        if fn_backend is None:
            out = reference.infinite_class_mixup_loss(h, w, y_a, y_b, lm, bb, axes, reduction)
        else:
            out = mixkernels.infinite_class_mixup_loss(h, w, y_a, y_b, lm, bias=bb, axes=axes, reduction=reduction,
                                                       backend=fn_backend, path=path)
        inputs = [t for t, name in zip((h, w, bb, lm), GRADS) if wanted[name]]
        go = grad_output_for(out, reduction)
        return out, (torch.autograd.grad(out, inputs, go) if inputs else ()), go

    out, got, grad_output = call(backend, False)
    base_out, base, _ = call(None, False)  # plain PyTorch in the same dtype
    true_out, truth, _ = call(None, True)
    assert out.dtype == dtype
    # A hidden gradient entry is its sample's incoming gradient times sums of
    # terms of size about 1. The weight, bias and lam entries sum over the
    # batch, each sample's share carrying the fp32 rounding of its
    # log-sum-exp (a relative 2^-24 |lse| in every softmax entry): where they
    # cancel to zero (one class), their error scales with the whole incoming
    # gradient.
    per_sample = float(grad_output.abs().max()) / (batch if reduction == "mean" else 1)
    # The sum over samples of each one's incoming gradient.
    whole_batch = float(grad_output.abs().sum()) * {"none": 1, "sum": batch, "mean": 1}[reduction]
    tag = (f"{backend} {path} {dtype} B={batch} C={num_classes} lam={lam_kind} bias={bias} {axes} {reduction} "
           f"{layout}")
    assert_matches_ground_truth(out, base_out, true_out, dtype, f"loss [{tag}]")
    names = [name for name in GRADS if wanted[name]]
    for name, g, bg, tg in zip(names, got, base, truth):
        assert g.shape == {"hidden": hidden, "weight": weight, "bias": b, "lam": lam}[name].shape
        grad_dtype = torch.float32 if name == "lam" else dtype
        assert_matches_ground_truth(g, bg, tg, grad_dtype, f"grad {name} [{tag}]",
                                    scale_floor=per_sample if name == "hidden" else whole_batch)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch,num_classes", SHAPES)
@pytest.mark.parametrize("lam_kind", LAM_KINDS)
def test_matches_reference(backend, device, dtype, batch, num_classes, lam_kind):
    for (axes, reduction), bias in itertools.product(itertools.product(AXES, REDUCTIONS), (True, False)):
        run_and_compare(backend, device, batch, num_classes, dtype, lam_kind, axes, reduction, bias=bias)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("grads", [("hidden",), ("weight",), ("bias",), ("lam",), ("hidden", "lam"),
                                   ("weight", "bias")], ids="+".join)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_partial_requires_grad(backend, device, grads, reduction):
    run_and_compare(backend, device, 37, 1000, torch.float32, "per_sample", "both", reduction, grads=grads)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("layout", ["transposed", "column_slice"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_non_contiguous_inputs(backend, device, layout, dtype):
    for axes in AXES:
        run_and_compare(backend, device, 37, 7, dtype, "per_sample", axes, "mean", layout=layout)


COMPILED = [p for p in BACKENDS if p.values[0] not in ("torch", "auto")]


@pytest.mark.parametrize("backend,device", COMPILED)
@pytest.mark.parametrize("path", ["factorised", "logits"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("features", [5, 64])
def test_both_paths_forced(backend, device, path, dtype, features):
    """Each path on shapes where "auto" would take the other one (B <= C and
    B > C), with the scores or logits kept from forward (D = 64) or
    recomputed in backward (D = 5, where keeping them would cost more than
    the inputs; the CPU op's rule)."""
    for (batch, num_classes), axes, bias in itertools.product(((37, 7), (19, 1000)), AXES, (True, False)):
        run_and_compare(backend, device, batch, num_classes, dtype, "per_sample", axes, "none", bias=bias,
                        path=path, features=features)


@pytest.mark.parametrize("backend,device", COMPILED)
@pytest.mark.parametrize("path", ["factorised", "logits"])
def test_many_blocks_and_tiles(backend, device, path, monkeypatch):
    """Batches that span several blocks of score rows in backward and several
    tiles in every direction. The CPU op blocks about 2^20 scores, the CUDA op
    2^24; the Triton kernels 64 x 64 tiles and (here, made small) blocks of 64
    rows of G."""
    if backend == "triton":
        from mixkernels.triton import infinite_class_mixup as triton_icm

        monkeypatch.setattr(triton_icm, "_BLOCK_VALUES", 64 * 150)
        batch = 150
    else:
        batch = 1100 if backend == "cpu" else 4200
    num_classes = batch + 50 if path == "factorised" else 40
    for axes in AXES:
        run_and_compare(backend, device, batch, num_classes, torch.float32, "per_sample", axes, "mean", path=path,
                        features=16)


def _compiled_loss_and_grads(backend, hidden, weight, b, y_a, y_b, lam, axes="both", reduction="mean",
                             path="auto"):
    leaves = [t.detach().clone().requires_grad_(True) if isinstance(t, torch.Tensor) else t
              for t in (hidden, weight, b, lam)]
    h, w, bb, lm = leaves
    loss = mixkernels.infinite_class_mixup_loss(h, w, y_a, y_b, lm, bias=bb, axes=axes, reduction=reduction,
                                                backend=backend, path=path)
    wanted = [t for t in leaves if isinstance(t, torch.Tensor)]
    return loss, torch.autograd.grad(loss.sum(), wanted)


@pytest.mark.parametrize("backend,device", COMPILED)
@pytest.mark.parametrize("path", ["factorised", "logits"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_edge_cases_are_exact(backend, device, path, dtype):
    """What icm.md says must be exact, on the kernels: a pair of one class
    (perm[i] = i, or y_a == y_b) mixes to exactly W[y] and gives lam exactly
    no gradient; with every pair of one class lam changes nothing, not a bit;
    lam = 1 (0) is exactly y_a's (y_b's) classifier alone, per batch and per
    pair; B = 1 is exactly zero; duplicate mixed classifiers are fine."""
    batch, num_classes = 6, 9
    hidden, weight, b, y, _, _ = make_inputs(batch, num_classes, dtype, device, "float")
    perm = torch.tensor([0, 2, 1, 3, 5, 4], device=device)  # fixed points 0 and 3
    y_b = y[perm]
    y_b[5] = y[5]  # and a same-class pair that is no fixed point
    same = (y == y_b).nonzero().flatten()
    lam = torch.tensor([0.3, 0.6, 0.2, 0.77, 0.5, 0.9], device=device)
    _, grads = _compiled_loss_and_grads(backend, hidden, weight, b, y, y_b, lam, path=path)
    assert torch.all(grads[-1][same] == 0)

    def loss_and_grads(*args, **kwargs):
        return _compiled_loss_and_grads(backend, *args, path=path, **kwargs)

    base_loss, base_grads = loss_and_grads(hidden, weight, b, y, y, 0.5)
    for other_lam in (0.0, 0.3, 1.0):
        loss, grads = loss_and_grads(hidden, weight, b, y, y, other_lam)
        assert torch.equal(loss, base_loss) and torch.equal(grads[0], base_grads[0])
    for lam, y_from_a in ((1.0, y), (0.0, y_b)):
        loss, grads = loss_and_grads(hidden, weight, b, y, y_b, lam)
        same_loss, same_grads = loss_and_grads(hidden, weight, b, y_from_a, y_from_a, lam)
        assert torch.equal(loss, same_loss)
        for g, g0 in zip(grads, same_grads):
            assert torch.equal(g, g0)
    lam_ends = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0], device=device)
    chosen = torch.where(lam_ends == 1, y, y_b)
    loss, grads = loss_and_grads(hidden, weight, b, y, y_b, lam_ends, reduction="none")
    same_loss, same_grads = loss_and_grads(hidden, weight, b, chosen, chosen, lam_ends, reduction="none")
    assert torch.equal(loss, same_loss)
    for g, g0 in zip(grads[:3], same_grads[:3]):
        assert torch.equal(g, g0)

    one = [t[:1] if isinstance(t, torch.Tensor) and t.shape[0] == batch else t for t in (hidden, y, y_b, lam)]
    for axes, reduction in itertools.product(AXES, REDUCTIONS):
        loss, grads = loss_and_grads(one[0], weight, b, one[1], one[2], one[3], axes=axes, reduction=reduction)
        assert torch.all(loss == 0) and all(torch.all(g == 0) for g in grads)

    y_a = torch.tensor([0, 1, 0, 2, 0, 1], device=device)
    y_b = torch.tensor([3, 2, 3, 2, 3, 0], device=device)  # pairs 0, 2 and 4 are the same (0, 3)
    out = mixkernels.infinite_class_mixup_loss(hidden, weight, y_a, y_b, 0.4, bias=b, reduction="none",
                                               backend=backend, path=path)
    ref = reference.infinite_class_mixup_loss(hidden, weight, y_a, y_b, 0.4, b, reduction="none")
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2 if dtype != torch.float32 else 1e-5, atol=1e-5)


def test_no_grad_anywhere_still_computes():
    hidden, weight, b, y_a, y_b, lam = make_inputs(5, 7, torch.float32, "cpu", "per_sample")
    with torch.no_grad():
        out = mixkernels.infinite_class_mixup_loss(hidden, weight, y_a, y_b, lam, bias=b)
    torch.testing.assert_close(out, reference.infinite_class_mixup_loss(hidden, weight, y_a, y_b, lam, b))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_mixed_targets_and_int32_labels(backend, device):
    hidden, weight, b, y_a, y_b, lam = make_inputs(37, 1000, torch.float32, device, "per_sample")
    expected = mixkernels.infinite_class_mixup_loss(hidden, weight, y_a, y_b, lam, bias=b, backend=backend)
    targets = mixkernels.MixedTargets(y_a, y_b, lam)
    torch.testing.assert_close(mixkernels.infinite_class_mixup_loss(hidden, weight, targets, bias=b,
                                                                    backend=backend), expected)
    torch.testing.assert_close(mixkernels.infinite_class_mixup_loss(hidden, weight, y_a.int(), y_b.int(), lam,
                                                                    bias=b, backend=backend), expected)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_inputs_not_modified_and_deterministic(backend, device):
    hidden, weight, b, y_a, y_b, lam = make_inputs(37, 1000, torch.bfloat16, device, "per_sample")
    leaves = [t.requires_grad_(True) for t in (hidden, weight, b, lam)]
    copies = [t.detach().clone() for t in (*leaves, y_a, y_b)]
    results = []
    for _ in range(2):
        out = mixkernels.infinite_class_mixup_loss(hidden, weight, y_a, y_b, lam, bias=b, backend=backend)
        results.append((out, *torch.autograd.grad(out, leaves)))
    for before, after in zip(copies, (*leaves, y_a, y_b)):
        assert torch.equal(before, after.detach()), "an input tensor was modified"
    for first, second in zip(*results):
        assert torch.equal(first, second), "two identical calls gave different bits"


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_nan_and_inf_propagate_like_reference(backend, device):
    hidden, weight, b, y_a, y_b, lam = make_inputs(3, 7, torch.float32, device, "per_sample")
    hidden[1, 4] = float("nan")
    weight[y_a[0], 0] = float("inf")
    out = mixkernels.infinite_class_mixup_loss(hidden, weight, y_a, y_b, lam, bias=b, reduction="none",
                                               backend=backend)
    ref = reference.infinite_class_mixup_loss(hidden, weight, y_a, y_b, lam, b, reduction="none")
    assert torch.equal(torch.isnan(out), torch.isnan(ref))
    torch.testing.assert_close(out, ref, equal_nan=True)


def test_float64_runs_on_the_reference():
    hidden, weight, b, y_a, y_b, lam = make_inputs(3, 7, torch.float64, "cpu", "float")
    out = mixkernels.infinite_class_mixup_loss(hidden, weight, y_a, y_b, lam, bias=b, backend="torch")
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, reference.infinite_class_mixup_loss(hidden, weight, y_a, y_b, lam, b),
                               rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["cpu", "triton", "cuda"])
def test_compiled_backends_without_kernels_say_so(backend):
    if backend in ICM_BACKENDS:
        pytest.skip(f"{backend} has ICM kernels")
    hidden, weight, b, y_a, y_b, lam = make_inputs(3, 7, torch.float32, "cpu", "float")
    with pytest.raises(RuntimeError, match=backend):
        mixkernels.infinite_class_mixup_loss(hidden, weight, y_a, y_b, lam, bias=b, backend=backend)


def test_autocast_casts_operands_like_linear_and_returns_fp32():
    hidden, weight, b, y_a, y_b, lam = make_inputs(6, 7, torch.float32, "cpu", "per_sample")
    weight.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mixkernels.infinite_class_mixup_loss(hidden, weight, y_a, y_b, lam, bias=b)
    assert out.dtype == torch.float32
    expected = reference.infinite_class_mixup_loss(hidden.bfloat16(), weight.bfloat16(), y_a, y_b, lam,
                                                   b.bfloat16())
    torch.testing.assert_close(out.to(torch.bfloat16), expected)
    in_fp32 = reference.infinite_class_mixup_loss(hidden.bfloat16().float(), weight.bfloat16().float(), y_a, y_b,
                                                  lam, b.bfloat16().float())
    assert torch.equal(out, in_fp32), "the loss is computed in fp32 from the bf16 operands"
    out.backward()
    assert weight.grad.dtype == torch.float32 and torch.isfinite(weight.grad).all()


# --------------------------------------------------------------------------- IC-RegMixup

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_ic_regmixup_matches_reference(dtype, reduction):
    hidden, weight, b, y_a, y_b, lam = make_inputs(37, 1000, dtype, "cpu", "per_sample")
    clean_logits = (3 * torch.randn(37, 1000)).to(dtype)
    y = torch.randint(0, 1000, (37,))
    leaves = [t.requires_grad_(True) for t in (clean_logits, hidden, weight, b, lam)]

    def call(as_fp64, fn):
        args = [t.detach().double().requires_grad_(True) if as_fp64 else t for t in leaves]
        z, h, w, bb, lm = args
        out = fn(z, y, h, w, y_a, y_b, lm, bias=bb, gamma=0.5, axes="both", label_smoothing=0.1,
                 reduction=reduction)
        return out, torch.autograd.grad(out, args, grad_output_for(out, reduction))

    out, grads = call(False, mixkernels.ic_regmixup_loss)
    base_out, base = call(False, reference.ic_regmixup_loss)
    true_out, truth = call(True, reference.ic_regmixup_loss)
    assert out.dtype == dtype
    assert_matches_ground_truth(out, base_out, true_out, dtype, f"ic_regmixup loss {dtype} {reduction}")
    for name, g, bg, tg in zip(("clean_logits", "hidden", "weight", "bias", "lam"), grads, base, truth):
        assert_matches_ground_truth(g, bg, tg, torch.float32 if name == "lam" else dtype, f"grad {name}",
                                    scale_floor=0.37 / 37)


def test_ic_regmixup_with_mixed_targets_and_gamma_zero():
    hidden, weight, b, y_a, y_b, lam = make_inputs(5, 7, torch.float32, "cpu", "per_sample")
    clean_logits = torch.randn(5, 7)
    y = torch.randint(0, 7, (5,))
    targets = mixkernels.MixedTargets(y_a, y_b, lam)
    out = mixkernels.ic_regmixup_loss(clean_logits, y, hidden, weight, targets, bias=b, gamma=0.0)
    torch.testing.assert_close(out, torch.nn.functional.cross_entropy(clean_logits, y))
    out = mixkernels.ic_regmixup_loss(clean_logits, y, hidden, weight, targets, bias=b, gamma=2.0, axes="col")
    expected = torch.nn.functional.cross_entropy(clean_logits, y) + 2.0 * mixkernels.infinite_class_mixup_loss(
        hidden, weight, targets, bias=b, axes="col")
    torch.testing.assert_close(out, expected)


# --------------------------------------------------------------------------- the module

def test_module_uses_the_classifier_without_owning_it():
    fc = nn.Linear(FEATURES, 7)
    criterion = mixkernels.InfiniteClassMixupLoss(fc, axes="row", weight=0.5)
    hidden, _, _, y_a, y_b, lam = make_inputs(6, 7, torch.float32, "cpu", "per_sample")
    out = criterion(hidden, y_a, y_b, lam)
    expected = 0.5 * mixkernels.infinite_class_mixup_loss(hidden, fc.weight, y_a, y_b, lam, bias=fc.bias, axes="row")
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(criterion(hidden, mixkernels.MixedTargets(y_a, y_b, lam)), expected)
    out.backward()
    assert fc.weight.grad is not None and fc.bias.grad is not None

    assert list(criterion.parameters()) == [] and criterion.state_dict() == {}
    assert criterion.classifier is fc and "classifier" not in dict(criterion.named_children())

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Linear(5, FEATURES)
            self.fc = nn.Linear(FEATURES, 7)
            self.icm = mixkernels.InfiniteClassMixupLoss(self.fc)

    model = Model()
    assert len(list(model.named_parameters(remove_duplicate=False))) == 4
    assert set(model.state_dict()) == {"backbone.weight", "backbone.bias", "fc.weight", "fc.bias"}
    # The model moved or converted: the loss reads the classifier's current parameters.
    model.double()
    out = model.icm(model.backbone(torch.randn(6, 5, dtype=torch.float64)), y_a, y_b, lam)
    assert out.dtype == torch.float64
    assert "not owned" in repr(model.icm)
    # A deep copy of the whole model keeps the loss pointing at the copy's classifier.
    twin = copy.deepcopy(model)
    assert twin.icm.classifier is twin.fc


def test_module_classifier_without_bias_and_reassignment():
    fc = nn.Linear(FEATURES, 7, bias=False)
    criterion = mixkernels.InfiniteClassMixupLoss(fc, reduction="none")
    hidden, _, _, y_a, y_b, lam = make_inputs(6, 7, torch.float32, "cpu", "float")
    torch.testing.assert_close(criterion(hidden, y_a, y_b, lam),
                               reference.infinite_class_mixup_loss(hidden, fc.weight, y_a, y_b, lam, None,
                                                                   reduction="none"))
    other = nn.Linear(FEATURES, 7)
    criterion.classifier = other
    assert criterion.classifier is other and list(criterion.parameters()) == []
    torch.testing.assert_close(criterion(hidden, y_a, y_b, lam),
                               reference.infinite_class_mixup_loss(hidden, other.weight, y_a, y_b, lam, other.bias,
                                                                   reduction="none"))
    with pytest.raises(TypeError, match="classifier"):
        criterion.classifier = torch.randn(7, FEATURES)
    with pytest.raises(TypeError, match="classifier"):
        mixkernels.InfiniteClassMixupLoss(nn.ReLU())
    with pytest.raises(ValueError, match="axes"):
        mixkernels.InfiniteClassMixupLoss(fc, axes="diagonal")
    with pytest.raises(TypeError, match="weight"):
        mixkernels.InfiniteClassMixupLoss(fc, weight=torch.ones(7))
