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
more rows than one grid dimension holds and more than 2^31 elements; and the
image-mixing ops of ``csrc/cuda/mix_images_kernel.cu`` (mix_images,
mix_images_) against ``reference.cutmix_batch`` and a per-sample torch
computation (bit-exact: the kernels round as two fp32 products and a sum):
NCHW and channels-last batches, images that start off 16-byte alignment,
images whose size is not a multiple of 16 bytes (scalar path) and lines that
are not (vectors across lines), mixup rows (empty boxes) and cutmix rows in
one batch, distinct own and partner boxes (the gradient's call), boxes
outside the image (clamped), permutations with cycles, the in-place strip
kernel (default and opt-in shared memory) and its temporary-batch fallback,
more images than one grid dimension holds, and more than 2^31 elements (in
the batch, and in one image: 64-bit index arithmetic); and the mask-mixing
ops of ``csrc/cuda/mask_mix_kernel.cu`` (mask_mix, mask_mix_backward): the
forward and grad_x bit-exact against the CPU kernel (both round every product
and sum to fp32) and within tolerance of ``reference.mask_mix`` in fp64,
grad_mask within tolerance of the fp64 reference and bitwise repeatable, for
both upsampling modes at 16x, 3x, non-integer, 1x and downsampling ratios,
NCHW, channels-last and misaligned batches, tiles that split image rows
(wide images) and tiles whose rows span samples (short images), many
channels, fp32 and low-precision masks, each gradient alone, permutations
with cycles, bad partner indices (NaN, never a stray read) and more than
2^31 elements (in the batch, and in one image).

Without a GPU, the per-sample torch computation the GPU tests compare with is
itself checked against the CPU kernel.
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
from tests.numerics import assert_matches_ground_truth

KERNEL_FAMILIES = (
    "mixup_ce_forward_kernel",
    "mixup_ce_backward_kernel",
    "soft_target_ce_forward_kernel",
    "soft_target_ce_backward_kernel",
    "mix_rows_kernel",
    "mix_rows_inplace_kernel",
    "mix_rows_dots_kernel",
    "mix_rows_dots_sum_kernel",
    "mix_images_kernel",
    "mix_images_inplace_kernel",
    "mask_mix_kernel",
    "mask_grad_pixels_kernel",
    "mask_grad_gather_kernel",
    "inverse_permutation_kernel",
    "icm_mixed_classifier_kernel",
    "icm_gather_scores_kernel",
    "icm_row_stats_kernel",
    "icm_column_stats_kernel",
    "icm_column_lse_merge_kernel",
    "icm_loss_kernel",
    "icm_grad_scores_kernel",
    "icm_column_sums_kernel",
    "icm_class_entries_kernel",
    "icm_scatter_scores_kernel",
    "icm_class_scatter_kernel",
    "icm_grad_lam_kernel",
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
               "mix_rows", "mix_rows_", "mix_rows_dots", "mix_images", "mix_images_", "mask_mix",
               "mask_mix_backward", "infinite_class_mixup_loss", "infinite_class_mixup_loss_backward"):
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


# ---------------------------------------------------------------------------
# The image-mixing ops (mix_images, mix_images_).

def _expected_mix_images(x, src, w_self, w_src, box_self, box_src, y_offset=0, x_offset=0):
    """The op's definition per sample in plain torch (any device, any layout):
    at pixel p of image i, (p in box_self[i] ? 0 : w_self[i]) * x[i, :, p] +
    (p in box_src[i] ? 1 : w_src[i]) * x[src[i], :, p], two fp32 products then a
    sum, a term of weight 0 dropped, in x's dtype; boxes clamped to the image.
    x may be a window of the images starting at pixel (y_offset, x_offset)
    (the boxes are in the full images' coordinates)."""
    batch, _, height, width = x.shape
    rows = torch.arange(height, device=x.device).view(1, height, 1) + y_offset
    cols = torch.arange(width, device=x.device).view(1, 1, width) + x_offset

    def inside(boxes):
        y0, y1, x0, x1 = (boxes[:, k].view(batch, 1, 1) for k in range(4))
        return (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)

    w_own = torch.where(inside(box_self), 0.0, w_self.view(batch, 1, 1)).unsqueeze(1)
    w_partner = torch.where(inside(box_src), 1.0, w_src.view(batch, 1, 1)).unsqueeze(1)
    own_term = w_own * x.float()
    partner_term = w_partner * x.float()[src]
    out = torch.where(w_own == 0, torch.where(w_partner == 0, 0.0, partner_term),
                      torch.where(w_partner == 0, own_term, own_term + partner_term))
    return out.to(x.dtype)


def _random_boxes(batch, height, width, device="cpu"):
    y = torch.sort(torch.randint(0, height + 1, (batch, 2)), dim=1).values
    x = torch.sort(torch.randint(0, width + 1, (batch, 2)), dim=1).values
    boxes = torch.stack([y[:, 0], y[:, 1], x[:, 0], x[:, 1]], dim=1)
    if batch >= 3:
        boxes[0] = torch.tensor([0, height, 0, width])  # the whole image is the partner's
        boxes[2] = torch.tensor([height - 1, height, width - 1, width])  # one corner pixel
    return boxes.to(device)


def _mixed_batch_args(batch, height, width, device="cpu"):
    """(w_self, w_src, box_self, box_src) of Mixup's per-sample mode: mixup rows
    (lam, 1 - lam, empty boxes) and cutmix rows (1, 0, a box) in one batch."""
    lam = torch.rand(batch)
    is_cutmix = torch.arange(batch) % 2 == 1
    w_self = torch.where(is_cutmix, 1.0, lam)
    w_src = torch.where(is_cutmix, 0.0, 1.0 - lam)
    boxes = torch.where(is_cutmix.view(batch, 1), _random_boxes(batch, height, width),
                        torch.zeros(batch, 4, dtype=torch.long))
    return tuple(t.contiguous().to(device) for t in (w_self, w_src, boxes, boxes.clone()))


def _check_exact(actual, expected, what):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True,
                               msg=lambda m: f"{what}: {m}")


