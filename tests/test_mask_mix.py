"""mask_mix on every compiled backend against mixkernels.reference.

The C++ CPU kernel; the Triton kernels (on the GPU, or under the interpreter
on CPU tensors without one); the CUDA kernels (GPU-marked). Forward, grad x
and grad mask in fp32, bf16 and fp16 against an fp64 ground truth
(tests/numerics.py), both upsampling modes, upsampling factors 1x, 3x, 16x
and non-integer ones, square and not, batch sizes 1, 3 and 7, permutations
with cycles, channels-last and strided batches, partial requires_grad,
registration (opcheck, torch.compile), bad input, and determinism.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mixkernels
from mixkernels import functional, reference
from mixkernels.ops.mask_mix import mask_mix_on_backend, mask_mix_triton, mask_mix_triton_backward
from tests.backend_cases import compiled_backends_for_tests
from tests.numerics import assert_matches_ground_truth

BACKENDS = compiled_backends_for_tests()

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
MODES = ["bilinear", "nearest"]
# (B, C, h, w, H, W): mask (B, 1, h, w) upsampled to images (B, C, H, W).
SIZES = [
    (3, 3, 2, 3, 32, 48),  # 16x, as 14 -> 224 for AutoMix and SAMix (small for the Triton interpreter)
    (7, 2, 4, 5, 12, 15),  # 3x, not square
    (3, 3, 5, 5, 7, 7),  # non-integer ratio
    (7, 1, 5, 3, 7, 10),  # non-integer ratios, a different one per axis
    (3, 4, 6, 5, 6, 5),  # 1x: the mask is used as it is
    (1, 3, 1, 1, 1, 1),  # one pixel, one sample (its own partner)
    (3, 2, 1, 1, 4, 5),  # one mask cell: a constant mask per sample
    (3, 2, 6, 8, 4, 5),  # downsampling works as F.interpolate's does
]


def permutation(batch, device="cpu"):
    """A 3-cycle, a 2-cycle and fixed points for 7 samples; a random one otherwise."""
    if batch == 7:
        return torch.tensor([1, 2, 0, 4, 3, 5, 6], device=device)
    return torch.randperm(batch).to(device)


def make_images(shape, dtype, layout="contiguous", device="cpu"):
    if layout == "channels_last":
        return torch.randn(shape).to(device, dtype).to(memory_format=torch.channels_last)
    if layout == "strided":  # every other column of wider images: neither contiguous nor channels-last
        return torch.randn(*shape[:-1], 2 * shape[-1]).to(device, dtype)[..., ::2]
    return torch.randn(shape).to(device, dtype)


def run_and_compare(size, dtype, mode, backend="cpu", device="cpu", *, layout="contiguous",
                    mask_dtype=torch.float32, x_grad=True, mask_grad=True):
    batch, channels, h, w, height, width = size
    x = make_images((batch, channels, height, width), dtype, layout, device)
    perm = permutation(batch, device)
    # Values outside [0, 1] too: the op must not assume a probability.
    mask = (1.5 * torch.rand(batch, 1, h, w) - 0.25).to(device, mask_dtype)
    grad_output = torch.randn(batch, channels, height, width).to(device, dtype)

    def call(backend, compute_dtype):
        xi = x.detach().to(compute_dtype).requires_grad_(x_grad)
        mi = mask.detach().to(torch.float64 if compute_dtype == torch.float64 else mask_dtype)
        mi.requires_grad_(mask_grad)
        out = mixkernels.mask_mix(xi, perm, mi, mode=mode, backend=backend)
        inputs = [t for t in (xi, mi) if t.requires_grad]
        grads = torch.autograd.grad(out, inputs, grad_output.to(out.dtype)) if inputs else ()
        return out, grads

    out, grads = call(backend, dtype)
    base_out, base_grads = call("torch", dtype)
    true_out, true_grads = call("torch", torch.float64)
    tag = f"{backend} {dtype} {mode} {size} {layout} mask {mask_dtype} perm={perm.tolist()}"
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last), f"layout lost [{tag}]"
    assert_matches_ground_truth(out, base_out, true_out, dtype, f"mixed batch [{tag}]")
    names = [(name, d) for name, d, wanted in (("grad x", dtype, x_grad), ("grad mask", mask_dtype, mask_grad))
             if wanted]
    for (name, grad_dtype), g, bg, tg in zip(names, grads, base_grads, true_grads):
        assert g.dtype == grad_dtype, f"{name}: dtype {g.dtype} [{tag}]"
        assert_matches_ground_truth(g, bg, tg, grad_dtype, f"{name} [{tag}]", scale_floor=1.0)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", SIZES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_matches_reference(backend, device, dtype, mode, size, layout):
    run_and_compare(size, dtype, mode, backend, device, layout=layout)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_mask_in_x_dtype(backend, device, dtype, mode):
    run_and_compare((7, 3, 4, 4, 16, 12), dtype, mode, backend, device, mask_dtype=dtype)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_strided_batch_is_copied(backend, device, mode):
    run_and_compare((3, 3, 3, 4, 9, 8), torch.float32, mode, backend, device, layout="strided")


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("x_grad,mask_grad", [(True, False), (False, True)])
def test_partial_requires_grad(backend, device, mode, x_grad, mask_grad):
    run_and_compare((7, 3, 4, 5, 16, 20), torch.float32, mode, backend, device, x_grad=x_grad,
                    mask_grad=mask_grad)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_random_sizes(backend, device):
    # The Triton interpreter runs a kernel program by program in Python: fewer examples there.
    interpreted = backend == "triton" and device == "cpu"

    @settings(max_examples=8 if interpreted else 25, deadline=None)
    @given(batch=st.integers(1, 5), channels=st.integers(1, 4), h=st.integers(1, 6), w=st.integers(1, 6),
           height=st.integers(1, 20), width=st.integers(1, 40), channels_last=st.booleans(),
           bilinear=st.booleans(), seed=st.integers(0, 2**16))
    def check(batch, channels, h, w, height, width, channels_last, bilinear, seed):
        torch.manual_seed(seed)
        run_and_compare((batch, channels, h, w, height, width), torch.float32,
                        "bilinear" if bilinear else "nearest", backend, device,
                        layout="channels_last" if channels_last else "contiguous")

    check()


# The Triton interpreter computes with numpy, which warns of the NaN it makes.
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_nan_and_inf_propagate_like_the_reference(backend, device, mode):
    x = torch.randn(3, 2, 8, 8)
    x[0, 1, 2, 3] = float("nan")
    x[2, 0, 7, 7] = float("inf")
    mask = torch.rand(3, 1, 4, 4)
    mask[1, 0, 1, 2] = float("inf")
    perm = torch.tensor([2, 0, 1])
    x, mask, perm = x.to(device), mask.to(device), perm.to(device)
    out = mixkernels.mask_mix(x, perm, mask, mode=mode, backend=backend)
    torch.testing.assert_close(out, reference.mask_mix(x, perm, mask, mode), equal_nan=True)


@pytest.mark.parametrize("mode", MODES)
def test_reference_gradcheck_fp64(mode):
    x = torch.randn(2, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(2, 1, 2, 3, dtype=torch.float64, requires_grad=True)
    perm = torch.tensor([1, 0])
    assert torch.autograd.gradcheck(lambda x, m: reference.mask_mix(x, perm, m, mode), (x, mask))


def _ops_for(backend):
    """(forward, backward) ops of a compiled backend; the C++ ops dispatch on the device."""
    if backend == "triton":
        return mask_mix_triton._opoverload, mask_mix_triton_backward._opoverload
    return torch.ops.mixkernels.mask_mix.default, torch.ops.mixkernels.mask_mix_backward.default


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("bilinear", [True, False])
@pytest.mark.parametrize("dtype,layout", [(torch.float32, "contiguous"), (torch.float32, "channels_last"),
                                          (torch.bfloat16, "contiguous")], ids=str)
def test_opcheck(backend, device, bilinear, dtype, layout):
    forward_op, backward_op = _ops_for(backend)
    x = make_images((3, 2, 6, 5), dtype, layout, device).requires_grad_(True)
    perm = torch.tensor([2, 0, 1], device=device)
    mask = torch.rand(3, 1, 2, 3, device=device, requires_grad=True)
    torch.library.opcheck(forward_op, (x, perm, mask, bilinear))
    grad = make_images((3, 2, 6, 5), dtype, layout, device)
    for needs_x_grad, needs_mask_grad in ((True, True), (True, False), (False, True)):
        torch.library.opcheck(backward_op,
                              (grad, x.detach(), perm, mask.detach(), bilinear, needs_x_grad, needs_mask_grad))


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_compile_fullgraph_matches_eager(backend, device, mode):
    torch._dynamo.reset()
    x = torch.randn(4, 3, 12, 10, device=device, requires_grad=True)
    mask = torch.rand(4, 1, 3, 2, device=device, requires_grad=True)
    perm = torch.tensor([1, 0, 3, 2], device=device)

    def step(x, mask):
        out = mixkernels.mask_mix(x, perm, torch.sigmoid(mask), mode=mode, backend=backend)
        return (out * out).sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    eager_out, compiled_out = step(x, mask), compiled(x, mask)
    torch.testing.assert_close(compiled_out, eager_out)
    for eager_grad, compiled_grad in zip(torch.autograd.grad(eager_out, (x, mask)),
                                         torch.autograd.grad(compiled_out, (x, mask))):
        torch.testing.assert_close(compiled_grad, eager_grad)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_inputs_not_modified(backend, device):
    x = torch.randn(5, 3, 16, 16, device=device, requires_grad=True)
    mask = torch.rand(5, 1, 4, 4, device=device, requires_grad=True)
    perm = torch.tensor([4, 0, 1, 2, 3], device=device)
    kept = [t.detach().clone() for t in (x, mask, perm)]
    out = mixkernels.mask_mix(x, perm, mask, backend=backend)
    grad_output = torch.randn_like(out)
    kept_grad_output = grad_output.clone()
    torch.autograd.grad(out, (x, mask), grad_output)
    for before, after in zip(kept + [kept_grad_output], (x, mask, perm, grad_output)):
        assert torch.equal(before, after.detach())


@pytest.mark.parametrize("mode", MODES)
def test_deterministic_for_any_thread_count(mode):
    """The mask gradient is reduced without atomics, in a fixed order: two
    calls, and calls on 1 or 2 threads, agree bit for bit, and the op runs
    under torch.use_deterministic_algorithms(True)."""
    x = torch.randn(4, 3, 224, 224).to(memory_format=torch.channels_last).requires_grad_(True)
    mask = torch.randn(4, 1, 14, 14, requires_grad=True)
    perm = torch.tensor([3, 2, 0, 1])
    grad_output = torch.randn(4, 3, 224, 224)

    def run():
        out = mixkernels.mask_mix(x, perm, mask, mode=mode, backend="cpu")
        return (out, *torch.autograd.grad(out, (x, mask), grad_output))

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        first, second = run(), run()
        torch.set_num_threads(1)
        single = run()
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    for a, b, c in zip(first, second, single):
        assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("backend,device", [p for p in BACKENDS if p.id != "cpu"])
@pytest.mark.parametrize("mode", MODES)
def test_triton_and_cuda_are_deterministic(backend, device, mode):
    """Two calls agree bit for bit under torch.use_deterministic_algorithms(True):
    the mask gradient is reduced without atomics. On a GPU the images are
    ImageNet-sized (14 -> 224, as AutoMix and SAMix); under the interpreter small."""
    batch, side, cells = (8, 224, 14) if device == "cuda" else (3, 32, 2)
    x = torch.randn(batch, 3, side, side, device=device).to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    mask = torch.randn(batch, 1, cells, cells, device=device, requires_grad=True)
    perm = torch.randperm(batch).to(device)
    grad_output = torch.randn(batch, 3, side, side, device=device)

    def run():
        out = mixkernels.mask_mix(x, perm, mask, mode=mode, backend=backend)
        return (out, *torch.autograd.grad(out, (x, mask), grad_output))

    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        first, second = run(), run()
    finally:
        torch.use_deterministic_algorithms(deterministic)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.fixture
def no_kernel(monkeypatch):
    """Fails the test if a kernel (or the reference) runs: checks must come first."""
    def forbidden(*args, **kwargs):
        raise AssertionError("a kernel ran before the input was rejected")

    monkeypatch.setattr(functional, "mask_mix_on_backend", forbidden)
    monkeypatch.setattr(reference, "mask_mix", forbidden)


def _bad_cases():
    x, perm, mask = torch.randn(4, 3, 8, 8), torch.tensor([1, 2, 3, 0]), torch.rand(4, 1, 2, 2)
    return [
        ("x", TypeError, (x.numpy(), perm, mask), {}),
        ("x", TypeError, (x.to(torch.int32), perm, mask), {}),
        ("x", ValueError, (x[0], perm, mask), {}),
        ("x", ValueError, (torch.randn(0, 3, 8, 8), perm[:0], mask[:0]), {}),
        ("x", ValueError, (torch.randn(4, 3, 0, 8), perm, mask), {}),
        ("perm", ValueError, (x, torch.tensor([0, 0, 1, 2]), mask), {}),
        ("perm", ValueError, (x, torch.tensor([0, 1, 2, 4]), mask), {}),
        ("perm", ValueError, (x, perm[:3], mask), {}),
        ("perm", TypeError, (x, perm.float(), mask), {}),
        ("perm", ValueError, (x, perm.to("meta"), mask), {}),
        ("mask", ValueError, (x, perm, torch.rand(4, 2, 2, 2)), {}),
        ("mask", ValueError, (x, perm, torch.rand(3, 1, 2, 2)), {}),
        ("mask", ValueError, (x, perm, torch.rand(4, 2, 2)), {}),
        ("mask", ValueError, (x, perm, torch.rand(4, 1, 0, 2)), {}),
        ("mask", TypeError, (x, perm, torch.randint(0, 2, (4, 1, 2, 2))), {}),
        ("mask", TypeError, (x, perm, mask.tolist()), {}),
        ("mask", ValueError, (x, perm, mask.to("meta")), {}),
        ("mode", ValueError, (x, perm, mask), {"mode": "bicubic"}),
        ("mode", ValueError, (x, perm, mask), {"mode": None}),
        ("backend", ValueError, (x, perm, mask), {"backend": "tpu"}),
    ]


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
@pytest.mark.parametrize("case", range(len(_bad_cases())))
def test_bad_input(backend, case, no_kernel):
    name, error, args, kwargs = _bad_cases()[case]
    with pytest.raises(error, match=name):
        mixkernels.mask_mix(*args, **{"backend": backend, **kwargs})


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_bad_dtypes_for_the_kernel(backend, device, no_kernel):
    """fp64, and a mask neither fp32 nor x's dtype, run on the reference only."""
    x, perm, mask = (t.to(device) for t in (torch.randn(2, 1, 4, 4), torch.tensor([1, 0]), torch.rand(2, 1, 2, 2)))
    with pytest.raises(TypeError, match="x"):
        mixkernels.mask_mix(x.double(), perm, mask, backend=backend)
    with pytest.raises(TypeError, match="mask"):
        mixkernels.mask_mix(x, perm, mask.half(), backend=backend)


