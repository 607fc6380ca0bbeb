"""The Triton image-mixing launchers (mixkernels/triton/cutmix_batch.py) against
the CutMix spec and plain torch.

Run on CUDA tensors when there is a GPU, otherwise under the Triton
interpreter on CPU tensors (small shapes). Covered: fp32/bf16/fp16; NCHW and
channels-last; B = 1, 3, 6 with permutations made of cycles and fixed
points; 5x7 images of 1 and 3 channels and larger ones for every forward
tile; empty, full, corner, edge and one-pixel boxes; Mixup rows (empty boxes)
and CutMix rows in one batch; boxes next to NaN and inf (pasted boxes and
kept pixels are exact copies); the in-place launcher on every path
(registers, scratch strips with persistent programs, out of place and copied
back), on a clone, leaving every other tensor as it was.

Under the interpreter fp32 -> bf16 rounds toward zero (the GPU rounds to
nearest even), so mixed bf16 values may differ from torch's by one unit in
the last place: they are compared with torch's default bf16 tolerance. Copies
(CutMix) and fp32/fp16 results are compared exactly.
"""

import os

import pytest
import torch

triton = pytest.importorskip("triton", reason="triton is not importable")

if not torch.cuda.is_available():
    # Before the kernel module is imported: @triton.jit reads it (tests/conftest.py does too).
    os.environ.setdefault("TRITON_INTERPRET", "1")

from mixkernels import reference  # noqa: E402
from mixkernels.triton import cutmix_batch as cb  # noqa: E402
from mixkernels.triton._launch import sm_count  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
LAYOUTS = ["nchw", "channels_last"]
BATCHES = [1, 3, 6]

# Permutations made of cycles: a 3-cycle, then a 2-cycle and a fixed point.
PERMS = {1: [0], 2: [1, 0], 3: [1, 2, 0], 6: [1, 2, 0, 4, 3, 5]}


def make_x(shape, dtype, layout):
    x = torch.randn(shape, device=DEVICE).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def boxes_for(batch, height, width):
    """(B, 4) boxes (y0, y1, x0, x1): a different kind for each sample."""
    kinds = [
        (1, 4, 2, 6),                              # interior
        (0, height, 0, width),                     # the whole image
        (0, 0, 0, 0),                              # empty
        (height - 2, height, width - 3, width),    # bottom-right corner
        (0, 2, 0, 1),                              # top-left corner, one column
        (2, 3, 4, 5),                              # one pixel
        (3, 3, 1, 6),                              # empty: no rows
    ]
    return torch.tensor([kinds[i % len(kinds)] for i in range(batch)], dtype=torch.int64,
                        device=DEVICE)


def box_mask(box, height, width):
    return reference.cutmix_box_mask(box.view(1, 4), height, width)[0]


def expected_mix(x, src, w_self, w_src, box_self, box_src):
    """Sample by sample in torch: fp32 ``w_own*own + w_partner*partner`` rounded to
    x's dtype. For finite x a term of weight 0 adds an exact 0 and a weight of
    1 is exact, so this equals the op's select-don't-multiply rules, up to
    the sign of a zero result."""
    out = torch.empty_like(x)
    height, width = x.shape[-2:]
    for i in range(x.shape[0]):
        in_self = box_mask(box_self[i], height, width)
        in_src = box_mask(box_src[i], height, width)
        w_own = torch.where(in_self, 0.0, w_self[i])
        w_partner = torch.where(in_src, 1.0, w_src[i])
        mixed = w_own * x[i].float() + w_partner * x[src[i]].float()
        out[i] = mixed.to(x.dtype)
    return out


def assert_mixed_close(got, want):
    if got.dtype == torch.bfloat16 and DEVICE == "cpu":
        torch.testing.assert_close(got, want, equal_nan=True)
    else:
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


