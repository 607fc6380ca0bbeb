"""cutmix_batch against mixkernels.reference (and timm's per-sample paste).

CutMix copies pixels, so the kernel must match the reference exactly: the
mixed batch, the gradient with respect to x, and lam.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mixkernels
from mixkernels import reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# The compiled backends with image-mixing kernels that run here (Triton under
# the interpreter on CPU tensors when there is no GPU).
KERNEL_BACKENDS = ["cpu", "triton", pytest.param("cuda", marks=pytest.mark.gpu)]


def random_boxes(batch, height, width, generator=None):
    y = torch.sort(torch.randint(0, height + 1, (batch, 2), generator=generator), dim=1).values
    x = torch.sort(torch.randint(0, width + 1, (batch, 2), generator=generator), dim=1).values
    boxes = torch.stack([y[:, 0], y[:, 1], x[:, 0], x[:, 1]], dim=1)
    if batch >= 3:
        boxes[0] = torch.tensor([0, 0, 0, 0])  # empty box: the image is unchanged
        boxes[1] = torch.tensor([0, height, 0, width])  # the whole image is the partner's
        boxes[2] = torch.tensor([height - 1, height, width - 1, width])  # one corner pixel
    return boxes


def check_exact(backend, x, perm, boxes):
    if backend in ("triton", "cuda") and torch.cuda.is_available():
        x, perm, boxes = x.cuda(), perm.cuda(), boxes.cuda()
    x = x.detach().requires_grad_(True)
    out, lam = mixkernels.cutmix_batch(x, perm, boxes, backend=backend)
    ref, ref_lam = reference.cutmix_batch(x, perm, boxes)
    g = torch.randn(out.shape).to(out.dtype).to(out.device)
    (grad,) = torch.autograd.grad(out, x, g)
    (ref_grad,) = torch.autograd.grad(ref, x, g)
    torch.testing.assert_close(out, ref, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(lam, ref_lam, rtol=0, atol=0)
    if backend == "triton" and x.dtype == torch.bfloat16 and not x.is_cuda:
        # Where an image's own pixel and its partner's pasted pixel both pass
        # gradient, the two add; the Triton interpreter rounds that fp32 sum to
        # bf16 by truncation (a GPU rounds to nearest, as torch does): 1 ulp.
        torch.testing.assert_close(grad, ref_grad, rtol=2 ** -7, atol=0)
    else:
        torch.testing.assert_close(grad, ref_grad, rtol=0, atol=0)
    return out


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 3, 7, 5), (8, 3, 16, 31)], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_matches_reference_exactly(backend, dtype, shape, layout):
    x = torch.randn(shape).to(dtype)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif layout == "strided":
        x = torch.randn(*shape[:-1], 2 * shape[-1]).to(dtype)[..., ::2]
    batch, _, height, width = shape
    for perm in (torch.arange(batch - 1, -1, -1), torch.randperm(batch)):
        out = check_exact(backend, x, perm, random_boxes(batch, height, width))
        if layout == "channels_last":
            assert out.is_contiguous(memory_format=torch.channels_last)


def test_reference_is_timms_paste():
    """timm pastes x.flip(0)[:, :, y0:y1, x0:x1] into each image (elem mode, per sample)."""
    x = torch.randn(6, 3, 10, 12)
    boxes = random_boxes(6, 10, 12)
    perm = torch.arange(5, -1, -1)
    expected = x.clone()
    for i, (y0, y1, x0, x1) in enumerate(boxes.tolist()):
        expected[i, :, y0:y1, x0:x1] = x.flip(0)[i, :, y0:y1, x0:x1]
    out, lam = reference.cutmix_batch(x, perm, boxes)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    area = (boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2])
    torch.testing.assert_close(lam, 1 - area.float() / 120)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_pasted_box_is_an_exact_copy_next_to_nan(backend):
    x = torch.randn(2, 1, 4, 4)
    x[0, 0, 1, 1] = float("nan")  # inside image 0's own box: replaced by the partner's pixel
    x[1, 0, 3, 3] = float("inf")  # outside image 1's box: kept
    boxes = torch.tensor([[0, 2, 0, 2], [0, 2, 0, 2]])
    check_exact(backend, x, torch.tensor([1, 0]), boxes)


@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 6), channels=st.integers(1, 4), height=st.integers(1, 12), width=st.integers(1, 40),
       channels_last=st.booleans(), seed=st.integers(0, 2**16))
def test_cpu_kernel_random_boxes(batch, channels, height, width, channels_last, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, height, width, generator=generator)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    perm = torch.randperm(batch, generator=generator)
    check_exact("cpu", x, perm, random_boxes(batch, height, width, generator))


def test_opcheck_and_compile():
    x = torch.randn(4, 3, 6, 7, requires_grad=True)
    perm, boxes = torch.tensor([1, 0, 3, 2]), random_boxes(4, 6, 7)
    ones = torch.ones(4)
    torch.library.opcheck(torch.ops.mixkernels.mix_images.default, (x, perm, ones, torch.zeros(4), boxes, boxes))
    torch._dynamo.reset()

    def step(x):
        out, lam = mixkernels.cutmix_batch(x, perm, boxes, backend="cpu")
        return (out * out).sum() + lam.sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    eager_out, compiled_out = step(x), compiled(x)
    torch.testing.assert_close(compiled_out, eager_out)
    torch.testing.assert_close(torch.autograd.grad(compiled_out, x)[0], torch.autograd.grad(eager_out, x)[0])


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_bad_input(backend):
    x = torch.randn(4, 3, 8, 8)
    perm, boxes = torch.randperm(4), random_boxes(4, 8, 8)
    cases = [
        ("boxes", ValueError, (x, perm, torch.tensor([[0, 9, 0, 1]] * 4))),
        ("boxes", ValueError, (x, perm, torch.tensor([[3, 2, 0, 1]] * 4))),
        ("boxes", ValueError, (x, perm, torch.tensor([[0, 1, -1, 1]] * 4))),
        ("boxes", ValueError, (x, perm, boxes[:3])),
        ("boxes", TypeError, (x, perm, boxes.float())),
        ("perm", ValueError, (x, torch.tensor([0, 0, 1, 2]), boxes)),
        ("x", ValueError, (torch.randn(4, 8, 8), perm, boxes)),
        ("x", ValueError, (torch.randn(0, 3, 8, 8), torch.zeros(0, dtype=torch.long), boxes[:0])),
    ]
    for name, error, args in cases:
        with pytest.raises(error, match=name):
            mixkernels.cutmix_batch(*args, backend=backend)
