"""The Triton mask-mixing launchers (mixkernels/triton/mask_mix.py) against the
C++ CPU kernel they mirror and the reference.

Run on CUDA tensors when there is a GPU, otherwise under the Triton
interpreter on CPU tensors (small shapes). Covered: the forward and grad x
bit for bit against the CPU kernel (the same fp32 arithmetic: scale, clamps,
taps, two products and a sum) in fp32/fp16 and, on the GPU, bf16; grad mask
against an fp64 ground truth; NCHW and channels-last with every pixel tile
(one and several pixel blocks, channels-last with C <= 4 and with C > 32);
B = 1, 3, 7 with permutations made of cycles and fixed points; both modes;
upsampling by 1x, 2x, 3x, 16x, non-integer factors different per axis, one
mask cell, downsampling; masks several column blocks wide and windows
several tiles long; only the gradients asked for; NaN and inf (the pattern
of NaN in grad mask is the CPU kernel's, pixel by pixel); inputs left as
they were; two runs equal bit for bit; the windows of the mask gradient
hold every pixel that reads a cell (checked on the host against a mirror of
the taps); bad layouts and shapes rejected. The op-level tests
(opcheck, torch.compile, every dtype and size against the reference) run
over every backend in tests/test_mask_mix.py.

Under the interpreter fp32 -> bf16 rounds toward zero (the GPU rounds to
nearest even), so bf16 results may differ from the CPU kernel's by one unit
in the last place: they are compared with torch's default bf16 tolerance.
"""

import os

import numpy as np
import pytest
import torch

triton = pytest.importorskip("triton", reason="triton is not importable")

if not torch.cuda.is_available():
    # Before the kernel module is imported: @triton.jit reads it (tests/conftest.py does too).
    os.environ.setdefault("TRITON_INTERPRET", "1")

from mixkernels import _backend, reference  # noqa: E402
from mixkernels.triton import mask_mix as mm  # noqa: E402
from tests.numerics import assert_matches_ground_truth  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
LAYOUTS = ["nchw", "channels_last"]
MODES = {"bilinear": True, "nearest": False}

# Permutations made of cycles: a 3-cycle, a 2-cycle and fixed points.
PERMS = {1: [0], 3: [1, 2, 0], 7: [1, 2, 0, 4, 3, 5, 6]}

# (B, C, h, w, H, W): masks (B, 1, h, w) upsampled to images (B, C, H, W).
SIZES = [
    (3, 3, 2, 3, 32, 48),   # 16x both axes: windows of two column tiles and five row tiles
    (7, 2, 4, 5, 12, 15),   # 3x, not square
    (3, 3, 4, 4, 8, 8),     # 2x: nearest's shortcut
    (7, 1, 5, 3, 7, 10),    # non-integer, a different ratio per axis; one channel
    (3, 4, 6, 5, 6, 5),     # 1x: the mask as it is
    (1, 3, 1, 1, 1, 1),     # one pixel, one sample (its own partner)
    (3, 2, 1, 1, 4, 5),     # one mask cell: a constant mask per sample
    (3, 2, 6, 8, 4, 5),     # downsampling
    (3, 3, 3, 12, 9, 30),   # a mask two column blocks wide
    (1, 2, 3, 2, 40, 30),   # 1200 pixels: two pixel blocks of the NCHW tile
]

needs_extension = pytest.mark.skipif(not _backend.extension_loaded(),
                                     reason="the C++ extension (the CPU kernel) is not built")


def make_x(shape, dtype, layout):
    x = torch.randn(shape, device=DEVICE).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def make_mask(batch, h, w):
    # Values outside [0, 1] too: weights extrapolate.
    return (1.5 * torch.rand(batch, 1, h, w, device=DEVICE) - 0.25)


def cpu_kernel(x, src, mask, bilinear):
    return torch.ops.mixkernels.mask_mix(x.cpu(), src.cpu(), mask.cpu(), bilinear)


def cpu_kernel_backward(grad, x, src, mask, bilinear, needs_x_grad=True, needs_mask_grad=True):
    return torch.ops.mixkernels.mask_mix_backward(grad.cpu(), x.cpu(), src.cpu(), mask.cpu(),
                                                  bilinear, needs_x_grad, needs_mask_grad)


