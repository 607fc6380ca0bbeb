"""The Triton row-mixing launchers (mixkernels/triton/mix_batch.py) against plain torch.

Run on CUDA tensors when there is a GPU, otherwise under the Triton
interpreter on CPU tensors (small shapes). Covered: fp32/bf16/fp16; B = 1, 3,
37; N = 1, 31, 1000; a 3-cycle and a random permutation; column-sliced and
transposed x; the in-place launcher on every path (registers, scratch strips
with persistent programs, the out-of-place fallback), leaving every other
tensor as it was; the split-N dots; the forward's column-block loop.

Under the interpreter fp32 -> bf16 rounds toward zero (the GPU rounds to
nearest even), so bf16 results may differ from torch's by one unit in the
last place: they are compared with torch's default bf16 tolerance.
"""

import os

import pytest
import torch

triton = pytest.importorskip("triton", reason="triton is not importable")

if not torch.cuda.is_available():
    # Before the kernel module is imported: @triton.jit reads it (tests/conftest.py does too).
    os.environ.setdefault("TRITON_INTERPRET", "1")

from mixkernels import reference  # noqa: E402
from mixkernels.triton import mix_batch as mb  # noqa: E402
from mixkernels.triton._launch import sm_count  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
BATCHES = [1, 3, 37]
WIDTHS = [1, 31, 1000]


def three_cycle(batch):
    """0 -> 1 -> 2 -> 0 and the rest fixed: an in-place gather that writes row
    0 first has lost it by the time row 2 reads it."""
    src = torch.arange(batch)
    if batch >= 3:
        src[:3] = torch.tensor([1, 2, 0])
    return src.to(DEVICE)


def random_perm(batch):
    return torch.randperm(batch).to(DEVICE)


PERMS = {"three_cycle": three_cycle, "random": random_perm}


def make_x(batch, width, dtype, layout="contiguous"):
    if layout == "column_slice":  # row stride wider than N
        return torch.randn(batch, width + 7, device=DEVICE).to(dtype)[:, 3:3 + width]
    if layout == "transposed":  # unit stride along the batch
        return torch.randn(width, batch, device=DEVICE).to(dtype).t()
    return torch.randn(batch, width, device=DEVICE).to(dtype)


def make_lam(batch):
    lam = torch.rand(batch, device=DEVICE)
    lam[0] = 1.0  # the ends of [0, 1] are legal
    if batch > 2:
        lam[1] = 0.0
    return lam


def expected_mix(x, src, lam):
    return reference.mix_batch(x, src, lam)


def expected_dots(grad, x, src):
    g, xd = grad.double(), x.double()
    return torch.stack([(g * xd).sum(1), (g * xd[src]).sum(1)], dim=1)


def assert_dots_close(got, grad, x, src):
    assert got.dtype == torch.float32 and got.shape == (x.shape[0], 2)
    want = expected_dots(grad, x, src)
    # fp32 products and sums: error bounded by ~N eps times sum |g x|.
    scale = (grad.double().abs() * x.double().abs().amax(0)).sum(1, keepdim=True) + 1.0
    assert ((got.double() - want).abs() <= 1e-5 * scale).all(), (got, want)


@pytest.mark.parametrize("perm", list(PERMS))
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_forward_inplace_and_dots_match_torch(dtype, batch, width, perm):
    x = make_x(batch, width, dtype)
    src = PERMS[perm](batch)
    lam = make_lam(batch)
    want = expected_mix(x, src, lam)

    out = mb.mix_rows_forward(x, src, lam, 1.0 - lam)
    assert out.dtype == dtype and out.shape == (batch, width) and out.is_contiguous()
    torch.testing.assert_close(out, want)

    y = x.clone()
    mb.mix_rows_inplace(y, src, lam, 1.0 - lam)
    torch.testing.assert_close(y, want)
    # The same arithmetic and rounding as the out-of-place kernel.
    assert torch.equal(y, out)

    grad = make_x(batch, width, dtype)
    assert_dots_close(mb.mix_rows_dots(grad, x, src), grad, x, src)


