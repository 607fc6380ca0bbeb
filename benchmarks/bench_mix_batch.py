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
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

import mixkernels
from benchmarks import harness
from benchmarks.bench_mixup_cross_entropy import default_device, harness_dtype, mixkernels_backends

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
    """``"256x3x224x224,8x3x32x32"`` -> ``((256, 3, 224, 224), (8, 3, 32, 32))``.

    Raises ``ValueError`` for anything but four sizes per shape, so that the
    CLI can tell this suite's shapes from the losses' ``BxC``.
    """
    shapes = []
    for item in text.replace(" ", "").split(","):
        if not item:
            continue
        sizes = item.lower().split("x")
        if len(sizes) != 4:
            raise ValueError(f"mix_batch shapes are BxCxHxW, got {item!r}")
        shapes.append(tuple(int(s) for s in sizes))
    return tuple(shapes)


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


def shape_label(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape)


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


class ForeignLoad:
    """Share of the machine's CPU time that other processes used between :meth:`start` and :meth:`stop`.

    The load average at the start of a run says little about a two-minute run
    on two cores, where another process taking a core for a few seconds can
    slow one shape's providers several times over. Busy time of the whole
    machine (``/proc/stat``) minus this process's own CPU time, over the wall
    time times the cores, tells for each shape whether its timings were shared.
    ``None`` where ``/proc/stat`` cannot be read.
    """

    def __init__(self):
        self._begin = None

    @staticmethod
    def _sample():
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        own = os.times()
        return time.perf_counter(), sum(fields[:8]) - idle, own.user + own.system

    def start(self) -> "ForeignLoad":
        self._begin = self._sample()
        return self

    def stop(self) -> float | None:
        end = self._sample()
        if self._begin is None or end is None:
            return None
        wall = end[0] - self._begin[0]
        busy_s = (end[1] - self._begin[1]) / os.sysconf("SC_CLK_TCK")
        own_s = end[2] - self._begin[2]
        cores = os.cpu_count() or 1  # /proc/stat's first line sums every core of the machine
        return max(0.0, busy_s - own_s) / max(wall * cores, 1e-9)


def machine_busy_share(window_s: float = 5.0) -> float | None:
    """Share of the machine's CPU busy over the next ``window_s`` seconds (this process idles meanwhile)."""
    load = ForeignLoad().start()
    time.sleep(window_s)
    return load.stop()


def wait_for_quiet(threshold: float, max_wait_s: float, log=None) -> None:
    """Sleep until other processes leave the CPU (busy share <= threshold) or ``max_wait_s`` passes."""
    start = time.monotonic()
    share = None
    while time.monotonic() - start < max_wait_s:
        share = machine_busy_share()
        if share is None or share <= threshold:
            break
    if log:
        busy = "unknown" if share is None else f"{100 * share:.0f}%"
        log(f"  waited {time.monotonic() - start:.0f} s for a quieter machine (other processes now at {busy})")


