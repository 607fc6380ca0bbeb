"""The Infinite Class Mixup specification (mixkernels.reference): gradcheck in
fp64, the public code's dense form, the closed-form gradients of
shared/notes/icm.md section 5, and the edge cases that must be exact."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from mixkernels import reference

AXES = ("both", "row", "col")
REDUCTIONS = ("none", "mean", "sum")


def make_inputs(batch=5, num_classes=6, features=3, *, lam_kind="per_sample", bias=True, dtype=torch.float64):
    hidden = torch.randn(batch, features, dtype=dtype)
    weight = torch.randn(num_classes, features, dtype=dtype)
    b = torch.randn(num_classes, dtype=dtype) if bias else None
    y_a = torch.randint(0, num_classes, (batch,))
    y_b = y_a[torch.randperm(batch)]
    if batch > 2:
        y_b[0] = y_a[0]  # a same-class pair
        y_b[1] = (y_a[1] + 1) % num_classes  # and a different-class one
    if lam_kind == "float":
        lam = 0.3
    elif lam_kind == "scalar_tensor":
        lam = torch.tensor(0.65, dtype=dtype)
    else:
        lam = 0.1 + 0.8 * torch.rand(batch, dtype=dtype)
    return hidden, weight, b, y_a, y_b, lam


def infinite_class_mixup_loss_closed_form_grads(hidden, weight, y_a, y_b, lam, bias=None, axes="both",
                                                reduction="mean", grad_output=1.0):
    """The loss and its gradients ``(d hidden, d weight, d bias, d lam)`` in closed form
    (icm.md section 5), in plain torch without autograd: the spec the kernels implement.

    ``G = dL/dS`` has the row part ``g_b (P[b, k] - [b == k])`` and the column part
    ``g_k (Q[b, k] - [b == k])``, with P, Q the row- and column-softmax of S and
    ``g`` each sample's weight in the reduction (``grad_output / B`` for mean).
    Then ``dH = G W~``, ``dW~ = G^T H`` scattered into dW with weights lam and
    1 - lam, ``db~ = G^T 1`` scattered alike, and
    ``dlam_k = dW~_k . (W[y_a_k] - W[y_b_k]) + db~_k (b[y_a_k] - b[y_b_k])``.
    """
    with torch.no_grad():
        batch, num_classes = hidden.shape[0], weight.shape[0]
        per_pair = isinstance(lam, torch.Tensor) and lam.dim() == 1
        lam_vec = (lam.expand(batch) if isinstance(lam, torch.Tensor)
                   else torch.full((batch,), float(lam), dtype=hidden.dtype)).to(hidden.dtype)
        a, c = y_a.long(), y_b.long()
        w_mixed = lam_vec[:, None] * weight[a] + (1 - lam_vec[:, None]) * weight[c]
        scores = hidden @ w_mixed.T
        if bias is not None:
            scores = scores + lam_vec * bias[a] + (1 - lam_vec) * bias[c]
        eye = torch.eye(batch, dtype=hidden.dtype)
        row_loss = torch.logsumexp(scores, 1) - scores.diagonal()
        col_loss = torch.logsumexp(scores, 0) - scores.diagonal()
        per_sample = torch.zeros(batch, dtype=hidden.dtype)
        g = torch.as_tensor(grad_output, dtype=hidden.dtype)
        if reduction == "mean":
            g = g / batch
        g = g.expand(batch)
        grad_scores = torch.zeros(batch, batch, dtype=hidden.dtype)
        if axes in ("both", "row"):
            per_sample += row_loss
            grad_scores += g[:, None] * (torch.softmax(scores, 1) - eye)
        if axes in ("both", "col"):
            per_sample += col_loss
            grad_scores += g[None, :] * (torch.softmax(scores, 0) - eye)
        loss = reference.reduce_loss(per_sample, reduction)

        grad_hidden = grad_scores @ w_mixed
        grad_w_mixed = grad_scores.T @ hidden
        grad_b_mixed = grad_scores.sum(0)
        grad_weight = torch.zeros_like(weight)
        grad_weight.index_add_(0, a, lam_vec[:, None] * grad_w_mixed)
        grad_weight.index_add_(0, c, (1 - lam_vec[:, None]) * grad_w_mixed)
        grad_lam = (grad_w_mixed * (weight[a] - weight[c])).sum(1)
        grad_bias = None
        if bias is not None:
            grad_bias = torch.zeros(num_classes, dtype=hidden.dtype)
            grad_bias.index_add_(0, a, lam_vec * grad_b_mixed)
            grad_bias.index_add_(0, c, (1 - lam_vec) * grad_b_mixed)
            grad_lam = grad_lam + grad_b_mixed * (bias[a] - bias[c])
        if not per_pair:
            grad_lam = grad_lam.sum()
        return loss, (grad_hidden, grad_weight, grad_bias, grad_lam)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("lam_kind", ["scalar_tensor", "per_sample"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("axes", AXES)
def test_gradcheck(axes, reduction, lam_kind, bias):
    hidden, weight, b, y_a, y_b, lam = make_inputs(4, 5, 3, lam_kind=lam_kind, bias=bias)
    y_a[3], y_b[3] = y_a[2], y_b[2]  # and a duplicate mixed classifier when lam is per batch
    inputs = [t.requires_grad_(True) for t in (hidden, weight, b, lam) if t is not None]

    def fn(*args):
        h, w = args[0], args[1]
        bb = args[2] if bias else None
        return reference.infinite_class_mixup_loss(h, w, y_a, y_b, args[-1], bb, axes, reduction)

    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("lam_kind", ["float", "scalar_tensor", "per_sample"])
def test_closed_form_gradients_match_autograd(lam_kind, bias):
    for axes, reduction in itertools.product(AXES, REDUCTIONS):
        hidden, weight, b, y_a, y_b, lam = make_inputs(7, 5, 4, lam_kind=lam_kind, bias=bias)
        leaves = [t.requires_grad_(True) for t in (hidden, weight, b, lam) if isinstance(t, torch.Tensor)]
        loss = reference.infinite_class_mixup_loss(hidden, weight, y_a, y_b, lam, b, axes, reduction)
        grad_output = torch.linspace(-1.0, 2.0, 7, dtype=torch.float64) if reduction == "none" \
            else torch.tensor(0.37, dtype=torch.float64)
        grads = torch.autograd.grad(loss, leaves, grad_output)
        expected_loss, expected = infinite_class_mixup_loss_closed_form_grads(
            hidden, weight, y_a, y_b, lam, b, axes, reduction, grad_output)
        torch.testing.assert_close(loss, expected_loss, rtol=1e-12, atol=1e-12)
        expected = [g for g, t in zip(expected, (hidden, weight, b, lam)) if isinstance(t, torch.Tensor)]
        for name, got, want in zip(("hidden", "weight", "bias", "lam"), grads, expected):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=f"grad {name} {axes} {reduction}")


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("lam_kind", ["float", "scalar_tensor", "per_sample"])
def test_dense_form_is_the_factorised_form(lam_kind, bias):
    """The public code's Z @ Y~.T through the C-way logits gives the same loss and gradients."""
    for axes, reduction in itertools.product(AXES, REDUCTIONS):
        hidden, weight, b, y_a, y_b, lam = make_inputs(9, 6, 4, lam_kind=lam_kind, bias=bias)
        leaves = [t.requires_grad_(True) for t in (hidden, weight, b, lam) if isinstance(t, torch.Tensor)]
        results = []
        for fn in (reference.infinite_class_mixup_loss, reference.infinite_class_mixup_loss_dense):
            loss = fn(hidden, weight, y_a, y_b, lam, b, axes, reduction)
            results.append((loss, *torch.autograd.grad(loss.sum(), leaves)))
        for got, want in zip(*results):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_is_two_cross_entropies_of_the_mixed_classifier_scores():
    """icm.md 1.3-1.4: S[b, k] = h_b . W~_k + b~_k, loss CE(S, I) + CE(S.T, I) with mean reduction."""
    hidden, weight, b, y_a, y_b, lam = make_inputs(6, 4, 3)
    scores = torch.empty(6, 6, dtype=torch.float64)
    for row, col in itertools.product(range(6), repeat=2):
        w_k = lam[col] * weight[y_a[col]] + (1 - lam[col]) * weight[y_b[col]]
        b_k = lam[col] * b[y_a[col]] + (1 - lam[col]) * b[y_b[col]]
        scores[row, col] = hidden[row] @ w_k + b_k
    target = torch.arange(6)
    torch.testing.assert_close(reference.icm_scores(hidden, weight, y_a, y_b, lam, b), scores)
    expected = {"row": F.cross_entropy(scores, target), "col": F.cross_entropy(scores.T, target)}
    expected["both"] = expected["row"] + expected["col"]
    for axes, value in expected.items():
        torch.testing.assert_close(reference.infinite_class_mixup_loss(hidden, weight, y_a, y_b, lam, b, axes), value)
    # Probability targets I_B, as the public code passes them, are the same loss.
    eye = torch.eye(6, dtype=torch.float64)
    torch.testing.assert_close(expected["both"], F.cross_entropy(scores, eye) + F.cross_entropy(scores.T, eye))
    per_sample = reference.infinite_class_mixup_loss(hidden, weight, y_a, y_b, lam, b, reduction="none")
    torch.testing.assert_close(per_sample, F.cross_entropy(scores, target, reduction="none")
                               + F.cross_entropy(scores.T, target, reduction="none"))
    torch.testing.assert_close(per_sample.sum(),
                               reference.infinite_class_mixup_loss(hidden, weight, y_a, y_b, lam, b, reduction="sum"))