def assert_same_bits(a, b):
    """Equal bit for bit (NaN included), whatever the memory formats and devices."""
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a.cpu().contiguous().view(-1).view(torch.uint8),
                       b.cpu().contiguous().view(-1).view(torch.uint8))


def assert_like_cpu_kernel(got, want):
    """The CPU kernel's values: bit for bit, except bf16 under the interpreter (docstring)."""
    if got.dtype == torch.bfloat16 and DEVICE == "cpu":
        torch.testing.assert_close(got.cpu(), want, equal_nan=True)
    else:
        assert_same_bits(got, want)


def mask_grad_truth(grad, x, src, mask, mode, dtype):
    """grad mask of the reference in ``dtype`` (x's) and in fp64 (assert_matches_ground_truth)."""
    results = []
    for compute_dtype in (dtype, torch.float64):
        m = mask.detach().to(torch.float64 if compute_dtype == torch.float64 else mask.dtype)
        m.requires_grad_(True)
        out = reference.mask_mix(x.detach().to(compute_dtype), src, m, mode)
        (g,) = torch.autograd.grad(out, m, grad.to(out.dtype))
        results.append(g)
    return results


def run_and_compare(size, dtype, layout, mode, batch_perm=None):
    batch, channels, h, w, height, width = size
    bilinear = MODES[mode]
    x = make_x((batch, channels, height, width), dtype, layout)
    src = torch.tensor(batch_perm or PERMS[batch], device=DEVICE)
    mask = make_mask(batch, h, w)
    grad = make_x((batch, channels, height, width), dtype, layout)
    kept = [t.clone() for t in (x, src, mask, grad)]

    out = mm.mask_mix_forward(x, src, mask, bilinear)
    assert out.dtype == x.dtype and out.shape == x.shape and out.stride() == x.stride()
    assert_like_cpu_kernel(out, cpu_kernel(x, src, mask, bilinear))

    grad_x, grad_mask = mm.mask_mix_backward(grad, x, src, mask, bilinear, True, True)
    want_grad_x, _ = cpu_kernel_backward(grad, x, src, mask, bilinear)
    assert grad_x.stride() == x.stride()
    assert_like_cpu_kernel(grad_x, want_grad_x)
    # The mask gradient sums in another order than the CPU kernel's: against fp64.
    assert grad_mask.dtype == mask.dtype and grad_mask.shape == mask.shape
    assert grad_mask.is_contiguous()
    base, truth = mask_grad_truth(grad, x, src, mask, mode, dtype)
    assert_matches_ground_truth(grad_mask, base, truth, torch.float32,
                                f"grad mask [{size} {dtype} {layout} {mode}]", scale_floor=1.0)

    for before, after in zip(kept, (x, src, mask, grad)):
        assert_same_bits(after, before)


@needs_extension
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
def test_matches_the_cpu_kernel(size, layout, mode):
    run_and_compare(size, torch.float32, layout, mode)


@needs_extension
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_matches_the_cpu_kernel(dtype, layout, mode):
    run_and_compare((7, 3, 4, 5, 16, 15), dtype, layout, mode)


