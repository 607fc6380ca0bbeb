"""torch.library registration: opcheck on every op, torch.compile(fullgraph=True)
against eager, and the per-capability CPU kernel builds."""

import os
import subprocess
import sys

import pytest
import torch

import mixkernels
from mixkernels import _backend
from mixkernels.ops import infinite_class_mixup as icm_ops
from mixkernels.ops.mixup_cross_entropy import mixup_cross_entropy_triton, mixup_cross_entropy_triton_backward
from mixkernels.ops.soft_target_cross_entropy import (soft_target_cross_entropy_triton,
                                                      soft_target_cross_entropy_triton_backward)
from tests.backend_cases import compiled_backends_for_tests

BACKENDS = compiled_backends_for_tests()
CPU_CAPABILITIES = ["default", "avx2", "avx512"]


def test_extension_is_built_and_loads():
    """make test builds mixkernels._C; a missing build must fail here, not skip."""
    assert _backend.extension_loaded(), _backend._EXTENSION_ERROR
    assert mixkernels.backends()["cpu"].usable


def _mixup_args(device, dtype=torch.float32, batch=5, num_classes=11):
    logits = torch.randn(batch, num_classes, device=device, dtype=dtype, requires_grad=True)
    y_a = torch.randint(0, num_classes, (batch,), device=device)
    y_b = torch.randint(0, num_classes, (batch,), device=device)
    lam = torch.rand(batch, device=device, requires_grad=True)
    return logits, y_a, y_b, lam


def _ops_for(backend):
    if backend == "triton":
        return (mixup_cross_entropy_triton._opoverload, mixup_cross_entropy_triton_backward._opoverload,
                soft_target_cross_entropy_triton._opoverload, soft_target_cross_entropy_triton_backward._opoverload)
    ops = torch.ops.mixkernels
    return (ops.mixup_cross_entropy.default, ops.mixup_cross_entropy_backward.default,
            ops.soft_target_cross_entropy.default, ops.soft_target_cross_entropy_backward.default)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_opcheck(backend, device, dtype):
    mixup_fwd, mixup_bwd, soft_fwd, soft_bwd = _ops_for(backend)
    logits, y_a, y_b, lam = _mixup_args(device, dtype)
    torch.library.opcheck(mixup_fwd, (logits, y_a, y_b, lam, 0.1))
    loss, lse = mixup_fwd(logits.detach(), y_a, y_b, lam.detach(), 0.1)
    torch.library.opcheck(mixup_bwd, (torch.rand_like(loss), logits.detach(), y_a, y_b, lam.detach(), lse, 0.1))
    target = torch.rand_like(logits, dtype=torch.float32).requires_grad_(True)
    torch.library.opcheck(soft_fwd, (logits, target))
    loss, lse, target_sum = soft_fwd(logits.detach(), target.detach())
    for needs_target_grad in (True, False):
        torch.library.opcheck(soft_bwd, (torch.rand_like(loss), logits.detach(), target.detach(), lse, target_sum,
                                         needs_target_grad))


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_compile_fullgraph_matches_eager(backend, device, reduction):
    torch._dynamo.reset()
    logits, y_a, y_b, lam = _mixup_args(device)
    logits.data[0, 3] = float("-inf")  # a masked class: the edge case goes through the graph too
    target = torch.softmax(torch.randn_like(logits), dim=1)

    def step(z, l):
        mixed = mixkernels.mixup_cross_entropy(z, y_a, y_b, l, label_smoothing=0.1, reduction=reduction,
                                               backend=backend)
        soft = mixkernels.soft_target_cross_entropy(z, target, reduction=reduction, backend=backend)
        return (mixed + soft).sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    eager_out = step(logits, lam)
    eager_grads = torch.autograd.grad(eager_out, (logits, lam))
    compiled_out = compiled(logits, lam)
    compiled_grads = torch.autograd.grad(compiled_out, (logits, lam))
    torch.testing.assert_close(compiled_out, eager_out)
    for c, e in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(c, e)


def test_compile_inductor_cpu():
    """The real inductor backend (what users get from torch.compile) on the C++ op."""
    torch._dynamo.reset()
    logits, y_a, y_b, lam = _mixup_args("cpu")

    def step(z):
        return mixkernels.mixup_cross_entropy(torch.tanh(z) * 4, y_a, y_b, 0.3, backend="cpu")

    out = torch.compile(step, fullgraph=True)(logits)
    (grad,) = torch.autograd.grad(out, logits)
    eager = step(logits)
    (eager_grad,) = torch.autograd.grad(eager, logits)
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(grad, eager_grad)


