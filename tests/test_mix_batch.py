"""mix_batch on every compiled backend against mixkernels.reference.

Forward and every gradient (x, lam) in fp32, bf16 and fp16, odd shapes,
per-batch and per-sample lam, permutations with cycles, grad_output other than
1, partial requires_grad, channels-last and strided batches, in-place mixing.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mixkernels
from mixkernels import reference
from tests.backend_cases import compiled_backends_for_tests
from tests.numerics import assert_matches_ground_truth

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
BACKENDS = compiled_backends_for_tests()
SHAPES = [(1,), (3, 7), (37, 31), (4, 3, 5, 6), (1, 1000)]
LAM_KINDS = ["float", "scalar_tensor", "per_sample"]


def permutation(batch, kind, device):
    if kind == "reverse":  # timm's pairing: every cycle has length 2 (or 1 in the middle)
        return torch.arange(batch - 1, -1, -1, device=device)
    if kind == "cycles" and batch >= 5:  # a 3-cycle, a 2-cycle and fixed points
        perm = torch.arange(batch, device=device)
        perm[:3] = torch.tensor([1, 2, 0])
        perm[3:5] = torch.tensor([4, 3])
        return perm
    return torch.randperm(batch, device=device)


def make_lam(batch, kind, device):
    if kind == "float":
        return 0.3
    if kind == "scalar_tensor":
        return torch.tensor(0.65, device=device)
    lam = torch.rand(batch, device=device)
    lam[0] = 1.0
    return lam


def make_batch(shape, dtype, device, layout):
    if layout == "channels_last":
        return torch.randn(shape, device=device).to(dtype).to(memory_format=torch.channels_last)
    if layout == "strided":  # every other element of a wider batch
        wide = torch.randn(*shape[:-1], 2 * shape[-1], device=device).to(dtype)
        return wide[..., ::2]
    if layout == "batch_slice":  # rows of a larger batch: sample blocks dense, batch stride larger
        return torch.randn(2 * shape[0], *shape[1:], device=device).to(dtype)[::2]
    return torch.randn(shape, device=device).to(dtype)


def run_and_compare(backend, device, shape, dtype, lam_kind, perm_kind, *, x_grad=True, lam_grad=True,
                    layout="contiguous"):
    x = make_batch(shape, dtype, device, layout)
    perm = permutation(shape[0], perm_kind, device)
    lam = make_lam(shape[0], lam_kind, device)
    lam_is_tensor = isinstance(lam, torch.Tensor)
    lam_grad = lam_grad and lam_is_tensor
    grad_output = torch.randn(shape, device=device)

    def call(fn_backend, compute_dtype):
        xi = x.detach().to(compute_dtype).requires_grad_(x_grad)
        lam_in = (lam.detach().to(torch.float64 if compute_dtype == torch.float64 else lam.dtype)
                  .requires_grad_(lam_grad)) if lam_is_tensor else lam
        out = mixkernels.mix_batch(xi, perm, lam_in, backend=fn_backend)
        inputs = [t for t, wanted in ((xi, x_grad), (lam_in, lam_grad)) if wanted]
        grads = torch.autograd.grad(out, inputs, grad_output.to(out.dtype)) if inputs else ()
        return out, grads

    out, grads = call(backend, dtype)
    base_out, base_grads = call("torch", dtype)
    true_out, true_grads = call("torch", torch.float64)
    tag = f"{backend} {dtype} {shape} lam={lam_kind} perm={perm_kind} {layout}"
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last), f"layout lost [{tag}]"
    assert_matches_ground_truth(out, base_out, true_out, dtype, f"mixed batch [{tag}]")
    # grad lam is a difference of two sums of g * x over a sample (or the whole
    # batch for a 0-d lam): its rounding error scales with those sums (about
    # 1 % of an ulp of their magnitude in fp32 here), not with the result,
    # which can cancel.
    summands = (grad_output * x.float()).abs() + (grad_output * x.float()[perm]).abs()
    per_sample = summands.reshape(shape[0], -1).sum(1)
    lam_scale = 0.01 * float(per_sample.sum() if lam_kind == "scalar_tensor" else per_sample.max())
    names = [(n, d, f) for n, d, f, wanted in (("grad x", dtype, 1.0, x_grad),
                                                ("grad lam", torch.float32, lam_scale, lam_grad)) if wanted]
    for (name, grad_dtype, floor), g, bg, tg in zip(names, grads, base_grads, true_grads):
        assert_matches_ground_truth(g, bg, tg, grad_dtype, f"{name} [{tag}]", scale_floor=floor)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("lam_kind", LAM_KINDS)
def test_matches_reference(backend, device, dtype, shape, lam_kind):
    for perm_kind in ("reverse", "cycles", "random"):
        run_and_compare(backend, device, shape, dtype, lam_kind, perm_kind)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("layout", ["channels_last", "strided", "batch_slice"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_layouts(backend, device, layout, dtype):
    run_and_compare(backend, device, (5, 3, 4, 6), dtype, "per_sample", "cycles", layout=layout)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("x_grad,lam_grad", [(True, False), (False, True)])
def test_partial_requires_grad(backend, device, x_grad, lam_grad):
    run_and_compare(backend, device, (37, 31), torch.float32, "per_sample", "random", x_grad=x_grad,
                    lam_grad=lam_grad)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("perm_kind", ["reverse", "cycles", "random", "identity"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_inplace_any_permutation(backend, device, perm_kind, layout, dtype):
    """In place is exact for any cycle structure: a naive in-place gather would
    read rows that were already overwritten."""
    x = make_batch((7, 3, 4, 5), dtype, device, layout)
    perm = torch.arange(7, device=device) if perm_kind == "identity" else permutation(7, perm_kind, device)
    lam = torch.rand(7, device=device)
    expected = mixkernels.mix_batch(x, perm, lam, backend=backend)
    storage = x.data_ptr()
    with torch.no_grad():
        result = mixkernels.mix_batch(x, perm, lam, inplace=True, backend=backend)
    assert result is x and x.data_ptr() == storage
    torch.testing.assert_close(x, expected, rtol=0, atol=0)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_inputs_not_modified_and_deterministic(backend, device):
    x = torch.randn(6, 3, 8, 8, device=device, requires_grad=True)
    perm, lam = torch.randperm(6, device=device), torch.rand(6, device=device, requires_grad=True)
    copies = [t.detach().clone() for t in (x, perm, lam)]
    results = []
    for _ in range(2):
        out = mixkernels.mix_batch(x, perm, lam, backend=backend)
        results.append((out, *torch.autograd.grad(out, (x, lam), torch.ones_like(out))))
    for before, after in zip(copies, (x, perm, lam)):
        assert torch.equal(before, after.detach())
    for first, second in zip(*results):
        assert torch.equal(first, second)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_int32_perm_and_nan_propagation(backend, device):
    x = torch.randn(4, 10, device=device)
    x[1, 3] = float("nan")
    x[2, 5] = float("inf")
    perm = torch.tensor([3, 2, 1, 0], device=device, dtype=torch.int32)
    out = mixkernels.mix_batch(x, perm, 0.25, backend=backend)
    torch.testing.assert_close(out, reference.mix_batch(x, perm, 0.25), equal_nan=True)


@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 12), row=st.integers(1, 200), dtype=st.sampled_from(DTYPES),
       lam_kind=st.sampled_from(LAM_KINDS), perm_kind=st.sampled_from(["reverse", "random", "cycles"]))
def test_cpu_kernel_random_shapes(batch, row, dtype, lam_kind, perm_kind):
    run_and_compare("cpu", "cpu", (batch, row), dtype, lam_kind, perm_kind)


def test_reference_gradcheck():
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    lam = torch.rand(5, dtype=torch.float64, requires_grad=True)
    perm = torch.tensor([2, 0, 1, 4, 3])
    assert torch.autograd.gradcheck(lambda a, b: reference.mix_batch(a, perm, b), (x, lam))


def test_inplace_refuses_when_autograd_needs_x():
    x = torch.randn(4, 5, requires_grad=True)
    with pytest.raises(ValueError, match="inplace"):
        mixkernels.mix_batch(x, torch.randperm(4), 0.5, inplace=True)


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
def test_bad_input(backend):
    x = torch.randn(4, 5)
    cases = [
        ("perm", ValueError, (x, torch.tensor([0, 1, 1, 2]), 0.5)),
        ("perm", ValueError, (x, torch.tensor([0, 1, 2]), 0.5)),
        ("perm", TypeError, (x, torch.tensor([0.0, 1.0, 2.0, 3.0]), 0.5)),
        ("lam", ValueError, (x, torch.randperm(4), 1.2)),
        ("lam", ValueError, (x, torch.randperm(4), torch.rand(3))),
        ("x", ValueError, (torch.randn(0, 5), torch.zeros(0, dtype=torch.long), 0.5)),
        ("x", TypeError, (torch.randint(0, 3, (4, 5)), torch.randperm(4), 0.5)),
        ("x", ValueError, (torch.tensor(1.0), torch.randperm(1), 0.5)),
    ]
    for name, error, args in cases:
        with pytest.raises(error, match=name):
            mixkernels.mix_batch(*args, backend=backend)
    before = x.clone()
    with pytest.raises(ValueError):
        mixkernels.mix_batch(x, torch.tensor([0, 1, 1, 2]), 0.5, inplace=True, backend=backend)
    assert torch.equal(before, x), "a rejected in-place call modified x"


def test_direct_op_calls_are_guarded():
    x, w = torch.randn(4, 5), torch.rand(4)
    ops = torch.ops.mixkernels
    with pytest.raises(ValueError, match="permutation"):
        ops.mix_rows(x, torch.tensor([0, 0, 1, 2]), w, w)
    with pytest.raises(IndexError, match="src"):
        ops.mix_rows(x, torch.tensor([0, 1, 2, 9]), w, w)
    with pytest.raises(RuntimeError, match="w_src"):
        ops.mix_rows(x, torch.randperm(4), w, w[:2])
    with pytest.raises(RuntimeError, match="grad"):
        ops.mix_rows_dots(torch.randn(4, 6), x, torch.randperm(4))


def _ops_for(backend):
    if backend == "triton":
        from mixkernels.ops.mix_batch import mix_rows_dots_triton, mix_rows_triton, mix_rows_triton_

        return mix_rows_triton._opoverload, mix_rows_triton_._opoverload, mix_rows_dots_triton._opoverload
    ops = torch.ops.mixkernels
    return ops.mix_rows.default, ops.mix_rows_.default, ops.mix_rows_dots.default


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_opcheck(backend, device, dtype):
    mix_rows_op, inplace_op, dots_op = _ops_for(backend)
    x = torch.randn(5, 33, device=device, dtype=dtype, requires_grad=True)
    src = torch.tensor([1, 2, 0, 4, 3], device=device)
    w_self = torch.rand(5, device=device, requires_grad=True)
    w_src = torch.rand(5, device=device, requires_grad=True)
    torch.library.opcheck(mix_rows_op, (x, src, w_self, w_src))
    torch.library.opcheck(inplace_op, (x.detach().clone(), src, w_self.detach(), w_src.detach()))
    torch.library.opcheck(dots_op, (torch.randn_like(x).detach(), x.detach(), src))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_compile_fullgraph_matches_eager(backend, device):
    torch._dynamo.reset()
    x = torch.randn(6, 3, 4, 4, device=device, requires_grad=True)
    perm, lam = torch.randperm(6, device=device), torch.rand(6, device=device, requires_grad=True)

    def step(x, lam):
        return (mixkernels.mix_batch(x, perm, lam, backend=backend) ** 2).sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    eager_out = step(x, lam)
    compiled_out = compiled(x, lam)
    torch.testing.assert_close(compiled_out, eager_out)
    for c, e in zip(torch.autograd.grad(compiled_out, (x, lam)), torch.autograd.grad(eager_out, (x, lam))):
        torch.testing.assert_close(c, e)
