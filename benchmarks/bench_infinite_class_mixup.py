"""Infinite Class Mixup, forward + backward: mixkernels against the method's public code.

One op, ``infinite_class_mixup_loss`` (per-batch ``lam``, both axes, mean),
timed as one training step of the loss alone: forward, then backward to the
leaves ``hidden`` (B, D), ``weight`` (C, D) and ``bias`` (C,), whose ``.grad``
are reset to ``None`` before every repetition outside the timed region.

Providers:
  - ``mixkernels-<backend>``: ``mixkernels.infinite_class_mixup_loss`` on every
    compiled backend that has ICM kernels (``ICM_BACKENDS``) and runs natively
    on the device,
  - ``dense``: what the method's public code does: the C-way logits
    ``Z = hidden @ W.T + b``, the dense mixed targets ``Y~`` (B x C, fp32, from
    one-hots), ``S = Z @ Y~.T`` and the two cross-entropies. In bf16 the
    matmuls run in bf16, as they would under autocast (``Y~`` cast to bf16),
  - ``factorised``: the eager reference, ``mixkernels.reference.infinite_class_mixup_loss``
    (mixed classifiers ``W~`` (B x D) gathered and lerped, ``S = hidden @ W~.T + b~``, in fp32),
  - ``torch-compile``: ``torch.compile`` of ``factorised`` (compile not timed),
  - and, only when named in ``--providers``, ``mixkernels-<backend>@factorised``
    and ``mixkernels-<backend>@logits``: one path forced (the measurements
    behind the "auto" rule).

Shapes (B, D, C): CIFAR-100 with a ResNet-18 (128, 512, 100), ImageNet-1k
with a ResNet-50 (256 and 4096, 2048, 1000), ImageNet-21k (2048, 1024, 21843)
and, on a GPU only, (16384, 2048, 21843); fp32 and bf16.

Before timing, every provider's loss and gradients are compared with the
reference in fp32 on the same (rounded) inputs; the worst relative error and
whether it is within tolerance go into every row's ``extra``, and a mismatch
is logged as a WARNING.

Run through ``python -m benchmarks.run --op infinite_class_mixup_loss`` (CSV,
JSON and markdown tables with the ratios of each mixkernels backend against
``dense`` and ``torch-compile``), which calls :func:`run_suite`.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

import mixkernels
from benchmarks import harness
from benchmarks.bench_mixup_cross_entropy import default_device, harness_dtype, mixkernels_backends
from mixkernels.functional import ICM_BACKENDS

OP = "infinite_class_mixup_loss"
X_NAME = "BxDxC"
SHAPES = ((128, 512, 100), (256, 2048, 1000), (4096, 2048, 1000), (2048, 1024, 21843))
GPU_ONLY_SHAPES = ((16384, 2048, 21843),)
QUICK_SHAPES = ((128, 512, 100),)
DTYPES = (torch.float32, torch.bfloat16)
LAM = 0.7  # one lam per batch, as the method draws it
AXES = "both"
REDUCTION = "mean"
SEED = 0

DENSE = "dense"
FACTORISED = "factorised"
COMPILE = "torch-compile"
BASELINES = (DENSE, COMPILE)  # what each mixkernels backend's speedup is taken against
GRADS = ("hidden", "weight", "bias")


# --------------------------------------------------------------------------- configuration

def parse_shapes(text: str) -> tuple[tuple[int, int, int], ...]:
    """``"128x512x100,256x2048x1000"`` -> ``((128, 512, 100), (256, 2048, 1000))``; ``ValueError``
    for anything but three sizes per shape, so that the CLI tells them from other suites' shapes."""
    shapes = []
    for item in text.replace(" ", "").split(","):
        if not item:
            continue
        sizes = item.lower().split("x")
        if len(sizes) != 3:
            raise ValueError(f"{OP} shapes are BxDxC, got {item!r}")
        shapes.append(tuple(int(s) for s in sizes))
    return tuple(shapes)


def bench_shapes(quick: bool | None = None, device=None) -> tuple[tuple[int, int, int], ...]:
    """The (B, D, C) sweep: the GPU-only shape joins on CUDA; ``MIXKERNELS_BENCH_QUICK=1`` narrows it."""
    if quick is None:
        quick = os.environ.get("MIXKERNELS_BENCH_QUICK", "0") not in ("", "0")
    if quick:
        return QUICK_SHAPES
    cuda = torch.device(device or default_device()).type == "cuda"
    return SHAPES + (GPU_ONLY_SHAPES if cuda else ())