def run_both(x, src, w_self, w_src, box_self, box_src):
    """Both launchers; checks that the output keeps x's memory format and that
    nothing but the in-place target changes. Returns (out of place, in place)."""
    inputs = [t.clone() for t in (x, src, w_self, w_src, box_self, box_src)]
    out = cb.mix_images_forward(x, src, w_self, w_src, box_self, box_src)
    assert out.dtype == x.dtype and out.shape == x.shape and out.stride() == x.stride()
    y = x.clone()
    cb.mix_images_inplace(y, src, w_self, w_src, box_self, box_src)
    assert y.stride() == x.stride()
    for before, after in zip(inputs, (x, src, w_self, w_src, box_self, box_src)):
        assert_same_bits(after, before)
    return out, y


def assert_same_bits(a, b):
    """Equal bit for bit (NaN included), whatever the memory formats."""
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a.contiguous().view(-1).view(torch.uint8),
                       b.contiguous().view(-1).view(torch.uint8))


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cutmix_matches_reference(dtype, layout, batch):
    shape = (batch, 3, 5, 7)
    x = make_x(shape, dtype, layout)
    src = torch.tensor(PERMS[batch], device=DEVICE)
    boxes = boxes_for(batch, 5, 7)
    ones = torch.ones(batch, device=DEVICE)
    zeros = torch.zeros(batch, device=DEVICE)
    want, _ = reference.cutmix_batch(x, src, boxes)
    out, y = run_both(x, src, ones, zeros, boxes, boxes)
    # Nothing but copies: exact in every dtype, on the interpreter too.
    assert_same_bits(out, want)
    assert_same_bits(y, want)


