"""Input mixing of a batch, ``lam * x + (1 - lam) * x[perm]``: mixkernels against what people use.

One op, ``mix_batch``, on (B, C, H, W) image batches with a random
permutation and one ``lam`` per sample (a fp32 (B,) tensor), under two metrics:

``forward``: the mixing alone, under ``torch.no_grad()`` (how a data pipeline
or a training step mixes its batch):
  - ``mixkernels-<backend>``: out-of-place ``mix_batch``, every compiled backend
    usable on the device,
  - ``mixkernels-<backend>-inplace``: ``mix_batch(..., inplace=True)``; each
    repetition mixes the result of the previous one, which stays bounded
    because every output is a convex combination of inputs,
  - ``eager``: ``lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * x[perm]``,
  - ``torch-compile``: ``torch.compile`` of ``eager`` (compile not timed),
  - ``timm-inplace-flip``: timm's batch mode, ``x_flipped = x.flip(0).mul_(1 - lam);
    x.mul_(lam).add_(x_flipped)``, which can only take one per-batch ``lam``
    (a float) and pairs sample i with sample B-1-i instead of a random partner.

``forward_backward``: ``x`` requires grad, ``out.backward(g)`` with a fixed
``g``; ``x.grad`` is reset to ``None`` before every repetition outside the
timed region, as ``zero_grad`` does. Providers: ``mixkernels-<backend>``,
``eager`` and ``torch-compile`` (the in-place ones cannot be differentiated).

The eager and compiled baselines get ``lam`` in x's dtype (cast once, untimed):
with fp32 ``lam`` and a bf16 batch, type promotion would make them return a
fp32 batch, twice the bytes written and not the result a bf16 pipeline wants.
mixkernels takes the fp32 ``lam`` and computes in fp32 internally.

Before timing, every provider's result (and gradient) is compared with
``mixkernels.reference.mix_batch`` in fp32; a mismatch is logged as a WARNING
and recorded in the rows' ``extra``.

While each shape is timed, the share of the CPU that other processes took is
measured (``/proc/stat``) and recorded as ``extra["foreign_cpu_share"]``; with
``busy_retries`` (``python -m benchmarks.run --retry-busy N``) a shape timed on
a busy machine is timed again once the machine is quieter.

Run with pytest-benchmark::

    pytest benchmarks/bench_mix_batch.py --benchmark-only
    MIXKERNELS_BENCH_QUICK=1 pytest benchmarks/bench_mix_batch.py --benchmark-only

or through ``python -m benchmarks.run --op mix_batch`` (CSV, JSON and markdown
tables with speedup ratios), which calls :func:`run_suite`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

import mixkernels
from benchmarks import harness, image_suite
from benchmarks.bench_mixup_cross_entropy import default_device, harness_dtype, mixkernels_backends
from benchmarks.image_suite import relative_error, shape_label

OP = "mix_batch"
OPS = (OP,)

FULL_SHAPES = ((256, 3, 224, 224), (64, 3, 224, 224))
QUICK_SHAPES = ((8, 3, 32, 32),)
DTYPES = (torch.float32, torch.bfloat16)
TIMM_LAM = 0.7  # timm draws one lam per batch; its provider gets this float
SEED = 0

FORWARD = "forward"
FORWARD_BACKWARD = "forward_backward"
METRICS = (FORWARD, FORWARD_BACKWARD)

EAGER = "eager"
COMPILE = "torch-compile"
TIMM = "timm-inplace-flip"
INPLACE_SUFFIX = "-inplace"
# Every mixkernels provider is compared with these, metric by metric; the
# in-place ones also with timm's in-place mixing, the other in-place option.
BASELINES = (EAGER, COMPILE)
INPLACE_BASELINES = (EAGER, COMPILE, TIMM)
SHORT_NAMES = {COMPILE: "compile", TIMM: "timm"}  # keeps the ratio columns' headers narrow


# --------------------------------------------------------------------------- configuration

def parse_shapes(text: str) -> tuple[tuple[int, int, int, int], ...]:
    """``"256x3x224x224,8x3x32x32"`` -> ``((256, 3, 224, 224), (8, 3, 32, 32))``; ``ValueError`` for ``BxC``."""
    return image_suite.parse_shapes(text, OP)


def bench_shapes(quick: bool | None = None) -> tuple[tuple[int, int, int, int], ...]:
    """The (B, C, H, W) sweep; ``MIXKERNELS_BENCH_MIX_BATCH_SHAPES`` or ``MIXKERNELS_BENCH_QUICK=1`` narrow it.

    The shapes variable is this suite's own: ``MIXKERNELS_BENCH_SHAPES`` holds
    the losses' two-dimensional shapes.
    """
    if os.environ.get("MIXKERNELS_BENCH_MIX_BATCH_SHAPES"):
        return parse_shapes(os.environ["MIXKERNELS_BENCH_MIX_BATCH_SHAPES"])
    if quick is None:
        quick = os.environ.get("MIXKERNELS_BENCH_QUICK", "0") not in ("", "0")
    return QUICK_SHAPES if quick else FULL_SHAPES


def is_inplace(provider: str) -> bool:
    return provider == TIMM or provider.endswith(INPLACE_SUFFIX)


def metrics_of(provider: str) -> tuple[str, ...]:
    """In-place mixing overwrites what autograd would need: forward only."""
    return (FORWARD,) if is_inplace(provider) else METRICS


def providers(op: str = OP, device=None, *, include_compile: bool = True) -> list[str]:
    if op != OP:
        raise ValueError(f"this suite benchmarks {OP!r}, got {op!r}")
    device = device or default_device()
    names = []
    for backend in mixkernels_backends(device):
        names += [f"mixkernels-{backend}", f"mixkernels-{backend}{INPLACE_SUFFIX}"]
    names.append(EAGER)
    if include_compile:
        names.append(COMPILE)
    names.append(TIMM)
    return names


# --------------------------------------------------------------------------- the mixings compared

def eager_mix(x: torch.Tensor, perm: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    return lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * x[perm]


def timm_inplace_flip(x: torch.Tensor, lam: float) -> torch.Tensor:
    """timm's ``Mixup._mix_batch`` (mode ``"batch"``, mixup branch)."""
    x_flipped = x.flip(0).mul_(1.0 - lam)
    x.mul_(lam).add_(x_flipped)
    return x