def shape_label(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape)


def providers(op: str = OP, device=None, *, include_compile: bool = True) -> list[str]:
    if op != OP:
        raise ValueError(f"this suite benchmarks {OP!r}, got {op!r}")
    names = [f"mixkernels-{b}" for b in mixkernels_backends(device or default_device()) if b in ICM_BACKENDS]
    names += [DENSE, FACTORISED]
    if include_compile:
        names.append(COMPILE)
    return names


def optional_providers(op: str = OP, device=None) -> list[str]:
    """Run only when named in ``--providers``: each mixkernels backend with its
    path forced (``mixkernels-cpu@factorised``, ``mixkernels-cpu@logits``)."""
    return [f"{name}@{path}" for name in providers(op, device, include_compile=False)
            if name.startswith("mixkernels-") for path in ("factorised", "logits")]


# --------------------------------------------------------------------------- the losses compared

def dense_icm_loss(hidden, weight, bias, y_a, y_b, lam: float):
    """The public code's form: C-way logits contracted with dense fp32 mixup targets."""
    logits = F.linear(hidden, weight, bias)
    num_classes = weight.shape[0]
    targets = lam * F.one_hot(y_a, num_classes) + (1 - lam) * F.one_hot(y_b, num_classes)
    scores = logits @ targets.to(logits.dtype).T
    positives = torch.arange(scores.shape[0], device=scores.device)
    return F.cross_entropy(scores, positives) + F.cross_entropy(scores.T, positives)


def factorised_icm_loss(hidden, weight, bias, y_a, y_b, lam: float):
    return mixkernels.reference.infinite_class_mixup_loss(hidden, weight, y_a, y_b, lam, bias, AXES, REDUCTION)


def make_loss(provider: str) -> Callable:
    """The provider's loss as ``fn(hidden, weight, bias, y_a, y_b, lam)``.

    ``mixkernels-<backend>`` takes the path "auto" chooses;
    ``mixkernels-<backend>@factorised`` and ``...@logits`` (asked for by name
    with ``--providers``) force one, to measure the rule behind "auto".
    """
    if provider.startswith("mixkernels-"):
        backend, _, path = provider[len("mixkernels-"):].partition("@")
        if path and path not in ("factorised", "logits"):
            raise ValueError(f"unknown path {path!r} in provider {provider!r}")
        return lambda hidden, weight, bias, y_a, y_b, lam: mixkernels.infinite_class_mixup_loss(
            hidden, weight, y_a, y_b, lam, bias=bias, axes=AXES, reduction=REDUCTION, backend=backend,
            path=path or "auto")
    if provider == DENSE:
        return dense_icm_loss
    if provider == FACTORISED:
        return factorised_icm_loss
    if provider == COMPILE:
        # A fresh cache per shape and dtype: each gets its own static graph.
        torch._dynamo.reset()
        return torch.compile(factorised_icm_loss, dynamic=False)
    raise ValueError(f"unknown provider {provider!r} for {OP}")


class Inputs:
    """What every provider of one shape x dtype reads; the leaves' .grad is reset by each case."""

    def __init__(self, shape, dtype, device):
        batch, features, num_classes = shape
        self.shape, self.dtype, self.device = tuple(shape), dtype, device
        gen = torch.Generator(device="cpu").manual_seed(SEED)
        self.hidden = torch.randn(batch, features, generator=gen).to(device=device, dtype=dtype)
        # nn.Linear's initialisation scale: scores of order 1.
        bound = features ** -0.5
        self.weight = ((torch.rand(num_classes, features, generator=gen) * 2 - 1) * bound).to(device=device,
                                                                                                dtype=dtype)
        self.bias = ((torch.rand(num_classes, generator=gen) * 2 - 1) * bound).to(device=device, dtype=dtype)
        for t in (self.hidden, self.weight, self.bias):
            t.requires_grad_(True)
        self.y_a = torch.randint(0, num_classes, (batch,), generator=gen).to(device)
        self.y_b = self.y_a[torch.randperm(batch, generator=gen).to(device)]  # mixup's random partner

    @property
    def leaves(self) -> tuple[torch.Tensor, ...]:
        return self.hidden, self.weight, self.bias

    def reset(self):
        for t in self.leaves:
            t.grad = None

    def reference(self) -> tuple[torch.Tensor, ...]:
        """The loss and the gradients of hidden, weight and bias, in fp32 from the same rounded inputs."""
        leaves = [t.detach().float().requires_grad_(True) for t in self.leaves]
        loss = mixkernels.reference.infinite_class_mixup_loss(leaves[0], leaves[1], self.y_a, self.y_b, LAM,
                                                              leaves[2], AXES, REDUCTION)
        grads = torch.autograd.grad(loss, leaves)
        return (loss.detach(), *grads)


