"""The CUDA kernels of the built extension: resource use without a GPU, numbers with one.

Without a GPU: when the extension was built with CUDA, the triton wheel's
``cuobjdump -res-usage`` reads every kernel in ``mixkernels/_C*.so`` and each
must have ``STACK:0`` and ``LOCAL:0`` (no register spills, no local arrays),
for every architecture the fatbin holds. A spill in a memory-bound kernel
turns into extra memory traffic on every row, so it is a bug here.

With a GPU (``gpu`` mark): the CUDA ops against the fp64 reference on the
shapes that exercise each launch path of ``csrc/cuda/cross_entropy_kernel.cu``:
every forward row-group size (warp per row up to C = 1024, then 128 ... 1024
threads per row), rows whose start is not 16-byte aligned (a column slice),
C = 1, more rows than one grid dimension holds, rows of -inf, y_a == y_b,
and a bf16/fp16 logits with fp32 target; and the row-mixing ops of
``csrc/cuda/mix_rows_kernel.cu`` (mix_rows, mix_rows_, mix_rows_dots) against
``reference.mix_batch`` and plain torch: contiguous rows, rows offset from
16-byte alignment with an aligned stride, rows of odd stride (each row
misaligned differently), permutations with cycles, the in-place op's strip
kernel (shared memory within the default 48 KiB, beyond it by opt-in) and its
temporary-batch fallback (B too tall for shared memory), the split-N dots,
more rows than one grid dimension holds and more than 2^31 elements.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import mixkernels  # noqa: F401  (registers the ops)
from mixkernels import reference

KERNEL_FAMILIES = (
    "mixup_ce_forward_kernel",
    "mixup_ce_backward_kernel",
    "soft_target_ce_forward_kernel",
    "soft_target_ce_backward_kernel",
    "mix_rows_kernel",
    "mix_rows_inplace_kernel",
    "mix_rows_dots_kernel",
    "mix_rows_dots_sum_kernel",
)


def _has_kernel(mangled_name: str, family: str) -> bool:
    """Whether a mangled kernel name is of `family`: Itanium mangling writes a
    name as <length><name>, so "15mix_rows_kernel" cannot match the
    "..._mix_rows_kernel_cu_..." that every kernel of that file carries."""
    return f"{len(family)}{family}" in mangled_name


def _built_with_cuda() -> bool:
    try:
        return bool(torch.ops.mixkernels.built_with_cuda())
    except (AttributeError, RuntimeError):
        return False


def _extension_path() -> Path:
    import mixkernels._C as ext

    return Path(ext.__file__)


def _cuobjdump() -> str | None:
    """The cuobjdump shipped in the triton wheel, else one on PATH or in CUDA_HOME."""
    try:
        import triton

        bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        if bundled.is_file():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("cuobjdump")
    if found:
        return found
    cuda_home = os.environ.get("CUDA_HOME")
    if cuda_home and (Path(cuda_home) / "bin" / "cuobjdump").is_file():
        return str(Path(cuda_home) / "bin" / "cuobjdump")
    return None


_ENTRY = re.compile(
    r"Function (?P<name>\S+):\s*\n\s*REG:(?P<reg>\d+) STACK:(?P<stack>\d+) "
    r"SHARED:(?P<shared>\d+) LOCAL:(?P<local>\d+)")


def _resource_usage():
    """[(arch, mangled kernel name, {REG, STACK, SHARED, LOCAL})] of the built extension."""
    if not _built_with_cuda():
        pytest.skip("extension built without CUDA: no CUDA kernels to inspect")
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump (neither in the triton wheel, on PATH nor in CUDA_HOME)")
    out = subprocess.run([tool, "-res-usage", str(_extension_path())], check=True,
                         capture_output=True, text=True).stdout
    rows = []
    # Each ELF in the fatbin starts with "arch = sm_XX"; its kernels follow.
    for section in re.split(r"\n(?=Fatbin elf code:)", out):
        arch = re.search(r"arch = (sm_\d+)", section)
        for m in _ENTRY.finditer(section):
            rows.append((arch.group(1) if arch else "?", m.group("name"),
                         {k: int(m.group(k)) for k in ("reg", "stack", "shared", "local")}))
    return rows


def test_every_cuda_kernel_is_built_without_spills():
    rows = _resource_usage()
    assert rows, "cuobjdump found no kernels in an extension built with CUDA"
    for arch in {arch for arch, _, _ in rows}:
        names = [name for a, name, _ in rows if a == arch]
        for family in KERNEL_FAMILIES:
            assert any(_has_kernel(name, family) for name in names), f"{family} missing for {arch}"
    bad = [(arch, name, usage) for arch, name, usage in rows
           if usage["stack"] != 0 or usage["local"] != 0]
    assert not bad, "kernels with stack or local memory (spills):\n" + "\n".join(
        f"{arch} {name} {usage}" for arch, name, usage in bad)


def test_cuda_kernels_are_registered():
    if not _built_with_cuda():
        pytest.skip("extension built without CUDA")
    for op in ("mixup_cross_entropy", "mixup_cross_entropy_backward",
               "soft_target_cross_entropy", "soft_target_cross_entropy_backward",
               "mix_rows", "mix_rows_", "mix_rows_dots"):
        dump = torch._C._dispatch_dump(f"mixkernels::{op}")
        assert re.search(r"^CUDA: registered", dump, re.MULTILINE), dump


# ---------------------------------------------------------------------------
# On a GPU: each launch path against the fp64 reference.

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# (B, C): every forward row group (32 threads up to C = 1024, 128, 256, 512,
# 1024 threads per row beyond), C = 1, C smaller than one 16-byte vector.
SHAPES = ((5, 1), (33, 7), (64, 1000), (8, 1024), (8, 1025), (4, 4097), (3, 16385),
          (2, 65537))
# grad tolerance (rtol, atol): gradients are stored in the logits' dtype.
GRAD_TOL = {torch.float32: (1e-4, 1e-6), torch.bfloat16: (1.6e-2, 1e-5),
            torch.float16: (2e-3, 1e-6)}


def _gpu_logits(batch, num_classes, dtype, misaligned):
    """Logits on the GPU; misaligned: a column slice, so rows start 1 element past alignment."""
    extra = 1 if misaligned else 0
    base = torch.randn(batch, num_classes + extra, device="cuda") * 3
    return base.to(dtype)[:, extra:]


def _check_close(actual, expected, rtol, atol, what):
    torch.testing.assert_close(actual.double(), expected, rtol=rtol, atol=atol, equal_nan=True,
                               msg=lambda m: f"{what}: {m}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"B{s[0]}-C{s[1]}")
@pytest.mark.parametrize("misaligned", (False, True), ids=("aligned", "misaligned"))
@pytest.mark.parametrize("smoothing", (0.0, 0.1))
def test_mixup_cross_entropy_cuda_paths(dtype, shape, misaligned, smoothing):
    batch, num_classes = shape
    logits = _gpu_logits(batch, num_classes, dtype, misaligned)
    y_a = torch.randint(0, num_classes, (batch,), device="cuda")
    y_b = torch.randint(0, num_classes, (batch,), device="cuda")
    y_b[0] = y_a[0]  # both shares on one class
    lam = torch.rand(batch, device="cuda")
    loss, lse = torch.ops.mixkernels.mixup_cross_entropy(logits, y_a, y_b, lam, smoothing)

    z = logits.double().requires_grad_()
    ref = reference.mixup_cross_entropy(z, y_a, y_b, lam.double(), label_smoothing=smoothing,
                                        reduction="none")
    _check_close(loss, ref.detach(), 1e-4, 1e-4, "loss")
    _check_close(lse, torch.logsumexp(z.detach(), 1), 1e-5, 1e-5, "lse")

    grad_loss = torch.randn(batch, device="cuda")
    grad = torch.ops.mixkernels.mixup_cross_entropy_backward(grad_loss, logits, y_a, y_b, lam,
                                                             lse, smoothing)
    assert grad.dtype == dtype and grad.is_contiguous() and grad.shape == logits.shape
    (expected,) = torch.autograd.grad(ref, z, grad_loss.double())
    _check_close(grad, expected, *GRAD_TOL[dtype], "grad_logits")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"B{s[0]}-C{s[1]}")
@pytest.mark.parametrize("misaligned", (False, True), ids=("aligned", "misaligned"))
@pytest.mark.parametrize("fp32_target", (False, True), ids=("target-like-logits", "target-fp32"))
def test_soft_target_cross_entropy_cuda_paths(dtype, shape, misaligned, fp32_target):
    batch, num_classes = shape
    logits = _gpu_logits(batch, num_classes, dtype, misaligned)
    target_dtype = torch.float32 if fp32_target else dtype
    target = torch.rand(batch, num_classes + 3, device="cuda").to(target_dtype)[:, 3:]
    loss, lse, target_sum = torch.ops.mixkernels.soft_target_cross_entropy(logits, target)

    z = logits.double().requires_grad_()
    t = target.double().requires_grad_()
    ref = reference.soft_target_cross_entropy(z, t, reduction="none")
    _check_close(loss, ref.detach(), 1e-4, 1e-4, "loss")
    _check_close(lse, torch.logsumexp(z.detach(), 1), 1e-5, 1e-5, "lse")
    _check_close(target_sum, t.detach().sum(1), 1e-5, 1e-5, "target_sum")

    grad_loss = torch.randn(batch, device="cuda")
    expected_z, expected_t = torch.autograd.grad(ref, (z, t), grad_loss.double())
    for needs_target_grad in (True, False):
        grad_z, grad_t = torch.ops.mixkernels.soft_target_cross_entropy_backward(
            grad_loss, logits, target, lse, target_sum, needs_target_grad)
        _check_close(grad_z, expected_z, *GRAD_TOL[dtype], "grad_logits")
        assert grad_t.dtype == target_dtype
        if needs_target_grad:
            _check_close(grad_t, expected_t, *GRAD_TOL[target_dtype], "grad_target")
        else:
            assert grad_t.shape == (0,)


@pytest.mark.gpu
def test_cuda_rows_beyond_one_grid_dimension():
    """More rows than grid.y (65535) x rows per block covers: the row loop must take over."""
    batch, num_classes = 65535 * 256 + 77, 1
    logits = torch.randn(batch, num_classes, device="cuda")
    labels = torch.zeros(batch, dtype=torch.long, device="cuda")
    lam = torch.rand(batch, device="cuda")
    loss, lse = torch.ops.mixkernels.mixup_cross_entropy(logits, labels, labels, lam, 0.0)
    torch.testing.assert_close(lse, logits[:, 0])
    torch.testing.assert_close(loss, torch.zeros_like(loss), atol=1e-6, rtol=0)
    grad = torch.ops.mixkernels.mixup_cross_entropy_backward(
        torch.ones(batch, device="cuda"), logits, labels, labels, lam, lse, 0.0)
    torch.testing.assert_close(grad, torch.zeros_like(grad), atol=1e-6, rtol=0)


@pytest.mark.gpu
def test_cuda_non_finite_rows_follow_the_reference():
    num_classes = 1000
    logits = torch.randn(3, num_classes, device="cuda")
    logits[0] = float("-inf")          # all -inf: lse -inf, loss NaN
    logits[1, 7] = float("nan")        # NaN propagates
    logits[2, 9] = float("inf")        # +inf: NaN, as log_softmax gives
    y = torch.tensor([1, 2, 3], device="cuda")
    lam = torch.full((3,), 0.7, device="cuda")
    loss, lse = torch.ops.mixkernels.mixup_cross_entropy(logits, y, y.flip(0), lam, 0.0)
    ref = reference.mixup_cross_entropy(logits.double(), y, y.flip(0), lam.double(),
                                        reduction="none")
    _check_close(loss, ref, 1e-5, 1e-5, "loss")
    assert lse[0].item() == float("-inf")
    assert torch.isnan(lse[1])


# ---------------------------------------------------------------------------
# On a GPU: the row-mixing ops.

MIX_BATCHES = (1, 3, 37)
MIX_COLUMNS = (1, 31, 1000)
# contiguous; "offset": rows start 1 element past 16-byte alignment with a
# stride that keeps every row alike (vector path after a scalar head);
# "odd-stride": a column slice of a (B, N + 1) base, rows misaligned
# differently (scalar path).
MIX_LAYOUTS = ("contiguous", "offset", "odd-stride")


def _mix_input(batch, num_columns, dtype, layout):
    """(base, x): x (B, N) on the GPU in `layout`, a view into base."""
    vec = 16 // torch.empty((), dtype=dtype).element_size()
    if layout == "contiguous":
        base = torch.randn(batch, num_columns, device="cuda").to(dtype)
        return base, base
    if layout == "offset":
        stride = -(-(num_columns + 1) // vec) * vec
    else:
        stride = num_columns + 1
    base = torch.randn(batch, stride, device="cuda").to(dtype)
    return base, base[:, 1:num_columns + 1]


def _perm_with_cycle(batch):
    """A permutation of range(B) whose first rows form a 3-cycle (0 -> 1 -> 2 -> 0)."""
    if batch < 3:
        return torch.arange(batch, device="cuda").roll(1)
    rest = torch.randperm(batch - 3, device="cuda") + 3
    return torch.cat([torch.tensor([1, 2, 0], device="cuda"), rest])


def _mix_weights(batch):
    lam = torch.rand(batch, device="cuda")
    return lam, 1.0 - lam


def _expected_dots(grad, x, src):
    g, xd = grad.double(), x.double()
    return torch.stack([(g * xd).sum(1), (g * xd[src]).sum(1)], 1)


def _check_dots(actual, grad, x, src):
    assert actual.dtype == torch.float32 and actual.shape == (x.shape[0], 2)
    expected = _expected_dots(grad, x, src)
    # fp32 accumulation: error bounded by a few ulps of the sum of |terms|.
    g, xd = grad.double().abs(), x.double().abs()
    scale = torch.stack([(g * xd).sum(1), (g * xd[src]).sum(1)], 1)
    assert torch.all((actual.double() - expected).abs() <= 1e-5 * scale + 1e-6), (
        actual, expected)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch", MIX_BATCHES)
@pytest.mark.parametrize("num_columns", MIX_COLUMNS)
@pytest.mark.parametrize("layout", MIX_LAYOUTS)
def test_mix_rows_cuda_paths(dtype, batch, num_columns, layout):
    base, x = _mix_input(batch, num_columns, dtype, layout)
    src = _perm_with_cycle(batch)
    w_self, w_src = _mix_weights(batch)
    expected = reference.mix_batch(x, src, w_self)

    out = torch.ops.mixkernels.mix_rows(x, src, w_self, w_src)
    assert out.dtype == dtype and out.shape == x.shape and out.is_contiguous()
    torch.testing.assert_close(out, expected)

    # In place: the same values, nothing outside x's columns touched.
    base_before = base.clone()
    torch.ops.mixkernels.mix_rows_(x, src, w_self, w_src)
    torch.testing.assert_close(x, expected)
    if layout != "contiguous":
        assert torch.equal(base[:, 0], base_before[:, 0])
        assert torch.equal(base[:, num_columns + 1:], base_before[:, num_columns + 1:])

    x_before = base_before if layout == "contiguous" else base_before[:, 1:num_columns + 1]
    grad = torch.randn(batch, num_columns, device="cuda").to(dtype)
    _check_dots(torch.ops.mixkernels.mix_rows_dots(grad, x_before, src), grad, x_before, src)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch", (2049, 4096, 20000),
                         ids=("strip-over-32KiB", "strip-opt-in-shared", "temporary-batch"))
def test_mix_rows_inplace_tall_batches(dtype, batch):
    """B * 16 bytes beyond the strip budget (one vector per row), beyond 48 KiB
    (opt-in shared memory), beyond the device's shared memory (temporary batch)."""
    num_columns = 37
    base, x = _mix_input(batch, num_columns, dtype, "offset")
    src = torch.randperm(batch, device="cuda")
    w_self, w_src = _mix_weights(batch)
    expected = reference.mix_batch(x, src, w_self)
    base_before = base.clone()
    torch.ops.mixkernels.mix_rows_(x, src, w_self, w_src)
    torch.testing.assert_close(x, expected)
    assert torch.equal(base[:, 0], base_before[:, 0])
    assert torch.equal(base[:, num_columns + 1:], base_before[:, num_columns + 1:])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", ((1, 100_000), (3, 70_001), (37, 9000), (1100, 9000)),
                         ids=lambda s: f"B{s[0]}-N{s[1]}")