def test_expected_mix_images_matches_the_cpu_kernel():
    """The per-sample torch computation the GPU tests compare with is the op (CPU kernel)."""
    for dtype in DTYPES:
        for channels_last in (False, True):
            batch, height, width = 6, 7, 9
            x = torch.randn(batch, 3, height, width).to(dtype)
            if channels_last:
                x = x.to(memory_format=torch.channels_last)
            src = torch.tensor([1, 2, 0, 4, 5, 3])
            for args in (_mixed_batch_args(batch, height, width),
                         (torch.rand(batch), torch.rand(batch), _random_boxes(batch, height, width),
                          _random_boxes(batch, height, width))):
                expected = _expected_mix_images(x, src, *args)
                _check_exact(torch.ops.mixkernels.mix_images(x, src, *args), expected, "mix_images")
                y = x.clone()
                torch.ops.mixkernels.mix_images_(y, src, *args)
                _check_exact(y, expected, "mix_images_")
                window = _expected_mix_images(x[:, :, 2:, 3:7], src, *args, y_offset=2, x_offset=3)
                _check_exact(window, expected[:, :, 2:, 3:7], "window")


# (B, C, H, W): one pixel; image sizes not a multiple of 16 bytes (scalar
# path); lines not a multiple of 16 bytes (vectors across lines); lines that
# are; W = 1; a batch of many small images.
IMAGE_SHAPES = ((1, 1, 1, 1), (3, 3, 7, 5), (8, 3, 16, 31), (5, 2, 8, 8), (4, 3, 4, 6), (6, 5, 3, 1),
                (37, 3, 6, 13), (4, 3, 32, 32))
# "misaligned": a contiguous batch whose data starts one element past 16-byte
# alignment (the vector path after a scalar head).
IMAGE_LAYOUTS = ("nchw", "channels_last", "misaligned")