# --------------------------------------------------------------------------- exact edge cases

def _loss_and_grads(hidden, weight, y_a, y_b, lam, bias, axes="both", reduction="mean"):
    leaves = [t.detach().clone().requires_grad_(True) if isinstance(t, torch.Tensor) else t
              for t in (hidden, weight, bias, lam)]
    h, w, b, lm = leaves
    loss = reference.infinite_class_mixup_loss(h, w, y_a, y_b, lm, b, axes, reduction)
    wanted = [t for t in leaves if isinstance(t, torch.Tensor)]
    return loss, torch.autograd.grad(loss.sum(), wanted)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_self_pairs_and_same_class_pairs_use_the_plain_classifier(dtype):
    """perm[i] = i (and any y_a == y_b): W~ is exactly W[y], b~ exactly b[y], and lam
    gets exactly no gradient from that pair."""
    batch = 6
    hidden, weight, b, y, _, _ = make_inputs(batch, 4, 3, dtype=dtype)
    perm = torch.tensor([0, 2, 1, 3, 5, 4])  # fixed points 0 and 3
    y_b = y[perm]
    y_b[5] = y[5]  # and a same-class pair that is no fixed point
    lam = torch.tensor([0.3, 0.6, 0.2, 0.77, 0.5, 0.9], dtype=dtype)
    w_mixed, b_mixed = reference.mixed_classifier(weight, y, y_b, lam, b, torch.float32)
    same = (y == y_b).nonzero().flatten()
    assert {0, 3, 5} <= set(same.tolist())
    assert torch.equal(w_mixed[same], weight[y[same]].float())
    assert torch.equal(b_mixed[same], b[y[same]].float())
    lam_leaf = lam.clone().requires_grad_(True)
    loss = reference.infinite_class_mixup_loss(hidden, weight, y, y_b, lam_leaf, b)
    (grad_lam,) = torch.autograd.grad(loss, lam_leaf)
    assert torch.all(grad_lam[same] == 0)
    # Every pair the same class: lam does not change the loss or hidden's gradient by
    # a bit; weight's and bias's gradients are lam * g + (1 - lam) * g, g up to rounding.
    base = _loss_and_grads(hidden, weight, y, y, 0.5, b)
    for other_lam in (0.0, 0.3, 1.0, torch.rand(batch, dtype=dtype)):
        loss, grads = _loss_and_grads(hidden, weight, y, y, other_lam, b)
        assert torch.equal(loss, base[0])
        assert torch.equal(grads[0], base[1][0])
        for g, g0 in zip(grads[1:3], base[1][1:3]):
            torch.testing.assert_close(g, g0)
        if isinstance(other_lam, torch.Tensor):
            assert torch.all(grads[-1] == 0)


