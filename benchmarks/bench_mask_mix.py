"""Mask mixing of a batch (AutoMix / SAMix): mixkernels against the eager code and ``torch.compile``.

One op, ``mask_mix``, on (B, C, H, W) image batches with a random permutation
and a learned low-resolution mask (B, 1, h, w) (14 x 14 for 224 x 224
images, AutoMix's and SAMix's setting), upsampled bilinearly, under two
metrics:

``forward``: the mixing alone, under ``torch.no_grad()``.
``forward_backward``: ``x`` and the mask require grad (the mask generator
learns through the mask), ``out.backward(g)`` with a fixed ``g``; both
``.grad`` are reset to ``None`` before every repetition, untimed.

Providers:
  - ``mixkernels-<backend>``: ``mixkernels.mask_mix``, every compiled backend
    with mask_mix kernels usable on the device,
  - ``eager``: what AutoMix's and SAMix's code does,
    ``m = F.interpolate(mask, size=(H, W), mode="bilinear", align_corners=False)``,
    then ``m * x + (1 - m) * x[perm]``,
  - ``torch-compile``: ``torch.compile`` of ``eager`` (compile not timed).

Every provider gets the mask in x's dtype (a mask generator's output in a
bf16 step is bf16; a fp32 mask would make the eager code return a fp32
batch). Before timing, every provider's result and gradients are compared
with ``mixkernels.reference.mask_mix`` in fp32; a mismatch is logged as a
WARNING and recorded in the rows' ``extra``.

Run through ``python -m benchmarks.run --op mask_mix`` (CSV, JSON and
markdown tables with speedup ratios), which calls :func:`run_suite`.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

import mixkernels
from benchmarks import harness, image_suite
from benchmarks.bench_mixup_cross_entropy import default_device, harness_dtype, mixkernels_backends
from benchmarks.image_suite import relative_error, shape_label
from mixkernels.ops.mask_mix import MASK_MIX_BACKENDS

OP = "mask_mix"
FULL_SHAPES = ((256, 3, 224, 224), (64, 3, 224, 224))
QUICK_SHAPES = ((8, 3, 32, 32),)
DTYPES = (torch.float32, torch.bfloat16)
MASK_FRACTION = 16  # mask side = image side / 16: 14 x 14 at 224 x 224
MODE = "bilinear"
SEED = 0

FORWARD = "forward"
FORWARD_BACKWARD = "forward_backward"
METRICS = (FORWARD, FORWARD_BACKWARD)
TITLES = {FORWARD: "forward (mixing only, under no_grad)",
          FORWARD_BACKWARD: "forward + backward (grads to x and the mask, reset untimed)"}

EAGER = "eager"
COMPILE = "torch-compile"
BASELINES = (EAGER, COMPILE)
SHORT_NAMES = {COMPILE: "compile"}


def parse_shapes(text: str) -> tuple[tuple[int, int, int, int], ...]:
    """``"256x3x224x224,8x3x32x32"`` -> ``((256, 3, 224, 224), (8, 3, 32, 32))``; ``ValueError`` for ``BxC``."""
    return image_suite.parse_shapes(text, OP)


def bench_shapes(quick: bool | None = None) -> tuple[tuple[int, int, int, int], ...]:
    if quick is None:
        quick = os.environ.get("MIXKERNELS_BENCH_QUICK", "0") not in ("", "0")
    return QUICK_SHAPES if quick else FULL_SHAPES


def mask_size(shape: Sequence[int]) -> tuple[int, int]:
    return max(1, shape[2] // MASK_FRACTION), max(1, shape[3] // MASK_FRACTION)


def providers(op: str = OP, device=None, *, include_compile: bool = True) -> list[str]:
    if op != OP:
        raise ValueError(f"this suite benchmarks {OP!r}, got {op!r}")
    names = [f"mixkernels-{b}" for b in mixkernels_backends(device or default_device()) if b in MASK_MIX_BACKENDS]
    names.append(EAGER)
    if include_compile:
        names.append(COMPILE)
    return names


def baselines_of(provider: str) -> tuple[str, ...]:
    return BASELINES


def eager_mask_mix(x: torch.Tensor, perm: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = F.interpolate(mask, size=x.shape[-2:], mode=MODE, align_corners=False)
    return m * x + (1 - m) * x[perm]


def compile_eager_mask_mix() -> Callable:
    torch._dynamo.reset()  # a static graph per shape and dtype, as in bench_mix_batch
    return torch.compile(eager_mask_mix, dynamic=False)


class Inputs:
    """What every provider of one shape x dtype reads; built once, shared, never mutated."""

    def __init__(self, shape, dtype, device):
        self.shape, self.dtype, self.device = tuple(shape), dtype, device
        gen = torch.Generator(device="cpu").manual_seed(SEED)
        b = shape[0]
        self.x = torch.randn(self.shape, generator=gen).to(device=device, dtype=dtype)
        self.perm = torch.randperm(b, generator=gen).to(device)
        self.mask = torch.rand((b, 1) + mask_size(shape), generator=gen).to(device=device, dtype=dtype)
        self.grad_out = torch.randn(self.shape, generator=gen).to(device=device, dtype=dtype)
        # Differentiable leaves shared by the forward_backward cases: each resets their .grad.
        self.x_leaf = self.x.detach().clone().requires_grad_(True)
        self.mask_leaf = self.mask.detach().clone().requires_grad_(True)

    def reference(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The mixed batch and the gradients of x and the mask, in fp32."""
        x = self.x.float().requires_grad_(True)
        mask = self.mask.float().requires_grad_(True)
        out = mixkernels.reference.mask_mix(x, self.perm, mask, MODE)
        out.backward(self.grad_out.float())
        return out.detach(), x.grad, mask.grad