def _image_input(shape, dtype, layout):
    if layout == "nchw":
        return torch.randn(shape, device="cuda").to(dtype)
    if layout == "channels_last":
        return torch.randn(shape, device="cuda").to(dtype).to(memory_format=torch.channels_last)
    base = torch.randn(torch.Size(shape).numel() + 1, device="cuda").to(dtype)
    return base[1:].view(shape)


def _image_perm(batch):
    return _perm_with_cycle(batch)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", IMAGE_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("layout", IMAGE_LAYOUTS)
def test_mix_images_cuda_cutmix_matches_the_reference(dtype, shape, layout):
    """CutMix is mix_images(x, perm, 1, 0, boxes, boxes): bit-exact against the reference."""
    batch, _, height, width = shape
    x = _image_input(shape, dtype, layout)
    src = _image_perm(batch)
    boxes = _random_boxes(batch, height, width, "cuda")
    ones, zeros = torch.ones(batch, device="cuda"), torch.zeros(batch, device="cuda")
    expected, _ = reference.cutmix_batch(x, src, boxes)

    out = torch.ops.mixkernels.mix_images(x, src, ones, zeros, boxes, boxes)
    _check_exact(out, expected, "mix_images")
    assert out.stride() == x.stride()
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)

    y = x.clone() if layout != "misaligned" else _image_input(shape, dtype, layout).copy_(x)
    torch.ops.mixkernels.mix_images_(y, src, ones, zeros, boxes, boxes)
    _check_exact(y, expected, "mix_images_")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", IMAGE_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("layout", IMAGE_LAYOUTS)
@pytest.mark.parametrize("mode", ("mixup-and-cutmix", "distinct-boxes", "general"))
def test_mix_images_cuda_matches_per_sample_torch(dtype, shape, layout, mode):
    """Mixup's per-sample batch (mixup rows with empty boxes, cutmix rows), the
    gradient's call (own and partner boxes differ), and general weights with
    zeros: bit-exact against plain torch and against the CPU kernel."""
    batch, _, height, width = shape
    x = _image_input(shape, dtype, layout)
    src = _image_perm(batch)
    if mode == "mixup-and-cutmix":
        args = _mixed_batch_args(batch, height, width, "cuda")
    elif mode == "distinct-boxes":
        inv = torch.argsort(src)
        boxes = _random_boxes(batch, height, width, "cuda")
        src = inv
        args = (torch.ones(batch, device="cuda"), torch.zeros(batch, device="cuda"), boxes,
                boxes[inv].contiguous())
    else:
        w_self, w_src = torch.rand(batch, device="cuda"), torch.rand(batch, device="cuda")
        w_self[0] = 0.0
        w_src[-1] = 0.0
        args = (w_self, w_src, _random_boxes(batch, height, width, "cuda"),
                _random_boxes(batch, height, width, "cuda"))
    expected = _expected_mix_images(x, src, *args)

    out = torch.ops.mixkernels.mix_images(x, src, *args)
    _check_exact(out, expected, "mix_images")
    cpu = torch.ops.mixkernels.mix_images(x.cpu(), src.cpu(), *(t.cpu() for t in args))
    _check_exact(out.cpu(), cpu, "mix_images against the CPU kernel")

    y = x.clone() if layout != "misaligned" else _image_input(shape, dtype, layout).copy_(x)
    torch.ops.mixkernels.mix_images_(y, src, *args)
    _check_exact(y, expected, "mix_images_")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch", (2049, 4096, 20000),
                         ids=("strip-over-32KiB", "strip-opt-in-shared", "temporary-batch"))
@pytest.mark.parametrize("image", ((1, 2, 3), (3, 4, 4)), ids=("scalar", "vector"))
def test_mix_images_inplace_tall_batches(dtype, batch, image):
    """B * 16 bytes beyond the strip budget (one slot per image), beyond 48 KiB
    (opt-in shared memory), beyond the device's shared memory (temporary batch)."""
    channels, height, width = image
    x = _image_input((batch, channels, height, width), dtype, "misaligned")
    src = torch.randperm(batch, device="cuda")
    args = _mixed_batch_args(batch, height, width, "cuda")
    expected = _expected_mix_images(x, src, *args)
    torch.ops.mixkernels.mix_images_(x, src, *args)
    _check_exact(x, expected, "mix_images_")