def test_unusable_backend_is_a_clear_error():
    """CUDA kernels asked for by name on CPU tensors (or without a CUDA build): an error, not a fallback."""
    x, perm, mask = torch.randn(2, 1, 4, 4), torch.tensor([1, 0]), torch.rand(2, 1, 2, 2)
    with pytest.raises(RuntimeError, match="cuda"):
        mixkernels.mask_mix(x, perm, mask, backend="cuda")


def test_direct_op_calls_are_guarded():
    ops = torch.ops.mixkernels
    x, perm, mask = torch.randn(3, 2, 4, 4), torch.tensor([1, 2, 0]), torch.rand(3, 1, 2, 2)
    with pytest.raises(IndexError, match="src"):
        ops.mask_mix(x, torch.tensor([1, 2, 3]), mask, True)
    with pytest.raises(ValueError, match="src"):
        ops.mask_mix(x, torch.tensor([1, 1, 0]), mask, True)
    with pytest.raises(RuntimeError, match="mask"):
        ops.mask_mix(x, perm, torch.rand(3, 1, 2), True)
    with pytest.raises(RuntimeError, match="mask"):
        ops.mask_mix(x, perm, mask.half(), True)
    with pytest.raises(RuntimeError, match="x"):
        ops.mask_mix(x[..., ::2], perm, mask, True)
    with pytest.raises(RuntimeError, match="grad"):
        ops.mask_mix_backward(torch.randn(3, 2, 4, 4).to(memory_format=torch.channels_last), x, perm, mask, True,
                              True, True)
    with pytest.raises(RuntimeError, match="grad"):
        ops.mask_mix_backward(torch.randn(3, 2, 4, 5), x, perm, mask, True, True, True)
