"""Forward + backward of the mixup losses: mixkernels against what people use today.

Two ops, each timed as one training step of the loss alone (forward, then
backward to a leaf ``logits`` tensor; ``logits.grad`` is reset to ``None``
before every repetition outside the timed region, as ``zero_grad`` does):

``mixup_cross_entropy`` (per-batch ``lam``, label smoothing 0.1, mean):
  - ``mixkernels-<backend>``: every compiled backend usable on the device,
  - ``eager-two-ce``: ``lam * CE(z, y_a) + (1 - lam) * CE(z, y_b)``,
  - ``timm-one-hot``: timm's dense ``mixup_target`` built inside the timed
    region, then ``SoftTargetCrossEntropy``,
  - ``torch-compile``: ``torch.compile`` of ``eager-two-ce`` (compile not timed).

``soft_target_cross_entropy`` (timm's dense fp32 mixed target given as input, built
untimed):
  - ``mixkernels-<backend>``, ``timm-soft-target`` (eager timm loss) and
    ``torch-compile`` of it.

Run with pytest-benchmark::

    pytest benchmarks/bench_mixup_cross_entropy.py --benchmark-only
    MIXKERNELS_BENCH_QUICK=1 pytest benchmarks/bench_mixup_cross_entropy.py --benchmark-only

or through ``python -m benchmarks.run`` (CSV, JSON and markdown tables with
speedup ratios), which calls :func:`run_suite`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

import mixkernels
from benchmarks import harness

MIXUP = "mixup_cross_entropy"
SOFT = "soft_target_cross_entropy"
OPS = (MIXUP, SOFT)

FULL_SHAPES = ((512, 1000), (1024, 32768), (256, 131072))
DTYPES = (torch.float32, torch.bfloat16)
LAM = 0.7
LABEL_SMOOTHING = 0.1
SEED = 0

# The baselines each op's speedup ratios are taken against.
EAGER_BASELINE = {MIXUP: "eager-two-ce", SOFT: "timm-soft-target"}
COMPILE_BASELINE = "torch-compile"
EAGER_PROVIDERS = {MIXUP: ("eager-two-ce", "timm-one-hot"), SOFT: ("timm-soft-target",)}


# --------------------------------------------------------------------------- configuration

def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def parse_shapes(text: str) -> tuple[tuple[int, int], ...]:
    """``"512x1000,64x10"`` -> ``((512, 1000), (64, 10))``."""
    shapes = []
    for item in text.replace(" ", "").split(","):
        if item:
            b, c = item.lower().split("x")
            shapes.append((int(b), int(c)))
    return tuple(shapes)


def bench_shapes(quick: bool | None = None) -> tuple[tuple[int, int], ...]:
    """The (B, C) sweep; ``MIXKERNELS_BENCH_SHAPES`` or ``MIXKERNELS_BENCH_QUICK=1`` narrow it."""
    if os.environ.get("MIXKERNELS_BENCH_SHAPES"):
        return parse_shapes(os.environ["MIXKERNELS_BENCH_SHAPES"])
    if quick is None:
        quick = os.environ.get("MIXKERNELS_BENCH_QUICK", "0") not in ("", "0")
    return (min(FULL_SHAPES, key=lambda s: s[0] * s[1]),) if quick else FULL_SHAPES


def mixkernels_backends(device) -> list[str]:
    """Compiled backends that run natively on ``device``, as ``mixkernels.backends()`` reports.

    ``torch`` is the reference (measured as the eager baselines already);
    ``triton`` on CPU tensors is the interpreter, a correctness tool only.
    """
    native = {"cpu": ("cpu",), "cuda": ("triton", "cuda")}[torch.device(device).type]
    status = mixkernels.backends()
    return [name for name in native if name in status and harness.backend_usable(status[name])]


def providers(op: str, device, *, include_compile: bool = True) -> list[str]:
    names = [f"mixkernels-{b}" for b in mixkernels_backends(device)]
    names += list(EAGER_PROVIDERS[op])
    if include_compile:
        names.append(COMPILE_BASELINE)
    return names


# --------------------------------------------------------------------------- the losses compared

def make_eager_two_ce(label_smoothing: float) -> Callable:
    def eager_two_ce(z, y_a, y_b, lam):
        return (lam * F.cross_entropy(z, y_a, label_smoothing=label_smoothing)
                + (1 - lam) * F.cross_entropy(z, y_b, label_smoothing=label_smoothing))
    return eager_two_ce


def timm_mixup_target(y_a, y_b, lam: float, num_classes: int, smoothing: float,
                      dtype=torch.float32) -> torch.Tensor:
    """timm's ``mixup_target`` with an explicit partner: smoothed one-hots mixed by ``lam``.

    timm builds ``full(off).scatter_(on)`` in the default dtype (fp32), so the
    eager timm path computes in fp32 even for bf16 logits, as it does under AMP.
    """
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    shape = (y_a.shape[0], num_classes)
    t_a = torch.full(shape, off, dtype=dtype, device=y_a.device).scatter_(1, y_a.view(-1, 1), on)
    t_b = torch.full(shape, off, dtype=dtype, device=y_b.device).scatter_(1, y_b.view(-1, 1), on)
    return t_a * lam + t_b * (1.0 - lam)


def timm_soft_target_ce(x, target):
    return torch.sum(-target * F.log_softmax(x, dim=-1), dim=-1).mean()


def make_timm_one_hot(label_smoothing: float) -> Callable:
    def timm_one_hot(z, y_a, y_b, lam):
        target = timm_mixup_target(y_a, y_b, lam, z.shape[-1], label_smoothing)
        return timm_soft_target_ce(z, target)
    return timm_one_hot


def make_loss(op: str, provider: str) -> Callable:
    """The loss as ``fn(logits, *inputs)``, uncompiled; ``torch-compile`` wraps the eager one."""
    if provider.startswith("mixkernels-"):
        backend = provider[len("mixkernels-"):]
        if op == MIXUP:
            return lambda z, y_a, y_b, lam: mixkernels.mixup_cross_entropy(
                z, y_a, y_b, lam, label_smoothing=LABEL_SMOOTHING, reduction="mean", backend=backend)
        return lambda z, target: mixkernels.soft_target_cross_entropy(
            z, target, reduction="mean", backend=backend)
    if op == MIXUP:
        if provider in ("eager-two-ce", COMPILE_BASELINE):
            return make_eager_two_ce(LABEL_SMOOTHING)
        if provider == "timm-one-hot":
            return make_timm_one_hot(LABEL_SMOOTHING)
    elif provider in ("timm-soft-target", COMPILE_BASELINE):
        return timm_soft_target_ce
    raise ValueError(f"unknown provider {provider!r} for {op}")


# --------------------------------------------------------------------------- one benchmark case

@dataclass
class Case:
    """Inputs and the timed closure for one op x provider x shape x dtype."""

    op: str
    provider: str
    batch: int
    num_classes: int
    dtype: torch.dtype
    device: str
    logits: torch.Tensor = field(init=False)
    inputs: tuple = field(init=False)
    loss_fn: Callable = field(init=False)

    def __post_init__(self):
        gen = torch.Generator(device="cpu").manual_seed(SEED)
        b, c = self.batch, self.num_classes
        logits = (2.0 * torch.randn(b, c, generator=gen)).to(device=self.device, dtype=self.dtype)
        self.logits = logits.requires_grad_(True)
        y_a = torch.randint(0, c, (b,), generator=gen).to(self.device)
        y_b = y_a[torch.randperm(b, generator=gen).to(self.device)]  # mixup's random partner
        if self.op == MIXUP:
            self.inputs = (y_a, y_b, LAM)
        else:
            # The dense target is an input of this op, built outside the timed region, in
            # fp32 whatever the logits' dtype, as timm's mixup_target makes it for AMP training.
            self.inputs = (timm_mixup_target(y_a, y_b, LAM, c, LABEL_SMOOTHING, torch.float32),)
        loss_fn = make_loss(self.op, self.provider)
        if self.provider == COMPILE_BASELINE:
            # A fresh cache per case: each shape and dtype gets its own static graph
            # instead of one recompiled as dynamic, and no case meets the recompile limit.
            torch._dynamo.reset()
            loss_fn = torch.compile(loss_fn, dynamic=False)
        self.loss_fn = loss_fn

    @property
    def shape_label(self) -> str:
        return f"{self.batch}x{self.num_classes}"

    def setup(self):
        self.logits.grad = None

    def step(self):
        loss = self.loss_fn(self.logits, *self.inputs)
        loss.backward()
        return loss

    def prepare(self) -> float:
        """Run once (compiling where needed); return the loss value for cross-checking."""
        self.setup()
        loss = self.step()
        if torch.device(self.device).type == "cuda":
            torch.cuda.synchronize()
        return float(loss.detach().float())


def loss_tolerance(dtype) -> float:
    """Relative agreement expected between providers (bf16 logits: bf16-rounded results)."""
    return 2e-2 if dtype in (torch.bfloat16, torch.float16) else 1e-4


# --------------------------------------------------------------------------- the CLI's suite

def run_suite(op: str, *, device=None, shapes: Sequence[tuple[int, int]] | None = None,
              dtypes: Sequence[torch.dtype] = DTYPES, provider_names: Sequence[str] | None = None,
              include_compile: bool = True, warmup: int = 2, rep: int = 100,
              budget_s: float = 2.5, measure_memory: bool = True, env: dict | None = None,
              log: Callable[[str], None] | None = print) -> list[dict]:
    """Measure every provider of ``op``; return harness rows (speed, memory, speedup)."""
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    device = device or default_device()
    shapes = tuple(shapes or bench_shapes())
    env = env if env is not None else harness.environment(device)
    names = list(provider_names or providers(op, device, include_compile=include_compile))
    rows: list[dict] = []
    for b, c in shapes:
        for dtype in dtypes:
            cases = {provider: Case(op, provider, b, c, dtype, device) for provider in names}
            losses = {provider: case.prepare() for provider, case in cases.items()}
            # Round-robin timing: on a small shared machine the load changes during a run,
            # and interleaving keeps the providers' ratios honest.
            timings = harness.measure_interleaved(
                {p: (case.step, case.setup) for p, case in cases.items()},
                device=device, warmup=warmup, rep=rep, budget_s=budget_s)
            speed: dict[str, float] = {}
            for provider, case in cases.items():
                timing = timings[provider]
                extra = {"B": b, "C": c, "lam": LAM, "reduction": "mean", "mode": "forward+backward",
                         "reps": timing["reps"], "num_threads": timing["num_threads"],
                         "loss": losses[provider]}
                if op == MIXUP:
                    extra["label_smoothing"] = LABEL_SMOOTHING
                common = dict(kernel_name=op, provider=provider, x_name="BxC", x_value=case.shape_label,
                              dtype=dtype, device=device, extra=extra, env=env)
                rows.append(harness.make_row(metric="speed", metric_unit="ms",
                                             y_median=timing["median_ms"], y_p20=timing["p20_ms"],
                                             y_p80=timing["p80_ms"], **common))
                speed[provider] = timing["median_ms"]
                if measure_memory:
                    peak = harness.peak_memory_bytes(case.step, device, setup=case.setup, warmup=0)
                    if peak is not None:
                        rows.append(harness.make_row(metric="memory", metric_unit="MB",
                                                     y_median=peak / 2**20, **common))
                if log:
                    log(f"  {op} {case.shape_label} {harness_dtype(dtype)} {provider}: "
                        f"{timing['median_ms']:.3f} ms (p20 {timing['p20_ms']:.3f}, "
                        f"p80 {timing['p80_ms']:.3f}, {timing['reps']} reps)")
            del cases
            _check_agreement(op, b, c, dtype, losses, log)
            rows.extend(_speedup_rows(op, b, c, dtype, device, speed, env))
    return rows


def harness_dtype(dtype) -> str:
    return str(dtype).replace("torch.", "")


def _check_agreement(op, b, c, dtype, losses: dict, log) -> None:
    """A benchmark that compares different losses is worthless: say so loudly if values differ."""
    baseline = EAGER_BASELINE[op]
    if baseline not in losses or log is None:
        return
    ref = losses[baseline]
    for provider, value in losses.items():
        if not math.isfinite(value) or abs(value - ref) > loss_tolerance(dtype) * max(1.0, abs(ref)):
            log(f"  WARNING {op} {b}x{c} {harness_dtype(dtype)}: {provider} loss {value:.6g} "
                f"differs from {baseline} {ref:.6g}")


def _speedup_rows(op, b, c, dtype, device, speed: dict, env) -> list[dict]:
    """``baseline_ms / mixkernels_ms`` for each mixkernels backend (> 1: mixkernels is faster)."""
    rows = []
    for provider, ms in speed.items():
        if not provider.startswith("mixkernels-"):
            continue
        for baseline in (EAGER_BASELINE[op], COMPILE_BASELINE):
            if baseline in speed and ms > 0:
                rows.append(harness.make_row(
                    kernel_name=op, provider=provider, metric=f"speedup_vs_{baseline}",
                    metric_unit="x", x_name="BxC", x_value=f"{b}x{c}", dtype=dtype,
                    y_median=speed[baseline] / ms, device=device,
                    extra={"B": b, "C": c, "baseline": baseline}, env=env))
    return rows


def tables(rows: Sequence[dict]) -> str:
    """Markdown: per op, one speed table with ratio columns and one peak-memory table."""
    out = []
    for op in OPS:
        op_rows = [r for r in rows if r["kernel_name"] == op]
        if not op_rows:
            continue
        keys = list(dict.fromkeys((r["x_value"], r["dtype"]) for r in op_rows))
        names = list(dict.fromkeys(r["provider"] for r in op_rows if r["metric"] == "speed"))
        ratio_cols = list(dict.fromkeys((r["provider"], r["metric"]) for r in op_rows
                                        if r["metric"].startswith("speedup_vs_")))

        def value(metric, provider, key):
            for r in op_rows:
                if r["metric"] == metric and r["provider"] == provider and (r["x_value"], r["dtype"]) == key:
                    return r["y_median"]
            return None

        def fmt(v, spec):
            return "" if v is None else format(v, spec)

        headers = ["B x C", "dtype"] + [f"{p} ms" for p in names]
        headers += [f"{p.replace('mixkernels-', '')} vs {m.replace('speedup_vs_', '')}" for p, m in ratio_cols]
        body = [[k[0], k[1]] + [fmt(value("speed", p, k), ".3f") for p in names]
                + [fmt(value(m, p, k), ".2f") + ("x" if value(m, p, k) is not None else "")
                   for p, m in ratio_cols] for k in keys]
        out.append(f"### {op}: forward + backward, median ms (ratios: baseline ms / mixkernels ms)\n")
        out.append(harness.markdown_table(headers, body, align=["l", "l"] + ["r"] * (len(headers) - 2)))
        mem_names = list(dict.fromkeys(r["provider"] for r in op_rows if r["metric"] == "memory"))
        if mem_names:
            headers = ["B x C", "dtype"] + [f"{p} MB" for p in mem_names]
            body = [[k[0], k[1]] + [fmt(value("memory", p, k), ".1f") for p in mem_names] for k in keys]
            out.append(f"\n### {op}: peak memory of one forward + backward, MB over baseline\n")
            out.append(harness.markdown_table(headers, body, align=["l", "l"] + ["r"] * (len(headers) - 2)))
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------- pytest-benchmark

try:  # the CLI needs no pytest; the pytest-benchmark tests below do
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

_DEVICE = default_device()


def _param_ids(op):
    return [pytest.param(p, id=p) for p in providers(op, _DEVICE)]


def _shape_params():
    return [pytest.param(s, id=f"{s[0]}x{s[1]}") for s in bench_shapes()]


def _dtype_params():
    return [pytest.param(d, id=harness_dtype(d)) for d in DTYPES]


def _run_pytest_benchmark(benchmark, op, provider, shape, dtype):
    case = Case(op, provider, shape[0], shape[1], dtype, _DEVICE)
    case.prepare()  # compile (torch-compile) and first-call costs stay out of the rounds
    cuda = torch.device(_DEVICE).type == "cuda"

    def step():
        case.step()
        if cuda:  # pytest-benchmark's timer is host-side
            torch.cuda.synchronize()

    # Rounds sized to about MIXKERNELS_BENCH_BUDGET_S seconds per case (one call each, since
    # the gradient reset must run between calls).
    probe = harness.measure(step, device="cpu", warmup=1, rep=3, setup=case.setup)
    budget = float(os.environ.get("MIXKERNELS_BENCH_BUDGET_S", "2.0"))
    rounds = int(min(200, max(5, budget * 1e3 / max(probe["median_ms"], 1e-3))))
    benchmark.group = f"{op} {case.shape_label} {harness_dtype(dtype)}"
    benchmark.extra_info.update({
        "provider": provider, "B": shape[0], "C": shape[1], "dtype": harness_dtype(dtype),
        "device": _DEVICE, "num_threads": torch.get_num_threads(),
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE", "unset"),
    })
    benchmark.pedantic(step, setup=case.setup, rounds=rounds, warmup_rounds=1, iterations=1)
    peak = harness.peak_memory_bytes(step, _DEVICE, setup=case.setup, warmup=0)
    if peak is not None:
        benchmark.extra_info["peak_memory_mb"] = peak / 2**20


if pytest is not None:
    @pytest.mark.parametrize("dtype", _dtype_params())
    @pytest.mark.parametrize("shape", _shape_params())
    @pytest.mark.parametrize("provider", _param_ids(MIXUP))
    def test_mixup_cross_entropy(benchmark, provider, shape, dtype):
        _run_pytest_benchmark(benchmark, MIXUP, provider, shape, dtype)

    @pytest.mark.parametrize("dtype", _dtype_params())
    @pytest.mark.parametrize("shape", _shape_params())
    @pytest.mark.parametrize("provider", _param_ids(SOFT))
    def test_soft_target_cross_entropy(benchmark, provider, shape, dtype):
        _run_pytest_benchmark(benchmark, SOFT, provider, shape, dtype)