@pytest.mark.gpu
def test_mix_images_cuda_boxes_are_clamped_and_bad_partners_give_nan():
    """Device values are not validated: boxes reaching outside the image act
    clamped, an index outside [0, B) gives a NaN image, never a stray read."""
    x = torch.randn(3, 2, 5, 7, device="cuda")
    w_self, w_src = torch.rand(3, device="cuda"), torch.rand(3, device="cuda")
    wild = torch.tensor([[-3, 9, -2, 20], [5, 2, 3, 1], [1, 100, -50, 4]], device="cuda")
    clamped = torch.stack([wild[:, 0].clamp(0, 5), wild[:, 1].clamp(0, 5), wild[:, 2].clamp(0, 7),
                           wild[:, 3].clamp(0, 7)], 1)
    src = torch.tensor([2, 0, 1], device="cuda")
    expected = _expected_mix_images(x, src, w_self, w_src, clamped, clamped.flip(0).contiguous())
    out = torch.ops.mixkernels.mix_images(x, src, w_self, w_src, wild, wild.flip(0).contiguous())
    _check_exact(out, expected, "clamped boxes")

    bad = torch.tensor([7, 0, -1], device="cuda")
    for inplace in (False, True):
        y = x.clone()
        if inplace:
            torch.ops.mixkernels.mix_images_(y, bad, w_self, w_src, clamped, clamped)
        else:
            y = torch.ops.mixkernels.mix_images(y, bad, w_self, w_src, clamped, clamped)
        assert torch.isnan(y[0]).all() and torch.isnan(y[2]).all()
        good = _expected_mix_images(x, torch.tensor([0, 0, 2], device="cuda"), w_self, w_src, clamped,
                                    clamped)
        _check_exact(y[1], good[1], "the image with a valid partner")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mix_images_cuda_pasted_box_is_a_bit_exact_copy_next_to_nan(dtype):
    x = torch.randn(2, 3, 4, 4, device="cuda").to(dtype)
    x[0, :, 1, 1] = float("nan")   # inside image 0's own box: replaced by the partner's pixel
    x[1, :, 3, 3] = float("inf")   # outside image 1's box: kept
    x[1, :, 0, 0] = float("-inf")  # inside image 1's box: pasted into image 0
    boxes = torch.tensor([[0, 2, 0, 2], [0, 2, 0, 2]], device="cuda")
    src = torch.tensor([1, 0], device="cuda")
    ones, zeros = torch.ones(2, device="cuda"), torch.zeros(2, device="cuda")
    expected, _ = reference.cutmix_batch(x, src, boxes)
    bits = torch.int32 if dtype == torch.float32 else torch.int16
    out = torch.ops.mixkernels.mix_images(x, src, ones, zeros, boxes, boxes)
    assert torch.equal(out.view(bits), expected.view(bits))
    torch.ops.mixkernels.mix_images_(x, src, ones, zeros, boxes, boxes)
    assert torch.equal(x.view(bits), expected.view(bits))


@pytest.mark.gpu
def test_mix_images_images_beyond_one_grid_dimension():
    """More images than grid.y (65535) x images per block covers: the image loop
    takes over (and mix_images_ goes through the temporary batch)."""
    batch = 65535 * 256 + 77
    x = torch.randn(batch, 1, 1, 1, device="cuda")
    src = torch.randperm(batch, device="cuda")
    w_self, w_src = _mix_weights(batch)
    boxes = torch.zeros(batch, 4, dtype=torch.long, device="cuda")
    boxes[::3] = torch.tensor([0, 1, 0, 1], device="cuda")
    expected = _expected_mix_images(x, src, w_self, w_src, boxes, boxes)
    _check_exact(torch.ops.mixkernels.mix_images(x, src, w_self, w_src, boxes, boxes), expected,
                 "mix_images")
    torch.ops.mixkernels.mix_images_(x, src, w_self, w_src, boxes, boxes)
    _check_exact(x, expected, "mix_images_")