@pytest.mark.parametrize("capability", CPU_CAPABILITIES)
def test_every_cpu_capability_build_matches_reference(capability):
    """Each build of the CPU kernels (chosen by ATEN_CPU_CAPABILITY in a fresh
    process) against the reference; builds this CPU cannot run are skipped."""
    supported = torch.backends.cpu.get_cpu_capability().lower()
    order = {"default": 0, "avx2": 1, "avx512": 2}
    if order.get(supported, 0) < order[capability]:
        pytest.skip(f"this CPU supports {supported}, not {capability}")
    script = r"""
import torch, mixkernels
from mixkernels import reference
torch.manual_seed(0)
print(torch.ops.mixkernels.cpu_kernel_capability())
for dtype in (torch.float32, torch.bfloat16, torch.float16):
    for C in (1, 7, 100, 1000):   # tails shorter and longer than a vector
        z = (3 * torch.randn(9, C)).to(dtype).requires_grad_(True)
        y_a, y_b, lam = torch.randint(0, C, (9,)), torch.randint(0, C, (9,)), torch.rand(9)
        t = torch.rand(9, C)
        for fn, args in ((mixkernels.mixup_cross_entropy, (y_a, y_b, lam)), (mixkernels.soft_target_cross_entropy, (t,))):
            kw = {"label_smoothing": 0.1} if fn is mixkernels.mixup_cross_entropy else {}
            out = fn(z, *args, reduction="sum", backend="cpu", **kw)
            g, = torch.autograd.grad(out, z)
            z64 = z.detach().double().requires_grad_(True)
            ref = fn(z64, *args, reduction="sum", backend="torch", **kw)
            rg, = torch.autograd.grad(ref, z64)
            tol = 1e-4 if dtype == torch.float32 else 3e-2
            assert abs(float(out) - float(ref)) <= tol * max(1.0, abs(float(ref))), (dtype, C, float(out), float(ref))
            assert (g.double() - rg).abs().max() <= tol * max(1.0, float(rg.abs().max())), (dtype, C)
print("ok")
"""
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    used, status = result.stdout.split()
    assert used == capability.upper() and status == "ok"


def _icm_args(dtype=torch.float32, batch=6, features=5, num_classes=9, bias=True, device="cpu"):
    kw = {"dtype": dtype, "device": device, "requires_grad": True}
    hidden = torch.randn(batch, features, **kw)
    weight = torch.randn(num_classes, features, **kw)
    b = torch.randn(num_classes, **kw) if bias else None
    y_a = torch.randint(0, num_classes, (batch,), device=device)
    y_b = torch.randint(0, num_classes, (batch,), device=device)
    lam = torch.rand(batch, device=device, requires_grad=True)
    return hidden, weight, b, y_a, y_b, lam


def _icm_device(backend):
    """CPU tensors, or for Triton the GPU's when there is one (the interpreter's CPU ones otherwise)."""
    if backend != "triton":
        return "cpu"
    if not mixkernels.backends()["triton"].usable:
        pytest.skip("triton is not usable here")
    return "cuda" if torch.cuda.is_available() else "cpu"


def _icm_ops(backend):
    """The (forward, backward) op overloads of infinite_class_mixup_loss on ``backend``."""
    if backend == "triton":
        return (icm_ops.infinite_class_mixup_loss_triton._opoverload,
                icm_ops.infinite_class_mixup_loss_triton_backward._opoverload)
    return (torch.ops.mixkernels.infinite_class_mixup_loss.default,
            torch.ops.mixkernels.infinite_class_mixup_loss_backward.default)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("path", ["factorised", "logits"])
@pytest.mark.parametrize("axes", ["both", "row", "col"])
@pytest.mark.parametrize("keep_cache", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_opcheck_infinite_class_mixup(backend, path, axes, keep_cache, bias):
    forward, backward = _icm_ops(backend)
    hidden, weight, b, y_a, y_b, lam = _icm_args(bias=bias, device=_icm_device(backend))
    torch.library.opcheck(forward, (hidden, weight, b, y_a, y_b, lam, axes, path, keep_cache))
    detached = [t.detach() if t is not None else None for t in (hidden, weight, b)]
    loss, row_lse, col_lse, cache = forward(*detached, y_a, y_b, lam.detach(), axes, path, keep_cache)
    for mask in ([True, True, bias, True], [False, True, False, False], [True, False, False, False]):
        torch.library.opcheck(backward, (torch.rand_like(loss), *detached, y_a, y_b, lam.detach(), row_lse, col_lse,
                                         cache, axes, path, mask))


@pytest.mark.parametrize("backend,compile_backend", [("cpu", "aot_eager"), ("cpu", "inductor"),
                                                     ("triton", "aot_eager")])
def test_compile_fullgraph_infinite_class_mixup(backend, compile_backend):
    hidden, weight, b, y_a, y_b, lam = _icm_args(device=_icm_device(backend))

    def step(hidden, weight, b, lam):
        return mixkernels.infinite_class_mixup_loss(hidden, weight, y_a, y_b, lam, bias=b, backend=backend)

    eager = step(hidden, weight, b, lam)
    eager_grads = torch.autograd.grad(eager, (hidden, weight, b, lam))
    torch._dynamo.reset()
    out = torch.compile(step, fullgraph=True, backend=compile_backend)(hidden, weight, b, lam)
    grads = torch.autograd.grad(out, (hidden, weight, b, lam))
    torch.testing.assert_close(out, eager)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e)