class Case:
    """The timed closure and its untimed setup for one provider on shared inputs."""

    def __init__(self, provider: str, inputs: Inputs):
        self.provider, self.inputs = provider, inputs
        self.loss_fn = make_loss(provider)

    def setup(self):
        self.inputs.reset()

    def step(self):
        i = self.inputs
        loss = self.loss_fn(i.hidden, i.weight, i.bias, i.y_a, i.y_b, LAM)
        loss.backward()
        return loss

    def prepare(self) -> tuple[torch.Tensor, ...]:
        """Run once (compiling where needed); return the loss and the three gradients."""
        self.setup()
        loss = self.step()
        if torch.device(self.inputs.device).type == "cuda":
            torch.cuda.synchronize()
        out = (loss.detach(), *(t.grad for t in self.inputs.leaves))
        self.setup()
        return out


def tolerance(dtype) -> float:
    """Bound on the relative error; bf16 providers round the logits or scores to bf16."""
    return 5e-2 if dtype in (torch.bfloat16, torch.float16) else 1e-4


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """``max |got - ref| / max |ref|``: relative to the tensor's own scale."""
    if got is None or got.shape != ref.shape:
        return float("inf")
    return float((got.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def _check_against_reference(cases: Sequence[Case], inputs: Inputs, log) -> dict[str, dict[str, float]]:
    """Each case run once (this also compiles); its relative errors in the loss and each gradient."""
    reference = inputs.reference()
    errors = {}
    for case in cases:
        got = case.prepare()
        errors[case.provider] = {name: relative_error(g, r) for name, g, r in zip(("loss",) + GRADS, got, reference)}
        del got
        worst = max(errors[case.provider].values())
        if log and not worst <= tolerance(inputs.dtype):
            log(f"  WARNING {OP} {shape_label(inputs.shape)} {harness_dtype(inputs.dtype)}: {case.provider} differs "
                f"from the fp32 reference (relative errors {errors[case.provider]})")
    del reference
    return errors


# --------------------------------------------------------------------------- the CLI's suite

def run_suite(op: str = OP, *, device=None, shapes: Sequence[Sequence[int]] | None = None,
              dtypes: Sequence[torch.dtype] = DTYPES, provider_names: Sequence[str] | None = None,
              include_compile: bool = True, warmup: int = 2, rep: int = 100, budget_s: float = 2.5,
              measure_memory: bool = True, env: dict | None = None,
              log: Callable[[str], None] | None = print) -> list[dict]:
    """Measure every provider; return harness rows (speed, peak memory, speedup)."""
    if op != OP:
        raise ValueError(f"this suite benchmarks {OP!r}, got {op!r}")
    device = device or default_device()
    cuda = torch.device(device).type == "cuda"
    shapes = tuple(tuple(s) for s in (shapes or bench_shapes(device=device)))
    env = env if env is not None else harness.environment(device)
    names = list(provider_names or providers(op, device, include_compile=include_compile))
    rows: list[dict] = []
    for shape in shapes:
        if not cuda and shape in GPU_ONLY_SHAPES:
            if log:
                log(f"  skipping {OP} {shape_label(shape)} on {device}: a GPU-only shape")
            continue
        label = shape_label(shape)
        batch, features, num_classes = shape
        for dtype in dtypes:
            inputs = Inputs(shape, dtype, device)
            cases = [Case(p, inputs) for p in names]
            errors = _check_against_reference(cases, inputs, log)
            timings = harness.measure_interleaved({c.provider: (c.step, c.setup) for c in cases}, device=device,
                                                  warmup=warmup, rep=rep, budget_s=budget_s)
            speed: dict[str, float] = {}
            for case in cases:
                timing = timings[case.provider]
                worst = max(errors[case.provider].values())
                extra = {"B": batch, "D": features, "C": num_classes, "lam": LAM, "lam_kind": "per-batch",
                         "axes": AXES, "reduction": REDUCTION, "mode": "forward+backward",
                         "grads": list(GRADS), "seed": SEED, "reps": timing["reps"],
                         "num_threads": timing["num_threads"], "rel_errors": errors[case.provider],
                         "max_rel_error": worst, "tolerance": tolerance(dtype),
                         "agrees": worst <= tolerance(dtype)}
                common = dict(kernel_name=OP, provider=case.provider, x_name=X_NAME, x_value=label, dtype=dtype,
                              device=device, extra=extra, env=env)
                rows.append(harness.make_row(metric="speed", metric_unit="ms", y_median=timing["median_ms"],
                                             y_p20=timing["p20_ms"], y_p80=timing["p80_ms"], **common))
                speed[case.provider] = timing["median_ms"]
                if measure_memory:
                    peak = harness.peak_memory_bytes(case.step, device, setup=case.setup, warmup=0)
                    if peak is not None:
                        rows.append(harness.make_row(metric="memory", metric_unit="MB", y_median=peak / 2**20,
                                                     **common))
                if log:
                    log(f"  {OP} {label} {harness_dtype(dtype)} {case.provider}: {timing['median_ms']:.3f} ms "
                        f"(p20 {timing['p20_ms']:.3f}, p80 {timing['p80_ms']:.3f}, {timing['reps']} reps; "
                        f"max relative error {worst:.2e})")
            del cases, inputs
            rows.extend(_speedup_rows(shape, dtype, device, speed, env))
    return rows


def _speedup_rows(shape, dtype, device, speed: dict, env) -> list[dict]:
    """``baseline_ms / mixkernels_ms`` for each mixkernels backend (> 1: mixkernels is faster)."""
    rows = []
    batch, features, num_classes = shape
    for provider, ms in speed.items():
        if not provider.startswith("mixkernels-"):
            continue
        for baseline in BASELINES:
            if baseline in speed and ms > 0:
                rows.append(harness.make_row(
                    kernel_name=OP, provider=provider, metric=f"speedup_vs_{baseline}", metric_unit="x",
                    x_name=X_NAME, x_value=shape_label(shape), dtype=dtype, y_median=speed[baseline] / ms,
                    device=device, extra={"B": batch, "D": features, "C": num_classes, "baseline": baseline},
                    env=env))
    return rows


def tables(rows: Sequence[dict]) -> str:
    """Markdown: one speed table with ratio columns, one peak-memory table."""
    op_rows = [r for r in rows if r["kernel_name"] == OP]
    if not op_rows:
        return ""
    keys = list(dict.fromkeys((r["x_value"], r["dtype"]) for r in op_rows))
    names = list(dict.fromkeys(r["provider"] for r in op_rows if r["metric"] == "speed"))
    ratio_cols = list(dict.fromkeys((r["provider"], r["metric"]) for r in op_rows
                                    if r["metric"].startswith("speedup_vs_")))

    def value(metric, provider, key):
        for r in op_rows:
            if r["metric"] == metric and r["provider"] == provider and (r["x_value"], r["dtype"]) == key:
                return r["y_median"]
        return None

    def fmt(v, spec, suffix=""):
        return "" if v is None else format(v, spec) + suffix

    def agreement(key):
        bad = [r["provider"] for r in op_rows if r["metric"] == "speed" and (r["x_value"], r["dtype"]) == key
               and not r["extra"].get("agrees", True)]
        return "yes" if not bad else "NO: " + ", ".join(bad)

    out = []
    headers = ["B x D x C", "dtype"] + [f"{p} ms" for p in names]
    headers += [f"{p.replace('mixkernels-', '')} vs {m.replace('speedup_vs_', '')}" for p, m in ratio_cols]
    headers.append("all agree with fp32 reference")
    body = [[k[0], k[1]] + [fmt(value("speed", p, k), ".3f") for p in names]
            + [fmt(value(m, p, k), ".2f", "x") for p, m in ratio_cols] + [agreement(k)] for k in keys]
    out.append(f"### {OP}: forward + backward (grads to hidden, weight, bias), median ms "
               "(ratios: baseline ms / mixkernels ms)\n")
    out.append(harness.markdown_table(headers, body, align=["l", "l"] + ["r"] * (len(headers) - 3) + ["l"]))
    mem_names = list(dict.fromkeys(r["provider"] for r in op_rows if r["metric"] == "memory"))
    if mem_names:
        headers = ["B x D x C", "dtype"] + [f"{p} MB" for p in mem_names]
        body = [[k[0], k[1]] + [fmt(value("memory", p, k), ".1f") for p in mem_names] for k in keys]
        out.append(f"\n### {OP}: peak memory of one forward + backward, MB over baseline\n")
        out.append(harness.markdown_table(headers, body, align=["l", "l"] + ["r"] * (len(headers) - 2)))
    out.append("")
    return "\n".join(out)