@pytest.mark.gpu
@pytest.mark.parametrize("shape", ((3, 1, 2**15, 2**15), (2, 1, 2, 2**30 + 8)),
                         ids=("batch-over-2^31", "image-over-2^31"))
def test_mix_images_beyond_2_to_the_31_elements(shape):
    """B * C * H * W > 2^31 (bf16): image offsets must be 64-bit; C * H * W >
    2^31: the 64-bit index variant. Checks windows at both ends of the lines."""
    numel = torch.Size(shape).numel()
    free, _ = torch.cuda.mem_get_info()
    if free < 2.5 * numel * 2:
        pytest.skip(f"needs about {2.5 * numel * 2 / 2**30:.0f} GiB of free GPU memory")
    batch, _, height, width = shape
    x = torch.empty(shape, device="cuda", dtype=torch.bfloat16)
    x[..., :1000].normal_()
    x[..., -1000:].normal_()
    x[..., 1000:-1000].fill_(1.0)
    src = torch.arange(batch, device="cuda").roll(1)
    w_self, w_src = _mix_weights(batch)
    # Boxes straddling both windows of the last line of each image, and a plain mixup row.
    box_self = torch.tensor([[height - 1, height, 500, width - 500]] * batch, device="cuda")
    box_src = torch.tensor([[0, height, width - 700, width]] * batch, device="cuda")
    box_self[0] = 0
    box_src[0] = 0
    windows = [(height - 2, 0), (height - 2, width - 1000)]
    crop = [lambda t, y=y, c=c: t[:, :, y:, c:c + 1000] for y, c in windows]

    out = torch.ops.mixkernels.mix_images(x, src, w_self, w_src, box_self, box_src)
    for (y, c), cut in zip(windows, crop):
        _check_exact(cut(out), _expected_mix_images(cut(x), src, w_self, w_src, box_self, box_src,
                                                    y_offset=y, x_offset=c), "mix_images")
    del out
    before = [cut(x).clone() for cut in crop]
    torch.ops.mixkernels.mix_images_(x, src, w_self, w_src, box_self, box_src)
    for (y, c), cut, old in zip(windows, crop, before):
        _check_exact(cut(x), _expected_mix_images(old, src, w_self, w_src, box_self, box_src,
                                                  y_offset=y, x_offset=c), "mix_images_")


# ---------------------------------------------------------------------------
# The mask-mixing ops (mask_mix, mask_mix_backward).

# (B, C, H, W, h, w): 16x; 3x, not square; non-integer ratios, one per axis;
# 1x; one pixel; one mask cell; downsampling; rows wider than a tile (the
# tiles split them); short images (a tile's rows span samples); many channels
# (a tile of few pixels); 14 -> 64, as AutoMix's 14 -> 224.
MASK_SHAPES = ((3, 3, 48, 48, 3, 3), (7, 2, 12, 15, 4, 5), (7, 1, 7, 10, 5, 3), (3, 4, 6, 5, 6, 5),
               (1, 3, 1, 1, 1, 1), (3, 2, 4, 5, 1, 1), (3, 2, 4, 5, 6, 8), (2, 3, 5, 1100, 3, 37),
               (65, 3, 2, 3, 1, 2), (3, 600, 3, 5, 2, 2), (4, 3, 64, 64, 14, 14))
MASK_MODES = ("bilinear", "nearest")


def _mask_mix_inputs(shape, dtype, layout, mask_dtype=torch.float32):
    batch, channels, height, width, h, w = shape
    x = _image_input((batch, channels, height, width), dtype, layout)
    grad = _image_input((batch, channels, height, width), dtype, layout)
    src = _perm_with_cycle(batch)
    # Values outside [0, 1] too: the ops must not assume a probability.
    mask = (1.5 * torch.rand(batch, 1, h, w, device="cuda") - 0.25).to(mask_dtype)
    return x, grad, src, mask