def flip_permutation(batch: int, device) -> torch.Tensor:
    """The partner of each sample under ``x.flip(0)``."""
    return torch.arange(batch - 1, -1, -1, device=device)


@dataclass
class Inputs:
    """What every provider of one shape x dtype reads; built once, shared, never mutated."""

    shape: tuple
    dtype: torch.dtype
    device: str

    def __post_init__(self):
        gen = torch.Generator(device="cpu").manual_seed(SEED)
        b = self.shape[0]
        self.x = torch.randn(self.shape, generator=gen).to(device=self.device, dtype=self.dtype)
        self.perm = torch.randperm(b, generator=gen).to(self.device)
        self.lam = torch.rand(b, generator=gen).to(self.device)  # per sample, fp32
        self.lam_x = self.lam.to(self.dtype)  # for the baselines: see the module docstring
        self.grad_out = torch.randn(self.shape, generator=gen).to(device=self.device, dtype=self.dtype)
        # One differentiable leaf for every forward_backward case: they only read it
        # and each resets its .grad before a call.
        self.x_leaf = self.x.detach().clone().requires_grad_(True)

    def reference(self, provider: str) -> torch.Tensor:
        """The mixed batch this provider must return, in fp32."""
        if provider == TIMM:
            return mixkernels.reference.mix_batch(self.x.float(), flip_permutation(self.shape[0], self.device),
                                                  TIMM_LAM)
        return mixkernels.reference.mix_batch(self.x.float(), self.perm, self.lam)

    def reference_grad(self) -> torch.Tensor:
        """d(sum(out * g))/dx of the random-permutation mixing, in fp32."""
        x = self.x.detach().float().requires_grad_(True)
        mixkernels.reference.mix_batch(x, self.perm, self.lam).backward(self.grad_out.float())
        return x.grad


def make_mix(provider: str, inputs: Inputs, compiled: Callable | None = None) -> Callable:
    """The provider's mixing as ``fn(x) -> mixed``; the in-place ones return x itself."""
    perm, lam = inputs.perm, inputs.lam
    if provider.startswith("mixkernels-"):
        backend = provider[len("mixkernels-"):]
        if backend.endswith(INPLACE_SUFFIX):
            backend = backend[:-len(INPLACE_SUFFIX)]
            return lambda x: mixkernels.mix_batch(x, perm, lam, inplace=True, backend=backend)
        return lambda x: mixkernels.mix_batch(x, perm, lam, backend=backend)
    if provider == EAGER:
        return lambda x: eager_mix(x, perm, inputs.lam_x)
    if provider == COMPILE:
        if compiled is None:
            raise ValueError("torch-compile needs the compiled eager_mix")
        return lambda x: compiled(x, perm, inputs.lam_x)
    if provider == TIMM:
        return lambda x: timm_inplace_flip(x, TIMM_LAM)
    raise ValueError(f"unknown provider {provider!r} for {OP}")