@pytest.mark.parametrize("layout", MIX_LAYOUTS)
def test_mix_rows_dots_split_paths(dtype, shape, layout):
    """Split-N partial sums (B small, N large) and a block per row; bitwise repeatable."""
    batch, num_columns = shape
    _, x = _mix_input(batch, num_columns, dtype, layout)
    _, grad = _mix_input(batch, num_columns, dtype, "contiguous")
    src = _perm_with_cycle(batch)
    dots = torch.ops.mixkernels.mix_rows_dots(grad, x, src)
    _check_dots(dots, grad, x, src)
    assert torch.equal(dots, torch.ops.mixkernels.mix_rows_dots(grad, x, src))


@pytest.mark.gpu
def test_mix_rows_rows_beyond_one_grid_dimension():
    batch = 65535 * 256 + 77
    x = torch.randn(batch, 1, device="cuda")
    src = torch.randperm(batch, device="cuda")
    w_self, w_src = _mix_weights(batch)
    expected = reference.mix_batch(x, src, w_self)
    torch.testing.assert_close(torch.ops.mixkernels.mix_rows(x, src, w_self, w_src), expected)
    grad = torch.randn(batch, 1, device="cuda")
    _check_dots(torch.ops.mixkernels.mix_rows_dots(grad, x, src), grad, x, src)
    torch.ops.mixkernels.mix_rows_(x, src, w_self, w_src)  # the temporary-batch path
    torch.testing.assert_close(x, expected)