def _mask_mix_grads(x, src, mask, grad, mode, dtype, mask_dtype):
    """(out, grad_x, grad_mask) of reference.mask_mix with x in `dtype` and the mask in `mask_dtype`."""
    xr = x.detach().to(dtype).requires_grad_()
    mr = mask.detach().to(mask_dtype).requires_grad_()
    out = reference.mask_mix(xr, src, mr, mode)
    grad_x, grad_mask = torch.autograd.grad(out, (xr, mr), grad.to(out.dtype))
    return out.detach(), grad_x, grad_mask


def _check_against_reference(results, x, src, mask, grad, mode):
    """The CUDA results within twice plain PyTorch's error against fp64 (tests/numerics.py)."""
    baseline = _mask_mix_grads(x, src, mask, grad, mode, x.dtype, mask.dtype)
    truth = _mask_mix_grads(x, src, mask, grad, mode, torch.float64, torch.float64)
    for name, actual, base, true, dtype in zip(("mask_mix", "grad_x", "grad_mask"), results, baseline, truth,
                                               (x.dtype, x.dtype, mask.dtype)):
        assert actual.dtype == dtype, name
        assert_matches_ground_truth(actual, base, true, dtype, name, scale_floor=1.0)


def _check_bits(actual, expected, what):
    """Bit-exact equality (NaNs included), in any memory format."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    bits = {4: torch.int32, 2: torch.int16}[actual.element_size()]
    assert torch.equal(actual.contiguous().view(bits), expected.contiguous().view(bits)), what


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", MASK_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("layout", IMAGE_LAYOUTS)
@pytest.mark.parametrize("mode", MASK_MODES)
def test_mask_mix_cuda_matches_the_cpu_kernel_and_the_reference(dtype, shape, layout, mode):
    x, grad, src, mask = _mask_mix_inputs(shape, dtype, layout)
    bilinear = mode == "bilinear"
    ops = torch.ops.mixkernels
    out = ops.mask_mix(x, src, mask, bilinear)
    assert out.stride() == x.stride()
    cpu_out = ops.mask_mix(x.cpu(), src.cpu(), mask.cpu(), bilinear)
    _check_bits(out.cpu(), cpu_out, "mask_mix against the CPU kernel")

    grad_x, grad_mask = ops.mask_mix_backward(grad, x, src, mask, bilinear, True, True)
    assert grad_x.stride() == x.stride()
    cpu_grad_x, _ = ops.mask_mix_backward(grad.cpu(), x.cpu(), src.cpu(), mask.cpu(), bilinear, True, False)
    _check_bits(grad_x.cpu(), cpu_grad_x, "grad_x against the CPU kernel")

    _check_against_reference((out, grad_x, grad_mask), x, src, mask, grad, mode)

    # Deterministic: the same bits again.
    again_x, again_mask = ops.mask_mix_backward(grad, x, src, mask, bilinear, True, True)
    _check_bits(again_x, grad_x, "grad_x repeated")
    _check_bits(again_mask, grad_mask, "grad_mask repeated")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16), ids=str)
@pytest.mark.parametrize("mode", MASK_MODES)
def test_mask_mix_cuda_mask_in_x_dtype(dtype, mode):
    shape = (5, 3, 40, 24, 5, 3)
    x, grad, src, mask = _mask_mix_inputs(shape, dtype, "channels_last", mask_dtype=dtype)
    bilinear = mode == "bilinear"
    ops = torch.ops.mixkernels
    _check_bits(ops.mask_mix(x, src, mask, bilinear).cpu(), ops.mask_mix(x.cpu(), src.cpu(), mask.cpu(), bilinear),
                "mask_mix with a low-precision mask")
    out = ops.mask_mix(x, src, mask, bilinear)
    grad_x, grad_mask = ops.mask_mix_backward(grad, x, src, mask, bilinear, True, True)
    _check_against_reference((out, grad_x, grad_mask), x, src, mask, grad, mode)


@pytest.mark.gpu
def test_mask_mix_cuda_computes_only_the_gradients_asked_for():
    x, grad, src, mask = _mask_mix_inputs((4, 3, 20, 18, 4, 3), torch.float32, "nchw")
    ops = torch.ops.mixkernels
    both = ops.mask_mix_backward(grad, x, src, mask, True, True, True)
    grad_x, no_mask = ops.mask_mix_backward(grad, x, src, mask, True, True, False)
    no_x, grad_mask = ops.mask_mix_backward(grad, x, src, mask, True, False, True)
    assert no_mask.shape == (0,) and no_x.shape == (0,)
    _check_bits(grad_x, both[0], "grad_x alone")
    _check_bits(grad_mask, both[1], "grad_mask alone")
    none_x, none_mask = ops.mask_mix_backward(grad, x, src, mask, True, False, False)
    assert none_x.shape == (0,) and none_mask.shape == (0,)


@pytest.mark.gpu
def test_mask_mix_cuda_bad_partner_index_gives_nan():
    """src is not validated on the GPU: an index outside [0, B) gives NaN, never a stray read."""
    x, grad, _, mask = _mask_mix_inputs((3, 2, 9, 7, 3, 2), torch.float32, "nchw")
    src = torch.tensor([7, 0, -1], device="cuda")
    ops = torch.ops.mixkernels
    out = ops.mask_mix(x, src, mask, True)
    assert torch.isnan(out[0]).all() and torch.isnan(out[2]).all()
    good = ops.mask_mix(x.cpu(), torch.tensor([1, 0, 2]), mask.cpu(), True)
    _check_bits(out[1].cpu(), good[1], "the image with a valid partner")
    grad_x, grad_mask = ops.mask_mix_backward(grad, x, src, mask, True, True, True)
    # Image 0 names no valid partner and only image 1 names it; images 1 and 2 are named by none.
    assert torch.isnan(grad_mask[0]).all() and torch.isnan(grad_mask[2]).all()
    assert not torch.isnan(grad_mask[1]).any()
    assert torch.isnan(grad_x[1]).all() and torch.isnan(grad_x[2]).all()
    assert not torch.isnan(grad_x[0]).any()


@pytest.mark.gpu
@pytest.mark.parametrize("shape", ((3, 1, 2**15, 2**15), (2, 1, 2, 2**30 + 8)),
                         ids=("batch-over-2^31", "image-over-2^31"))
def test_mask_mix_beyond_2_to_the_31_elements(shape):
    """B * C * H * W > 2^31 (bf16): sample offsets must be 64-bit; C * H * W >
    2^31: the 64-bit index variant. A one-cell nearest mask is a constant per
    sample, so windows at both ends of the last lines can be checked alone."""
    numel = torch.Size(shape).numel()
    free, _ = torch.cuda.mem_get_info()
    if free < 3.5 * numel * 2:
        pytest.skip(f"needs about {3.5 * numel * 2 / 2**30:.0f} GiB of free GPU memory")
    batch = shape[0]
    x = torch.empty(shape, device="cuda", dtype=torch.bfloat16)
    x[..., -2:, :1000].normal_()
    x[..., -2:, -1000:].normal_()
    src = torch.arange(batch, device="cuda").roll(1)
    mask = torch.rand(batch, 1, 1, 1, device="cuda")
    m = mask.view(batch, 1, 1, 1)
    windows = [lambda t: t[..., -2:, :1000], lambda t: t[..., -2:, -1000:]]
    out = torch.ops.mixkernels.mask_mix(x, src, mask, False)
    for cut in windows:
        expected = (m * cut(x).float() + (1 - m) * cut(x).float()[src]).to(torch.bfloat16)
        _check_bits(cut(out), expected, "mask_mix")
    del out
    grad_x, _ = torch.ops.mixkernels.mask_mix_backward(x, x, src, mask, False, True, False)
    inv = torch.argsort(src)
    for cut in windows:
        expected = (m * cut(x).float() + (1 - m[inv]) * cut(x).float()[inv]).to(torch.bfloat16)
        _check_bits(cut(grad_x), expected, "grad_x")