def test_lam_one_and_zero_select_one_classifier():
    """lam = 1 is exactly the classifier of y_a alone, lam = 0 that of y_b alone,
    per batch and per pair, in the loss and every gradient."""
    hidden, weight, b, y_a, y_b, _ = make_inputs(7, 5, 4, dtype=torch.float32)
    for lam, y_from_a in ((1.0, y_a), (torch.tensor(0.0), y_b)):
        loss, grads = _loss_and_grads(hidden, weight, y_a, y_b, lam, b)
        same, same_grads = _loss_and_grads(hidden, weight, y_from_a, y_from_a, lam, b)
        assert torch.equal(loss, same)
        for g, g0 in zip(grads[:3], same_grads[:3]):
            assert torch.equal(g, g0)
    lam = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    chosen = torch.where(lam == 1, y_a, y_b)
    loss, grads = _loss_and_grads(hidden, weight, y_a, y_b, lam, b, reduction="none")
    same, same_grads = _loss_and_grads(hidden, weight, chosen, chosen, lam, b, reduction="none")
    assert torch.equal(loss, same)
    for g, g0 in zip(grads[:3], same_grads[:3]):
        assert torch.equal(g, g0)


@pytest.mark.parametrize("axes", AXES)
def test_batch_of_one_is_exactly_zero(axes):
    hidden, weight, b, y_a, y_b, lam = make_inputs(1, 5, 3, dtype=torch.float32)
    for reduction in REDUCTIONS:
        loss, grads = _loss_and_grads(hidden, weight, y_a, y_b, lam, b, axes, reduction)
        assert torch.all(loss == 0)
        assert all(torch.all(g == 0) for g in grads)