@pytest.mark.gpu
def test_mix_rows_bad_partner_index_gives_nan_rows():
    """src is not validated on the GPU: an index outside [0, B) gives NaN, never a stray read."""
    x = torch.randn(3, 40, device="cuda")
    src = torch.tensor([7, 0, -1], device="cuda")
    w_self, w_src = _mix_weights(3)
    out = torch.ops.mixkernels.mix_rows(x, src, w_self, w_src)
    assert torch.isnan(out[0]).all() and torch.isnan(out[2]).all()
    torch.testing.assert_close(out[1], w_self[1] * x[1] + w_src[1] * x[0])
    dots = torch.ops.mixkernels.mix_rows_dots(x, x, src)
    assert torch.isnan(dots[0, 1]) and not torch.isnan(dots[0, 0])


@pytest.mark.gpu
def test_mix_rows_beyond_2_to_the_31_elements():
    """B * N > 2^31 (bf16): offsets must be 64-bit. Checks the first and last columns."""
    free, _ = torch.cuda.mem_get_info()
    batch, num_columns = 3, 2**30 + 5
    if free < 4 * batch * num_columns * 2:
        pytest.skip("needs about 26 GB of free GPU memory")
    x = torch.empty(batch, num_columns, device="cuda", dtype=torch.bfloat16)
    x[:, :1000].normal_()
    x[:, -1000:].normal_()
    x[:, 1000:-1000].fill_(1.0)
    src = torch.tensor([2, 0, 1], device="cuda")
    w_self, w_src = _mix_weights(batch)
    edges = (slice(0, 1000), slice(num_columns - 1000, num_columns))

    out = torch.ops.mixkernels.mix_rows(x, src, w_self, w_src)
    for cols in edges:
        torch.testing.assert_close(out[:, cols], reference.mix_batch(x[:, cols], src, w_self))
    del out

    grad = torch.ones_like(x)
    dots = torch.ops.mixkernels.mix_rows_dots(grad, x, src)
    inner = float(num_columns - 2000)
    expected = torch.stack([x[:, cols].double().sum(1) for cols in edges]).sum(0) + inner
    torch.testing.assert_close(dots[:, 0].double(), expected, rtol=1e-5, atol=1e-2)
    torch.testing.assert_close(dots[:, 1].double(), expected[src], rtol=1e-5, atol=1e-2)
    del grad

    before = [x[:, cols].clone() for cols in edges]
    torch.ops.mixkernels.mix_rows_(x, src, w_self, w_src)
    for cols, old in zip(edges, before):
        torch.testing.assert_close(x[:, cols], reference.mix_batch(old, src, w_self))