def tolerance(dtype) -> float:
    """Bound on :func:`relative_error`: the bf16 baselines round lam and up to three partial results."""
    return 2e-2 if dtype in (torch.bfloat16, torch.float16) else 1e-5


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``max |out - ref| / max(1, max |ref|)``.

    Relative to the batch's scale rather than elementwise: where a sample and
    its partner nearly cancel, the bf16-rounded baselines' elementwise relative
    error is large without anything being wrong, while a wrong partner or lam
    still errs by the order of the values themselves.
    """
    return float((out.float() - ref).abs().max() / ref.abs().max().clamp_min(1.0))


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
    rows: list[dict] = []
    for shape in shapes:
        label = shape_label(shape)
        for dtype in dtypes:
            inputs = Inputs(shape, dtype, device)
            compiled = compile_eager_mix() if COMPILE in names else None
            cases = [Case(p, m, inputs, compiled) for p in names for m in metrics_of(p)]
            errors = _check_against_reference(cases, inputs, log)
            # Round-robin over every provider and metric: load that changes during the
            # run (a small shared machine) then hits all of them alike.
            timings, foreign_share, attempts = None, None, 0
            while True:
                attempts += 1
                foreign = ForeignLoad().start()
                attempt = harness.measure_interleaved({c.name: (c.run, c.setup) for c in cases},
                                                      device=device, warmup=warmup, rep=rep, budget_s=budget_s)
                share = foreign.stop()
                if log and share is not None:
                    log(f"  {OP} {label} {harness_dtype(dtype)}: other processes used "
                        f"{100 * share:.0f}% of the CPU while timing (attempt {attempts})")
                if timings is None or (share is not None and share < foreign_share):
                    timings, foreign_share = attempt, share
                if share is None or share <= busy_threshold or attempts > busy_retries:
                    break
                wait_for_quiet(busy_threshold, busy_wait_s, log)
            times: dict[tuple[str, str], float] = {}
            for case in cases:
                timing = timings[case.name]
                extra = _extra(case, shape, timing, errors[case.name], tolerance(dtype))
                extra["foreign_cpu_share"] = foreign_share
                extra["timing_attempts"] = attempts
                common = dict(kernel_name=OP, provider=case.provider, x_name="BxCxHxW", x_value=label,
                              dtype=dtype, device=device, extra=extra, env=env)
                rows.append(harness.make_row(metric=case.metric, metric_unit="ms",
                                             y_median=timing["median_ms"], y_p20=timing["p20_ms"],
                                             y_p80=timing["p80_ms"], **common))
                times[case.provider, case.metric] = timing["median_ms"]
                if measure_memory:
                    peak = harness.peak_memory_bytes(case.run, device, setup=case.setup, warmup=0)
                    if peak is not None:
                        rows.append(harness.make_row(metric=f"peak_memory_{case.metric}", metric_unit="MB",
                                                     y_median=peak / 2**20, **common))
                if log:
                    log(f"  {OP} {label} {harness_dtype(dtype)} {case.provider} {case.metric}: "
                        f"{timing['median_ms']:.3f} ms (p20 {timing['p20_ms']:.3f}, "
                        f"p80 {timing['p80_ms']:.3f}, {timing['reps']} reps)")
            del cases, compiled, inputs
            rows.extend(_speedup_rows(shape, dtype, device, times, env))
    return rows


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


def _speedup_rows(shape, dtype, device, times: dict, env) -> list[dict]:
    """``baseline_ms / mixkernels_ms`` per mixkernels provider and metric (> 1: mixkernels is faster)."""
    rows = []
    label = shape_label(shape)
    for (provider, metric), ms in times.items():
        if not provider.startswith("mixkernels-") or ms <= 0:
            continue
        for baseline in (INPLACE_BASELINES if is_inplace(provider) else BASELINES):
            if (baseline, metric) in times:
                rows.append(harness.make_row(
                    kernel_name=OP, provider=provider, metric=f"speedup_vs_{baseline}_{metric}",
                    metric_unit="x", x_name="BxCxHxW", x_value=label, dtype=dtype,
                    y_median=times[baseline, metric] / ms, device=device,
                    extra={"shape": list(shape), "baseline": baseline, "timed_metric": metric}, env=env))
    return rows


def tables(rows: Sequence[dict]) -> str:
    """Markdown: a time table with ratio columns per metric, then one peak-memory table."""
    op_rows = [r for r in rows if r["kernel_name"] == OP]
    if not op_rows:
        return ""
    keys = list(dict.fromkeys((r["x_value"], r["dtype"]) for r in op_rows))
    lookup = {(r["metric"], r["provider"], r["x_value"], r["dtype"]): r["y_median"] for r in op_rows}

    def fmt(v, spec, suffix=""):
        return "" if v is None else format(v, spec) + suffix

    titles = {FORWARD: "forward (mixing only, under no_grad)",
              FORWARD_BACKWARD: "forward + backward (out.backward(g), x.grad reset untimed)"}
    out = []
    for metric in METRICS:
        names = list(dict.fromkeys(r["provider"] for r in op_rows if r["metric"] == metric))
        if not names:
            continue
        ratio_cols = list(dict.fromkeys(
            (r["provider"], r["extra"]["baseline"]) for r in op_rows
            if r["metric"].startswith("speedup_vs_") and r["extra"]["timed_metric"] == metric))
        headers = ["B x C x H x W", "dtype"] + [f"{p} ms" for p in names]
        headers += [f"{p.replace('mixkernels-', '')} vs {SHORT_NAMES.get(b, b)}" for p, b in ratio_cols]
        body = [[k[0], k[1]] + [fmt(lookup.get((metric, p) + k), ".3f") for p in names]
                + [fmt(lookup.get((f"speedup_vs_{b}_{metric}", p) + k), ".2f", "x") for p, b in ratio_cols]
                for k in keys]
        out.append(f"### {OP}: {titles[metric]}, median ms (ratios: baseline ms / mixkernels ms)\n")
        out.append(harness.markdown_table(headers, body, align=["l", "l"] + ["r"] * (len(headers) - 2)))
        out.append("")
    shares = {}
    for r in op_rows:
        share = r["extra"].get("foreign_cpu_share") if r["metric"] in METRICS else None
        if share is not None:
            shares[r["x_value"], r["dtype"]] = share
    if shares:
        out.append("Share of the CPU used by other processes while each shape was timed (a few % is noise; "
                   "more means that shape's times are inflated and its ratios less certain): "
                   + ", ".join(f"{k[0]} {k[1]} {100 * v:.0f}%" for k, v in shares.items()) + "\n")
    mem_names = list(dict.fromkeys(r["provider"] for r in op_rows if r["metric"].startswith("peak_memory_")))
    if mem_names:
        headers = ["B x C x H x W", "dtype", "metric"] + [f"{p} MB" for p in mem_names]
        body = [[k[0], k[1], metric] + [fmt(lookup.get((f"peak_memory_{metric}", p) + k), ".1f")
                                        for p in mem_names]
                for k in keys for metric in METRICS]
        out.append(f"### {OP}: peak memory of one call, MB over what was held before it\n")
        out.append(harness.markdown_table(headers, body, align=["l", "l", "l"] + ["r"] * (len(headers) - 3)))
        out.append("")
    return "\n".join(out)


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