def test_duplicate_mixed_classifiers():
    """Pairs with the same (y_a, y_b) and lam give identical columns of S; the row term
    is then a cross-entropy over the unique classifiers with a log(multiplicity)
    offset (icm.md 1.7)."""
    hidden, weight, b, _, _, _ = make_inputs(6, 4, 3)
    y_a = torch.tensor([0, 1, 0, 2, 0, 1])
    y_b = torch.tensor([3, 2, 3, 2, 3, 0])  # pairs 0, 2 and 4 are the same (0, 3)
    lam = 0.4
    scores = reference.icm_scores(hidden, weight, y_a, y_b, lam, b)
    assert torch.equal(scores[:, 0], scores[:, 2]) and torch.equal(scores[:, 0], scores[:, 4])
    unique = [0, 1, 3, 5]
    multiplicity = torch.tensor([3.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    owner = torch.tensor([0, 1, 0, 2, 0, 3])  # column of each sample's own classifier among the unique ones
    offset_logits = scores[:, unique] + multiplicity.log()
    expected_rows = torch.logsumexp(offset_logits, 1) - scores.diagonal()
    torch.testing.assert_close(
        reference.infinite_class_mixup_loss(hidden, weight, y_a, y_b, lam, b, "row", "none"), expected_rows)
    torch.testing.assert_close(expected_rows, F.cross_entropy(offset_logits, owner, reduction="none")
                               + multiplicity[owner].log())
    loss, grads = _loss_and_grads(hidden, weight, y_a, y_b, torch.tensor(lam, dtype=torch.float64), b)
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)


def test_bias_is_trained_by_the_row_term_only_and_absent_classes_get_nothing():
    hidden, weight, b, _, _, lam = make_inputs(5, 9, 3)
    y_a = torch.tensor([0, 1, 2, 3, 0])
    y_b = torch.tensor([1, 2, 3, 0, 4])  # classes 5..8 are absent
    grads = {axes: _loss_and_grads(hidden, weight, y_a, y_b, lam, b, axes)[1] for axes in AXES}
    grad_bias = {axes: g[2] for axes, g in grads.items()}
    torch.testing.assert_close(grad_bias["both"], grad_bias["row"], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad_bias["col"], torch.zeros_like(grad_bias["col"]), rtol=0, atol=1e-14)
    for g in grads.values():
        assert torch.all(g[1][5:] == 0) and torch.all(g[2][5:] == 0)
    # The column term is invariant to b~: adding any bias leaves it unchanged.
    col = reference.infinite_class_mixup_loss(hidden, weight, y_a, y_b, lam, None, "col")
    torch.testing.assert_close(reference.infinite_class_mixup_loss(hidden, weight, y_a, y_b, lam, b, "col"), col)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_computes_in_fp32_returns_input_dtype(dtype):
    hidden, weight, b, y_a, y_b, lam = make_inputs(8, 5, 6, dtype=dtype)
    out = reference.infinite_class_mixup_loss(hidden, weight, y_a, y_b, lam, b)
    assert out.dtype == dtype
    in_fp32 = reference.infinite_class_mixup_loss(hidden.float(), weight.float(), y_a, y_b, lam.float(), b.float())
    assert out == in_fp32.to(dtype)


# --------------------------------------------------------------------------- IC-RegMixup

@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_ic_regmixup_is_clean_cross_entropy_plus_gamma_icm(reduction):
    hidden, weight, b, y_a, y_b, lam = make_inputs(5, 4, 3)
    clean_logits = torch.randn(5, 4, dtype=torch.float64)
    y = y_a
    got = reference.ic_regmixup_loss(clean_logits, y, hidden, weight, y_a, y_b, lam, bias=b, gamma=0.7,
                                     axes="row", reduction=reduction)
    expected = F.cross_entropy(clean_logits, y, reduction=reduction) + 0.7 * reference.infinite_class_mixup_loss(
        hidden, weight, y_a, y_b, lam, b, "row", reduction)
    torch.testing.assert_close(got, expected)


def test_ic_regmixup_gradcheck():
    hidden, weight, b, y_a, y_b, lam = make_inputs(4, 5, 3)
    clean_logits = torch.randn(4, 5, dtype=torch.float64)
    inputs = [t.requires_grad_(True) for t in (clean_logits, hidden, weight, b, lam)]

    def fn(z, h, w, bb, lm):
        return reference.ic_regmixup_loss(z, y_a, h, w, y_a, y_b, lm, bias=bb, gamma=1.3, label_smoothing=0.1)

    assert torch.autograd.gradcheck(fn, inputs)