@pytest.mark.parametrize("layout", ["column_slice", "transposed"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_strided_x(dtype, layout):
    batch, width = 37, 31
    x = make_x(batch, width, dtype, layout)
    src, lam = random_perm(batch), make_lam(batch)
    want = expected_mix(x, src, lam)
    torch.testing.assert_close(mb.mix_rows_forward(x, src, lam, 1.0 - lam), want)

    grad = make_x(batch, width, dtype, layout)
    assert_dots_close(mb.mix_rows_dots(grad, x, src), grad, x, src)

    # In place through the view: its elements change, nothing else in its storage.
    base = x._base
    base_before = base.clone()
    mb.mix_rows_inplace(x, src, lam, 1.0 - lam)
    torch.testing.assert_close(x, want)
    untouched = torch.ones_like(base, dtype=torch.bool)
    (untouched.t() if layout == "transposed" else untouched[:, 3:3 + width]).fill_(False)
    assert torch.equal(base[untouched], base_before[untouched])


@pytest.mark.parametrize("shape, path", [
    ((300, 70), "scratch"),            # 3 strips of 32: 3 programs, one strip each
    ((260, 300), "scratch"),           # 10 strips on 8 persistent programs (interpreter)
    ((300, 20), "copy"),               # one strip: out of place, then copied back
    ((200, 40), "registers"),          # 256 x 16 tile
    ((100, 33), "registers"),          # 128 x 32 tile
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_inplace_paths_leave_other_tensors_alone(dtype, shape, path):
    batch, width = shape
    cfg = mb.launch_config("inplace", batch, width, dtype)
    n_strips = triton.cdiv(width, cfg["BLOCK_N"])
    if DEVICE == "cpu":  # the SM count stand-in makes the path predictable
        uses_copy = cfg["USE_SCRATCH"] and n_strips < sm_count(torch.device("cpu"))
        got_path = "copy" if uses_copy else "scratch" if cfg["USE_SCRATCH"] else "registers"
        assert got_path == path
    x = make_x(batch, width, dtype)
    src = random_perm(batch)
    lam = make_lam(batch)
    w_src = 1.0 - lam
    want = expected_mix(x, src, lam)
    others = [t.clone() for t in (src, lam, w_src)]

    mb.mix_rows_inplace(x, src, lam, w_src)
    torch.testing.assert_close(x, want)
    for before, after in zip(others, (src, lam, w_src)):
        assert torch.equal(before, after)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dots_split_over_n(dtype):
    # B=3, N=5000: 3 chunks of 2048, fewer row blocks than programs wanted, so
    # N is split (interpreter: 8 programs wanted) and partials summed after.
    batch, width = 3, 5000
    cfg = mb.launch_config("dots", batch, width, dtype)
    n_chunks = triton.cdiv(width, cfg["BLOCK_N"])
    if DEVICE == "cpu":
        n_row_blocks = triton.cdiv(batch, cfg["BLOCK_R"])
        sms = sm_count(torch.device("cpu"))
        assert mb._dots_chunks_per_split(n_row_blocks, n_chunks, sms) < n_chunks
    x = make_x(batch, width, dtype)
    grad = make_x(batch, width, dtype, "column_slice")
    src = three_cycle(batch)
    got = mb.mix_rows_dots(grad, x, src)
    assert_dots_close(got, grad, x, src)
    assert torch.equal(got, mb.mix_rows_dots(grad, x, src))  # deterministic


def test_forward_walks_column_blocks_past_the_grid_limit(monkeypatch):
    # Cap grid axis 1 at 2 programs so that each walks several column blocks.
    monkeypatch.setattr(mb, "_MAX_GRID_Y", 2)
    batch, width = 3, 5 * 2048 + 17
    x = make_x(batch, width, torch.float32)
    src, lam = three_cycle(batch), make_lam(batch)
    torch.testing.assert_close(mb.mix_rows_forward(x, src, lam, 1.0 - lam),
                               expected_mix(x, src, lam))


def test_empty_inputs():
    for batch, width in ((0, 5), (4, 0)):
        x = torch.empty(batch, width, device=DEVICE)
        src = torch.arange(batch, device=DEVICE)
        w = torch.ones(batch, device=DEVICE)
        assert mb.mix_rows_forward(x, src, w, w).shape == (batch, width)
        mb.mix_rows_inplace(x, src, w, w)
        dots = mb.mix_rows_dots(x, x, src)
        assert dots.shape == (batch, 2) and dots.dtype == torch.float32
        assert torch.equal(dots, torch.zeros_like(dots))