def compile_eager_mix() -> Callable:
    # A fresh dynamo cache for each shape and dtype: each gets its own static graph
    # rather than one recompiled as dynamic, and no case meets the recompile limit.
    torch._dynamo.reset()
    return torch.compile(eager_mix, dynamic=False)


# --------------------------------------------------------------------------- one benchmark case

class Case:
    """The timed closure (and its untimed setup) for one provider x metric on shared inputs."""

    def __init__(self, provider: str, metric: str, inputs: Inputs, compiled: Callable | None = None):
        if metric not in metrics_of(provider):
            raise ValueError(f"{provider} has no {metric} metric")
        self.provider, self.metric, self.inputs = provider, metric, inputs
        mix = make_mix(provider, inputs, compiled)
        if metric == FORWARD_BACKWARD:
            leaf, grad_out = inputs.x_leaf, inputs.grad_out

            def run():
                mix(leaf).backward(grad_out)

            def setup():
                leaf.grad = None
        else:
            # The in-place providers get a batch of their own to overwrite.
            target = inputs.x.clone() if is_inplace(provider) else inputs.x

            def run():
                with torch.no_grad():
                    return mix(target)

            setup = None
        self.run, self.setup = run, setup

    @property
    def name(self) -> str:
        return f"{self.provider}:{self.metric}"

    def prepare(self) -> torch.Tensor:
        """Run once (compiling where needed); return what to check: the output or x's gradient."""
        if self.setup is not None:
            self.setup()
        out = self.run()
        if torch.device(self.inputs.device).type == "cuda":
            torch.cuda.synchronize()
        return self.inputs.x_leaf.grad if self.metric == FORWARD_BACKWARD else out


def tolerance(dtype) -> float:
    """Bound on :func:`relative_error`: the bf16 baselines round lam and up to three partial results."""
    return 2e-2 if dtype in (torch.bfloat16, torch.float16) else 1e-5


# --------------------------------------------------------------------------- the CLI's suite

def run_suite(op: str = OP, *, device=None, shapes: Sequence[Sequence[int]] | None = None,
              dtypes: Sequence[torch.dtype] = DTYPES, provider_names: Sequence[str] | None = None,
              include_compile: bool = True, warmup: int = 2, rep: int = 100,
              budget_s: float = 2.5, measure_memory: bool = True, env: dict | None = None,
              log: Callable[[str], None] | None = print, busy_retries: int = 0,
              busy_threshold: float = 0.1, busy_wait_s: float = 120.0) -> list[dict]:
    """Measure every provider x metric of mix_batch; return harness rows (time, memory, speedup).

    ``busy_retries``: when other processes took more than ``busy_threshold`` of
    the CPU while a shape was timed, wait (up to ``busy_wait_s``) for a quieter
    machine and time that shape again, up to this many times; the attempt that
    shared the CPU least is kept and its share recorded.
    """
    if op != OP:
        raise ValueError(f"this suite benchmarks {OP!r}, got {op!r}")
    device = device or default_device()
    shapes = tuple(tuple(s) for s in (shapes or bench_shapes()))
    env = env if env is not None else harness.environment(device)
    names = list(provider_names or providers(op, device, include_compile=include_compile))

    def make_cases(shape, dtype, names):
        inputs = Inputs(shape, dtype, device)
        compiled = compile_eager_mix() if COMPILE in names else None
        return [Case(p, m, inputs, compiled) for p in names for m in metrics_of(p)]

    def check(cases):
        return _check_against_reference(cases, cases[0].inputs, log)

    def extra_of(case, shape, timing, error, dtype):
        return _extra(case, shape, timing, error, tolerance(dtype))

    return image_suite.run_shapes(OP, shapes=shapes, dtypes=dtypes, device=device, names=names,
                                  make_cases=make_cases, check=check, extra_of=extra_of, baselines_of=baselines_of,
                                  warmup=warmup, rep=rep, budget_s=budget_s, measure_memory=measure_memory, env=env,
                                  log=log, busy_retries=busy_retries, busy_threshold=busy_threshold,
                                  busy_wait_s=busy_wait_s)