def mixed_batch(batch, height, width):
    """Weights and boxes of a batch with Mixup rows (empty boxes) and CutMix
    rows, as Mixup's switch between the two makes, plus the ends of lam and
    a row with two different boxes and general weights."""
    lam = torch.rand(batch, device=DEVICE)
    w_self, w_src = lam.clone(), 1.0 - lam
    box_self = torch.zeros(batch, 4, dtype=torch.int64, device=DEVICE)
    box_src = torch.zeros(batch, 4, dtype=torch.int64, device=DEVICE)
    boxes = boxes_for(batch, height, width)
    for i in range(batch):
        kind = i % 4
        if kind == 1:    # CutMix
            w_self[i], w_src[i] = 1.0, 0.0
            box_self[i] = box_src[i] = boxes[i]
        elif kind == 2:  # Mixup at the ends of [0, 1]
            w_self[i], w_src[i] = (1.0, 0.0) if i % 8 == 2 else (0.0, 1.0)
        elif kind == 3:  # two boxes, general weights
            box_self[i] = boxes[i]
            box_src[i] = torch.tensor([0, height // 2, width // 3, width], device=DEVICE)
    if batch == 1:       # the only row: CutMix with a box
        w_self[0], w_src[0] = 1.0, 0.0
        box_self[0] = box_src[0] = torch.tensor([1, 4, 2, 6], device=DEVICE)
    return w_self, w_src, box_self, box_src


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_general_weights_match_torch(dtype, layout, batch):
    shape = (batch, 3, 5, 7)
    x = make_x(shape, dtype, layout)
    src = torch.tensor(PERMS[batch], device=DEVICE)
    w_self, w_src, box_self, box_src = mixed_batch(batch, 5, 7)
    want = expected_mix(x, src, w_self, w_src, box_self, box_src)
    out, y = run_both(x, src, w_self, w_src, box_self, box_src)
    assert_mixed_close(out, want)
    # The same arithmetic and rounding in place.
    assert_same_bits(y, out)


@pytest.mark.parametrize("shape", [(6, 1, 5, 7), (6, 3, 12, 13), (3, 4, 1, 9), (2, 1, 1, 1)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_other_shapes_and_tiles(layout, shape):
    # N = 35 (16 x 64 tile), 468 (2 x 1024), 36 with H = 1, and a 1x1x1 image;
    # the 3x5x7 images of the tests above use the 8 x 256 tile. Some boxes
    # reach past the small images (negative or too large corners): a box is
    # the pixels it covers.
    batch, channels, height, width = shape
    x = make_x(shape, torch.float32, layout)
    src = torch.tensor(PERMS[batch], device=DEVICE)
    w_self, w_src, box_self, box_src = mixed_batch(batch, height, width)
    want = expected_mix(x, src, w_self, w_src, box_self, box_src)
    out, y = run_both(x, src, w_self, w_src, box_self, box_src)
    assert_mixed_close(out, want)
    assert_same_bits(y, out)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nan_and_inf_next_to_boxes(dtype, layout):
    """A term of weight 0 is not read: pasted boxes and kept pixels are exact
    copies, and an own pixel covered by the box does not leak NaN or inf."""
    batch, height, width = 4, 5, 7
    x = make_x((batch, 2, height, width), dtype, layout)
    src = torch.tensor([1, 2, 3, 0], device=DEVICE)
    box = torch.tensor([1, 4, 2, 5], device=DEVICE)
    inside = box_mask(box, height, width)
    # Under the box of every image, and just outside it (its partner's copy of
    # those pixels is weighted 0 there): NaN and inf.
    x[:, 0, 2, 3] = float("nan")
    x[:, 1, 1, 2] = float("inf")
    x[:, 0, 0, 2] = float("nan")    # the row above the box
    x[:, 1, 2, 5] = float("-inf")   # the column right of it
    # A NaN with a payload (a GPU multiply would return the canonical NaN: a
    # copy must not multiply) and a negative zero (adding a +0.0 term would
    # flip it), outside the box.
    payload_nan = {torch.float32: 0x7FC00001, torch.bfloat16: 0x7FC1, torch.float16: 0x7E01}
    int_type = {torch.float32: torch.int32, torch.bfloat16: torch.int16,
                torch.float16: torch.int16}[dtype]
    x[:, 1, 0, 0] = torch.tensor(payload_nan[dtype], dtype=int_type).view(dtype)
    x[:, 0, 4, 6] = -0.0
    boxes = box.repeat(batch, 1)
    empty = torch.zeros_like(boxes)
    ones = torch.ones(batch, device=DEVICE)
    zeros = torch.zeros(batch, device=DEVICE)

    # CutMix: inside the box the partner, outside the own image, bit for bit.
    out, y = run_both(x, src, ones, zeros, boxes, boxes)
    want = torch.where(inside, x[src], x)
    assert_same_bits(out, want)
    assert_same_bits(y, want)

    # Mixup at the ends of lam: (1, 0) is x and (0, 1) is x[src], whatever the
    # other image holds.
    out, y = run_both(x, src, ones, zeros, empty, empty)
    assert_same_bits(out, x)
    assert_same_bits(y, x)
    out, y = run_both(x, src, zeros, ones, empty, empty)
    assert_same_bits(out, x[src])
    assert_same_bits(y, x[src])

    # One term, not 1: w_self * own alone, the partner (NaN and inf in places)
    # not added, so -0.0 stays -0.0.
    half = torch.full((batch,), 0.5, device=DEVICE)
    out, y = run_both(x, src, half, zeros, empty, empty)
    torch.testing.assert_close(out, (0.5 * x.float()).to(dtype), rtol=0, atol=0, equal_nan=True)
    assert torch.signbit(out[:, 0, 4, 6]).all()
    assert_same_bits(y, out)

    # General weights with the box pasted: the box is an exact copy even
    # though both images hold NaN and inf next to it.
    lam = torch.full((batch,), 0.25, device=DEVICE)
    out, y = run_both(x, src, lam, 1.0 - lam, boxes, boxes)
    assert_same_bits(out[:, :, inside], x[src][:, :, inside])
    assert_same_bits(y, out)
    outside = ~inside
    want = expected_mix(x, src, lam, 1.0 - lam, boxes, boxes)
    assert_mixed_close(out[:, :, outside], want[:, :, outside])


@pytest.mark.parametrize("shape, path", [
    ((300, 1, 5, 7), "scratch"),      # 2 strips of 32 on 2 programs
    ((260, 3, 10, 10), "scratch"),    # 10 strips on 8 persistent programs (interpreter)
    ((300, 2, 4, 4), "copy"),         # one strip: out of place, then copied back
    ((200, 1, 5, 7), "registers"),    # 256 x 8 tile
    ((100, 3, 5, 7), "registers"),    # 128 x 16 tile
])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_inplace_paths(layout, shape, path):
    batch, channels, height, width = shape
    n_cols = channels * height * width
    cfg = cb.launch_config("inplace", batch, n_cols, torch.float32, layout == "channels_last")
    n_strips = triton.cdiv(n_cols, cfg["BLOCK_N"])
    if DEVICE == "cpu":  # the SM count stand-in makes the path predictable
        uses_copy = cfg["USE_SCRATCH"] and n_strips < sm_count(torch.device("cpu"))
        got_path = "copy" if uses_copy else "scratch" if cfg["USE_SCRATCH"] else "registers"
        assert got_path == path
    x = make_x(shape, torch.float32, layout)
    src = torch.randperm(batch, device=DEVICE)
    w_self, w_src, box_self, box_src = mixed_batch(batch, height, width)
    want = expected_mix(x, src, w_self, w_src, box_self, box_src)
    out, y = run_both(x, src, w_self, w_src, box_self, box_src)
    assert_mixed_close(out, want)
    assert_same_bits(y, out)


def test_channels_last_with_one_channel_is_contiguous():
    # Both formats at once: one memory order, read as NCHW.
    x = torch.randn(3, 1, 5, 7, device=DEVICE).contiguous(memory_format=torch.channels_last)
    assert x.is_contiguous()
    src = torch.tensor(PERMS[3], device=DEVICE)
    boxes = boxes_for(3, 5, 7)
    ones, zeros = torch.ones(3, device=DEVICE), torch.zeros(3, device=DEVICE)
    want, _ = reference.cutmix_batch(x, src, boxes)
    out, y = run_both(x, src, ones, zeros, boxes, boxes)
    assert_same_bits(out, want)
    assert_same_bits(y, want)


def test_rejects_other_layouts():
    x = torch.randn(2, 3, 5, 14, device=DEVICE)[..., ::2]
    args = (torch.arange(2, device=DEVICE), torch.ones(2, device=DEVICE),
            torch.zeros(2, device=DEVICE), boxes_for(2, 5, 7), boxes_for(2, 5, 7))
    with pytest.raises(ValueError, match="contiguous or channels-last"):
        cb.mix_images_forward(x, *args)
    with pytest.raises(ValueError, match="contiguous or channels-last"):
        cb.mix_images_inplace(x, *args)
    with pytest.raises(ValueError, match="batch of images"):
        cb.mix_images_forward(torch.randn(2, 35, device=DEVICE), *args)


def test_empty_inputs():
    for shape in ((0, 3, 5, 7), (2, 0, 5, 7), (2, 3, 0, 7)):
        x = torch.empty(shape, device=DEVICE)
        batch = shape[0]
        src = torch.arange(batch, device=DEVICE)
        w = torch.ones(batch, device=DEVICE)
        boxes = torch.zeros(batch, 4, dtype=torch.int64, device=DEVICE)
        assert cb.mix_images_forward(x, src, w, w, boxes, boxes).shape == shape
        cb.mix_images_inplace(x, src, w, w, boxes, boxes)


def test_magic_division_is_exact():
    """_divmod's multiply-high division, checked on the host for the
    divisors and dividends where such schemes fail first."""
    dividends = [0, 1, 2, 3, 7, 2**16 - 1, 2**16, 2**30, 2**31 - 2, 2**31 - 1]
    for divisor in list(range(1, 70)) + [224, 672, 50176, 150528, 2**20 + 1, 2**30 + 1,
                                         2**31 - 1]:
        _, magic, shift = cb._magic_divisor(divisor)
        magic %= 2**32
        for n in dividends + [divisor * k + r for k in (1, 2, 2**31 // divisor - 1)
                              for r in (-1, 0, 1) if 0 <= divisor * k + r < 2**31]:
            assert ((2 * n * magic) >> 32) >> shift == n // divisor, (n, divisor)