@needs_extension
@pytest.mark.parametrize("channels", [2, 3, 4, 5, 40], ids=lambda c: f"C{c}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_channels_last_tile(dtype, channels):
    # C <= 4: one 4-channel block; C = 5 and 40: 32-channel blocks, 40 in two.
    run_and_compare((3, channels, 3, 2, 9, 7), dtype, "channels_last", "bilinear")


@needs_extension
@pytest.mark.parametrize("mode", MODES)
def test_mask_in_half_precision(mode):
    """A bf16 mask is read as fp32 and its gradient returned in bf16."""
    bilinear = MODES[mode]
    x = make_x((3, 2, 12, 10), torch.bfloat16, "nchw")
    src = torch.tensor(PERMS[3], device=DEVICE)
    mask = make_mask(3, 3, 2).to(torch.bfloat16)
    grad = torch.randn_like(x)
    assert_like_cpu_kernel(mm.mask_mix_forward(x, src, mask, bilinear),
                           cpu_kernel(x, src, mask, bilinear))
    grad_x, grad_mask = mm.mask_mix_backward(grad, x, src, mask, bilinear, True, True)
    want_grad_x, want_grad_mask = cpu_kernel_backward(grad, x, src, mask, bilinear)
    assert_like_cpu_kernel(grad_x, want_grad_x)
    assert grad_mask.dtype == torch.bfloat16
    torch.testing.assert_close(grad_mask.cpu(), want_grad_mask)


@needs_extension
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("needs_x_grad,needs_mask_grad",
                         [(True, False), (False, True), (False, False)])
def test_only_the_gradients_asked_for(needs_x_grad, needs_mask_grad, mode):
    bilinear = MODES[mode]
    x = make_x((7, 3, 12, 15), torch.float32, "channels_last")
    src = torch.tensor(PERMS[7], device=DEVICE)
    mask = make_mask(7, 4, 5)
    grad = torch.randn_like(x)
    grad_x, grad_mask = mm.mask_mix_backward(grad, x, src, mask, bilinear, needs_x_grad,
                                             needs_mask_grad)
    both_x, both_mask = mm.mask_mix_backward(grad, x, src, mask, bilinear, True, True)
    if needs_x_grad:
        assert_same_bits(grad_x, both_x)
    else:
        assert grad_x.shape == (0,) and grad_x.dtype == x.dtype
    if needs_mask_grad:
        assert_same_bits(grad_mask, both_mask)
    else:
        assert grad_mask.shape == (0,) and grad_mask.dtype == mask.dtype


@needs_extension
# The interpreter computes with numpy, which warns of the NaN it makes.
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_nan_and_inf(layout, mode):
    """The forward and grad x as the CPU kernel (and the reference) propagate
    them; grad mask has NaN in the cells the CPU kernel has, for NaN at
    corners, edges and inside, including pixels that read a cell with
    weight 0 (a bilinear pixel left of the first cell centre reads cell 1
    with weight 0, and 0 * NaN is NaN there too)."""
    bilinear = MODES[mode]
    positions = [(0, 0), (0, 15), (11, 0), (11, 15), (5, 7), (1, 1), (6, 12), (10, 2)]
    batch = len(positions)
    x = make_x((batch, 2, 12, 16), torch.float32, layout)
    for i, (y, xx) in enumerate(positions):
        x[i, i % 2, y, xx] = float("nan")
    x[2, 1, 3, 3] = float("inf")
    mask = make_mask(batch, 3, 2)
    mask[5, 0, 1, 1] = float("inf")
    grad = torch.randn_like(x)
    # Fixed points: each sample's NaN reaches its own mask gradient only.
    src = torch.arange(batch, device=DEVICE)
    out = mm.mask_mix_forward(x, src, mask, bilinear)
    assert_same_bits(out, cpu_kernel(x, src, mask, bilinear))
    torch.testing.assert_close(out, reference.mask_mix(x, src, mask, mode), equal_nan=True)
    grad_x, grad_mask = mm.mask_mix_backward(grad, x, src, mask, bilinear, True, True)
    want_grad_x, want_grad_mask = cpu_kernel_backward(grad, x, src, mask, bilinear)
    assert_same_bits(grad_x, want_grad_x)
    assert torch.equal(torch.isnan(grad_mask.cpu()), torch.isnan(want_grad_mask))
    assert torch.isnan(want_grad_mask).any(dim=(1, 2, 3)).all()


def test_deterministic():
    """No atomics: two runs agree bit for bit."""
    x = make_x((7, 3, 32, 48), torch.bfloat16, "channels_last")
    src = torch.tensor(PERMS[7], device=DEVICE)
    mask = make_mask(7, 2, 3)
    grad = torch.randn_like(x)
    first = mm.mask_mix_backward(grad, x, src, mask, True, True, True)
    second = mm.mask_mix_backward(grad, x, src, mask, True, True, True)
    for a, b in zip(first, second):
        assert_same_bits(a, b)


# A host mirror of the taps of csrc/include/mixkernels/mask_math.h, fp32 as there.
def _taps(o, in_size, out_size, bilinear):
    f32 = np.float32
    scale = f32(mm.upsample_scale(in_size, out_size))
    if in_size == out_size:
        return {o}
    if bilinear:
        src = max(scale * (f32(o) + f32(0.5)) - f32(0.5), f32(0.0))
        first = min(int(np.floor(src)), in_size - 1)
        return {first, first + (1 if first < in_size - 1 else 0)}
    if out_size == 2 * in_size:
        return {o >> 1}
    return {min(int(np.floor(f32(o) * scale)), in_size - 1)}


@pytest.mark.parametrize("mode", MODES)
def test_windows_hold_every_reader(mode):
    """Every output index that reads input index r lies in r's window, for
    all sizes to 24 and pairs of usual ones (14 -> 224, 7 -> 299, ...)."""
    bilinear = MODES[mode]
    sizes = [(n_in, n_out) for n_in in range(1, 25) for n_out in range(1, 25)]
    sizes += [(a, b) for a in (7, 14, 16, 56, 224) for b in (7, 14, 32, 112, 224, 299, 384, 1024)]
    for n_in, n_out in sizes:
        readers = {r: [] for r in range(n_in)}
        for o in range(n_out):
            for r in _taps(o, n_in, n_out, bilinear):
                readers[r].append(o)
        length = mm._window_length(n_in, n_out, bilinear)
        for r, outputs in readers.items():
            start, end = mm._window_bounds(r, n_in, n_out, bilinear)
            assert end - start <= length
            if outputs:
                assert start <= outputs[0] and outputs[-1] < end, (n_in, n_out, r, start, end)


def test_launch_configs():
    assert mm.launch_config("forward", 3, False, True)["BLOCK_C"] == 1
    assert mm.launch_config("forward", 4, True, True)["BLOCK_C"] == 4
    assert mm.launch_config("forward", 5, True, False)["BLOCK_C"] == 32
    with pytest.raises(ValueError, match="unknown kernel"):
        mm.launch_config("sideways", 3, False, True)
    with pytest.raises(ValueError, match="needs a gradient"):
        mm.launch_config("backward", 3, False, True, False, False)


def test_rejects_bad_layouts_and_shapes():
    src = torch.arange(2, device=DEVICE)
    mask = make_mask(2, 2, 2)
    x = torch.randn(2, 3, 5, 14, device=DEVICE)
    with pytest.raises(ValueError, match="contiguous or channels-last"):
        mm.mask_mix_forward(x[..., ::2], src, mask, True)
    with pytest.raises(ValueError, match="batch of images"):
        mm.mask_mix_forward(torch.randn(2, 35, device=DEVICE), src, mask, True)
    with pytest.raises(ValueError, match="mask"):
        mm.mask_mix_forward(x, src, make_mask(2, 2, 2)[:, 0], True)
    with pytest.raises(ValueError, match="mask"):
        mm.mask_mix_forward(x, src, make_mask(3, 2, 2), True)
    with pytest.raises(TypeError, match="mask"):
        mm.mask_mix_forward(x, src, mask.to(torch.int32), True)
    with pytest.raises(TypeError, match="x"):
        mm.mask_mix_forward(x.double(), src, mask, True)
    with pytest.raises(ValueError, match="grad"):
        mm.mask_mix_backward(torch.randn(2, 3, 5, 13, device=DEVICE), x, src, mask, True, True,
                             True)
    with pytest.raises(ValueError, match="grad"):
        mm.mask_mix_backward(x.contiguous(memory_format=torch.channels_last), x, src, mask, True,
                             True, True)
    # The windows of the mask gradient are int32 bounds: (2 * 30000 + 3) * 40000 >= 2^31.
    with pytest.raises(ValueError, match="mask width"):
        mm.mask_mix_forward(torch.randn(1, 1, 1, 40000, device=DEVICE), src[:1],
                            make_mask(1, 1, 30000), True)


def test_empty_images():
    x = torch.empty(2, 0, 5, 7, device=DEVICE)
    src = torch.arange(2, device=DEVICE)
    mask = make_mask(2, 2, 2)
    assert mm.mask_mix_forward(x, src, mask, True).shape == x.shape
    grad_x, grad_mask = mm.mask_mix_backward(x, x, src, mask, True, True, True)
    assert grad_x.shape == x.shape
    assert torch.equal(grad_mask, torch.zeros_like(mask))