def _extra(case: Case, shape, timing: dict, error: float, tol: float) -> dict:
    b, c, h, w = shape
    extra = {"B": b, "C": c, "H": h, "W": w, "mode": case.metric, "inplace": is_inplace(case.provider),
             "reps": timing["reps"], "num_threads": timing["num_threads"],
             "max_rel_error": error, "tolerance": tol, "agrees": error <= tol}
    if case.provider == TIMM:
        extra.update(lam=TIMM_LAM, lam_kind="per-batch float", partner="flip(0)")
    else:
        extra.update(lam_kind="per-sample (B,) fp32 tensor, uniform [0, 1)", partner="random permutation",
                     seed=SEED)
    return extra


def _check_against_reference(cases: Sequence[Case], inputs: Inputs, log) -> dict[str, float]:
    """Run each case once (this also compiles) and measure its error against the fp32 reference.

    A benchmark of mixings that differ is worthless: a mismatch is logged loudly.
    """
    tol = tolerance(inputs.dtype)
    refs: dict[str, torch.Tensor] = {}
    errors = {}
    for case in cases:
        got = case.prepare()
        if case.metric == FORWARD_BACKWARD:
            key = "grad"
            if key not in refs:
                refs[key] = inputs.reference_grad()
        else:
            key = TIMM if case.provider == TIMM else "perm"
            if key not in refs:
                refs[key] = inputs.reference(case.provider)
        errors[case.name] = relative_error(got, refs[key])
        del got
        if log and not errors[case.name] <= tol:
            log(f"  WARNING {OP} {shape_label(inputs.shape)} {harness_dtype(inputs.dtype)}: {case.name} "
                f"differs from mixkernels.reference.mix_batch (max relative error {errors[case.name]:.3g})")
    inputs.x_leaf.grad = None
    return errors


def baselines_of(provider: str) -> tuple[str, ...]:
    """What a mixkernels provider's time is compared with."""
    return INPLACE_BASELINES if is_inplace(provider) else BASELINES


TITLES = {FORWARD: "forward (mixing only, under no_grad)",
          FORWARD_BACKWARD: "forward + backward (out.backward(g), x.grad reset untimed)"}


def tables(rows: Sequence[dict]) -> str:
    """Markdown: a time table with ratio columns per metric, then one peak-memory table."""
    return image_suite.tables(rows, OP, TITLES, SHORT_NAMES)


# --------------------------------------------------------------------------- pytest-benchmark

try:  # the CLI needs no pytest; the pytest-benchmark tests below do
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

_DEVICE = default_device()


def _case_params():
    return [pytest.param(p, m, id=f"{p}-{m}") for p in providers(OP, _DEVICE) for m in metrics_of(p)]


def _run_pytest_benchmark(benchmark, provider, metric, shape, dtype):
    inputs = Inputs(tuple(shape), dtype, _DEVICE)
    case = Case(provider, metric, inputs, compile_eager_mix() if provider == COMPILE else None)
    case.prepare()  # compile (torch-compile) and first-call costs stay out of the rounds
    cuda = torch.device(_DEVICE).type == "cuda"

    def step():
        case.run()
        if cuda:  # pytest-benchmark's timer is host-side
            torch.cuda.synchronize()

    probe = harness.measure(step, device="cpu", warmup=1, rep=3, setup=case.setup)
    budget = float(os.environ.get("MIXKERNELS_BENCH_BUDGET_S", "2.0"))
    rounds = int(min(200, max(5, budget * 1e3 / max(probe["median_ms"], 1e-3))))
    benchmark.group = f"{OP} {metric} {shape_label(shape)} {harness_dtype(dtype)}"
    benchmark.extra_info.update({
        "provider": provider, "metric": metric, "shape": list(shape), "dtype": harness_dtype(dtype),
        "device": _DEVICE, "num_threads": torch.get_num_threads(),
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE", "unset"),
    })
    # One call per round, since the gradient reset (setup) must run between calls.
    benchmark.pedantic(step, setup=case.setup, rounds=rounds, warmup_rounds=1, iterations=1)
    peak = harness.peak_memory_bytes(step, _DEVICE, setup=case.setup, warmup=0)
    if peak is not None:
        benchmark.extra_info["peak_memory_mb"] = peak / 2**20


if pytest is not None:
    @pytest.mark.parametrize("dtype", [pytest.param(d, id=harness_dtype(d)) for d in DTYPES])
    @pytest.mark.parametrize("shape", [pytest.param(s, id=shape_label(s)) for s in bench_shapes()])
    @pytest.mark.parametrize("provider,metric", _case_params())
    def test_mix_batch(benchmark, provider, metric, shape, dtype):
        _run_pytest_benchmark(benchmark, provider, metric, shape, dtype)