def make_mix(provider: str, inputs: Inputs, compiled: Callable | None = None) -> Callable:
    """The provider's mixing as ``fn(x, mask) -> mixed``."""
    perm = inputs.perm
    if provider.startswith("mixkernels-"):
        backend = provider[len("mixkernels-"):]
        return lambda x, mask: mixkernels.mask_mix(x, perm, mask, mode=MODE, backend=backend)
    if provider == EAGER:
        return lambda x, mask: eager_mask_mix(x, perm, mask)
    if provider == COMPILE:
        if compiled is None:
            raise ValueError("torch-compile needs the compiled eager_mask_mix")
        return lambda x, mask: compiled(x, perm, mask)
    raise ValueError(f"unknown provider {provider!r} for {OP}")


class Case:
    """The timed closure (and its untimed setup) for one provider x metric on shared inputs."""

    def __init__(self, provider: str, metric: str, inputs: Inputs, compiled: Callable | None = None):
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}")
        self.provider, self.metric, self.inputs = provider, metric, inputs
        mix = make_mix(provider, inputs, compiled)
        if metric == FORWARD_BACKWARD:
            x, mask, grad_out = inputs.x_leaf, inputs.mask_leaf, inputs.grad_out

            def run():
                mix(x, mask).backward(grad_out)

            def setup():
                x.grad = None
                mask.grad = None
        else:
            def run():
                with torch.no_grad():
                    return mix(inputs.x, inputs.mask)

            setup = None
        self.run, self.setup = run, setup

    @property
    def name(self) -> str:
        return f"{self.provider}:{self.metric}"

    def prepare(self) -> tuple[torch.Tensor, ...]:
        """Run once (compiling where needed); return what to check: the output, or both gradients."""
        if self.setup is not None:
            self.setup()
        out = self.run()
        if torch.device(self.inputs.device).type == "cuda":
            torch.cuda.synchronize()
        if self.metric == FORWARD_BACKWARD:
            return self.inputs.x_leaf.grad, self.inputs.mask_leaf.grad
        return (out,)


