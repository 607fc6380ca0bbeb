"""Benchmark of ``mixkernels.Mixup`` against timm's ``Mixup``, per mode.

One timed call is ``mixer(x, target)``: draw the parameters, mix the batch in
place and build the dense targets, exactly what a training loop calls. Both
mix the same batch in place, call after call (values stay bounded: every
mix is a convex combination or a copy). Mixup and CutMix are both active
(``mixup_alpha=0.8, cutmix_alpha=1.0``, timm's ImageNet recipe), so "pair" and
"elem" mode mix some samples and paste boxes into others in the same call.

Providers: ``mixkernels-<backend>`` for every usable backend with image
kernels, and ``timm`` when timm is importable. Used by ``benchmarks/run.py``
(``--op mixup``).
"""

from __future__ import annotations

import importlib.util
from typing import Sequence

import torch

import mixkernels
from benchmarks import harness
from mixkernels.ops.cutmix_batch import MIX_IMAGES_BACKENDS

OP = "mixup"
FULL_SHAPES = ((256, 3, 224, 224), (64, 3, 224, 224))
QUICK_SHAPES = ((8, 3, 32, 32),)
MODES = ("batch", "pair", "elem")
TIMM = "timm"
CONFIG = dict(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=1000)


def parse_shapes(text: str) -> tuple[tuple[int, int, int, int], ...]:
    shapes = []
    for item in text.split(","):
        dims = tuple(int(v) for v in item.strip().lower().split("x"))
        if len(dims) != 4:
            raise ValueError(f"{item!r} is not BxCxHxW")
        shapes.append(dims)
    return tuple(shapes)


def bench_shapes(quick: bool | None = None) -> tuple[tuple[int, int, int, int], ...]:
    return QUICK_SHAPES if quick else FULL_SHAPES


def providers(op: str = OP, device=None, *, include_compile: bool = True) -> list[str]:
    """mixkernels backends with image kernels usable here, then timm (no compile baseline:
    timm's Mixup is Python control flow around in-place tensor ops)."""
    device = torch.device(device or "cpu")
    status = mixkernels.backends()
    on_device = ("cpu",) if device.type == "cpu" else ("cuda", "triton")
    names = [f"mixkernels-{b}" for b in on_device if b in MIX_IMAGES_BACKENDS and harness.backend_usable(status[b])]
    if importlib.util.find_spec("timm") is not None:
        names.append(TIMM)
    return names


def make_mixer(provider: str, mode: str):
    if provider == TIMM:
        from timm.data.mixup import Mixup as TimmMixup

        return TimmMixup(mode=mode, **CONFIG)
    return mixkernels.Mixup(mode=mode, backend=provider.removeprefix("mixkernels-"), **CONFIG)


def run_suite(op: str = OP, *, device=None, shapes: Sequence[Sequence[int]] | None = None,
              dtypes: Sequence[torch.dtype] = (torch.float32, torch.bfloat16), provider_names=None,
              warmup: int = 2, rep: int = 1000, budget_s: float = 2.5, measure_memory: bool = True,
              env=None, log=harness.print_flush) -> list[dict]:
    device = torch.device(device or "cpu")
    names = list(provider_names) if provider_names else providers(op, device)
    rows = []
    for shape in shapes or FULL_SHAPES:
        label = "x".join(map(str, shape))
        for dtype in dtypes:
            torch.manual_seed(0)
            x = torch.randn(shape, device=device).to(dtype)
            target = torch.randint(0, CONFIG["num_classes"], (shape[0],), device=device)
            for mode in MODES:
                for provider in names:
                    mixer = make_mixer(provider, mode)

                    def call():
                        return mixer(x, target)

                    timing = harness.measure(call, device=device, warmup=warmup, rep=rep, budget_s=budget_s)
                    extra = {"mode": mode}
                    if measure_memory:
                        peak = harness.peak_memory_bytes(call, device)
                        extra["peak_memory_mb"] = None if peak is None else peak / 2 ** 20
                    log(f"  mixup {label} {str(dtype).replace('torch.', '')} {mode} {provider}: "
                        f"{timing['median_ms']:.3f} ms")
                    rows.append(harness.make_row(
                        kernel_name=OP, provider=provider, metric=f"call_{mode}", metric_unit="ms", x_name="shape",
                        x_value=label, dtype=dtype, y_median=timing["median_ms"], y_p20=timing["p20_ms"],
                        y_p80=timing["p80_ms"], device=str(device), extra=extra, env=env))
    return rows


def tables(rows: Sequence[dict]) -> str:
    """Median ms per mode and provider, and each mixkernels provider's speedup over timm."""
    providers_seen = list(dict.fromkeys(r["provider"] for r in rows))
    keys = list(dict.fromkeys((r["x_value"], r["dtype"], r["metric"].removeprefix("call_")) for r in rows))
    ms = {(r["x_value"], r["dtype"], r["metric"].removeprefix("call_"), r["provider"]): r["y_median"] for r in rows}
    mk = [p for p in providers_seen if p != TIMM]
    mb = {(r["x_value"], r["dtype"], r["metric"].removeprefix("call_"), r["provider"]): r["extra"]["peak_memory_mb"]
          for r in rows if r["extra"].get("peak_memory_mb") is not None}
    mem_seen = [p for p in providers_seen if any(k[3] == p for k in mb)]
    headers = ["shape", "dtype", "mode"] + [f"{p} ms" for p in providers_seen]
    if TIMM in providers_seen:
        headers += [f"{p} vs timm" for p in mk]
    headers += [f"{p} peak MB" for p in mem_seen]
    body = []
    for shape, dtype, mode in keys:
        row = [shape, dtype, mode] + [f"{ms[(shape, dtype, mode, p)]:.3f}" if (shape, dtype, mode, p) in ms else ""
                                      for p in providers_seen]
        if TIMM in providers_seen:
            timm_ms = ms.get((shape, dtype, mode, TIMM))
            row += [f"{timm_ms / ms[(shape, dtype, mode, p)]:.2f}x" if timm_ms and (shape, dtype, mode, p) in ms else ""
                    for p in mk]
        row += [f"{mb[(shape, dtype, mode, p)]:.1f}" if (shape, dtype, mode, p) in mb else "" for p in mem_seen]
        body.append(row)
    return ("### Mixup: one call (draw, mix in place, dense targets), median ms; peak memory of one call, "
            "MB over what was held before it\n\n"
            + harness.markdown_table(headers, body, align=["l", "l", "l"] + ["r"] * (len(headers) - 3)))