def tolerance(dtype) -> float:
    """Bound on the relative error: the bf16 baselines round m, 1 - m and the products."""
    return 2e-2 if dtype in (torch.bfloat16, torch.float16) else 1e-5


def _check_against_reference(cases: Sequence[Case], inputs: Inputs, log) -> dict[str, float]:
    """Run each case once (this also compiles) and measure its worst error against the fp32 reference."""
    out_ref, x_grad_ref, mask_grad_ref = inputs.reference()
    errors = {}
    for case in cases:
        got = case.prepare()
        refs = (x_grad_ref, mask_grad_ref) if case.metric == FORWARD_BACKWARD else (out_ref,)
        # The mask gradient sums about (H / h) * (W / w) * C terms per cell: relative to its own scale.
        errors[case.name] = max(relative_error(g, r) if g.numel() == r.numel() and g.shape == r.shape
                                else float("inf") for g, r in zip(got, refs))
        del got
        if log and not errors[case.name] <= tolerance(inputs.dtype):
            log(f"  WARNING {OP} {shape_label(inputs.shape)} {harness_dtype(inputs.dtype)}: {case.name} "
                f"differs from mixkernels.reference.mask_mix (max relative error {errors[case.name]:.3g})")
    inputs.x_leaf.grad = None
    inputs.mask_leaf.grad = None
    return errors


def run_suite(op: str = OP, *, device=None, shapes: Sequence[Sequence[int]] | None = None,
              dtypes: Sequence[torch.dtype] = DTYPES, provider_names: Sequence[str] | None = None,
              include_compile: bool = True, warmup: int = 2, rep: int = 100,
              budget_s: float = 2.5, measure_memory: bool = True, env: dict | None = None,
              log: Callable[[str], None] | None = print, busy_retries: int = 0,
              busy_threshold: float = 0.1, busy_wait_s: float = 120.0) -> list[dict]:
    """Measure every provider x metric of mask_mix; return harness rows (time, memory, speedup).

    ``busy_retries`` etc.: see :func:`benchmarks.image_suite.time_cases`.
    """
    if op != OP:
        raise ValueError(f"this suite benchmarks {OP!r}, got {op!r}")
    device = device or default_device()
    shapes = tuple(tuple(s) for s in (shapes or bench_shapes()))
    env = env if env is not None else harness.environment(device)
    names = list(provider_names or providers(op, device, include_compile=include_compile))

    def make_cases(shape, dtype, names):
        inputs = Inputs(shape, dtype, device)
        compiled = compile_eager_mask_mix() if COMPILE in names else None
        return [Case(p, m, inputs, compiled) for p in names for m in METRICS]

    def check(cases):
        return _check_against_reference(cases, cases[0].inputs, log)

    return image_suite.run_shapes(OP, shapes=shapes, dtypes=dtypes, device=device, names=names,
                                  make_cases=make_cases, check=check, extra_of=_extra, baselines_of=baselines_of,
                                  warmup=warmup, rep=rep, budget_s=budget_s, measure_memory=measure_memory, env=env,
                                  log=log, busy_retries=busy_retries, busy_threshold=busy_threshold,
                                  busy_wait_s=busy_wait_s)


def _extra(case: Case, shape, timing, error: float, dtype) -> dict:
    b, c, h, w = shape
    return {"B": b, "C": c, "H": h, "W": w, "mask": list(mask_size(shape)), "mode": MODE, "metric": case.metric,
            "partner": "random permutation", "seed": SEED, "reps": timing["reps"],
            "num_threads": timing["num_threads"], "max_rel_error": error, "tolerance": tolerance(dtype),
            "agrees": error <= tolerance(dtype)}


def tables(rows: Sequence[dict]) -> str:
    """Markdown: a time table with ratio columns per metric, then one peak-memory table."""
    return image_suite.tables(rows, OP, TITLES, SHORT_NAMES)
