"""What the image-batch suites (``mix_batch``, ``mask_mix``) share.

Each of those suites times, per (B, C, H, W) shape and dtype, a list of
cases (provider x metric) that expose ``provider``, ``metric``, ``name``,
``run`` and ``setup``; this module times them round-robin on a machine that
other processes may share (:func:`time_cases`), turns the timings and peak
memory into harness rows (:func:`case_rows`), adds the ratios of every
mixkernels provider against its baselines (:func:`speedup_rows`) and prints
the markdown tables (:func:`tables`).
"""

from __future__ import annotations

import os
import time
from typing import Callable, Mapping, Sequence

import torch

from benchmarks import harness
from benchmarks.bench_mixup_cross_entropy import harness_dtype

X_NAME = "BxCxHxW"


def parse_shapes(text: str, op: str) -> tuple[tuple[int, int, int, int], ...]:
    """``"256x3x224x224,8x3x32x32"`` -> ``((256, 3, 224, 224), (8, 3, 32, 32))``.

    Raises ``ValueError`` for anything but four sizes per shape, so that the
    CLI can tell these suites' shapes from the losses' ``BxC``.
    """
    shapes = []
    for item in text.replace(" ", "").split(","):
        if not item:
            continue
        sizes = item.lower().split("x")
        if len(sizes) != 4:
            raise ValueError(f"{op} shapes are BxCxHxW, got {item!r}")
        shapes.append(tuple(int(s) for s in sizes))
    return tuple(shapes)


def shape_label(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``max |out - ref| / max(1, max |ref|)``.

    Relative to the batch's scale rather than elementwise: where a sample and
    its partner nearly cancel, the bf16-rounded baselines' elementwise relative
    error is large without anything being wrong, while a wrong partner or
    weight still errs by the order of the values themselves.
    """
    return float((out.float() - ref).abs().max() / ref.abs().max().clamp_min(1.0))


# --------------------------------------------------------------------------- a shared machine

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


def time_cases(cases: Sequence, *, device, warmup: int, rep: int, budget_s: float, busy_retries: int = 0,
               busy_threshold: float = 0.1, busy_wait_s: float = 120.0, log=None,
               tag: str = "") -> tuple[dict, float | None, int]:
    """Time every case round-robin; return ``(name -> timing, foreign CPU share, attempts)``.

    Round-robin (:func:`harness.measure_interleaved`): load that changes during
    the run then hits every provider alike. When other processes took more
    than ``busy_threshold`` of the CPU, wait (up to ``busy_wait_s``) for a
    quieter machine and time again, up to ``busy_retries`` times; the attempt
    that shared the CPU least is kept.
    """
    timings, foreign_share, attempts = None, None, 0
    while True:
        attempts += 1
        foreign = ForeignLoad().start()
        attempt = harness.measure_interleaved({c.name: (c.run, c.setup) for c in cases},
                                              device=device, warmup=warmup, rep=rep, budget_s=budget_s)
        share = foreign.stop()
        if log and share is not None:
            log(f"  {tag}: other processes used {100 * share:.0f}% of the CPU while timing (attempt {attempts})")
        if timings is None or (share is not None and (foreign_share is None or share < foreign_share)):
            timings, foreign_share = attempt, share
        if share is None or share <= busy_threshold or attempts > busy_retries:
            return timings, foreign_share, attempts
        wait_for_quiet(busy_threshold, busy_wait_s, log)


# --------------------------------------------------------------------------- rows and tables

def case_rows(op: str, case, timing: Mapping, extra: dict, *, shape, dtype, device, env,
              measure_memory: bool, log=None) -> list[dict]:
    """The timing row of one case and, with ``measure_memory``, its peak-memory row."""
    label = shape_label(shape)
    common = dict(kernel_name=op, provider=case.provider, x_name=X_NAME, x_value=label, dtype=dtype,
                  device=device, extra=extra, env=env)
    rows = [harness.make_row(metric=case.metric, metric_unit="ms", y_median=timing["median_ms"],
                             y_p20=timing["p20_ms"], y_p80=timing["p80_ms"], **common)]
    if measure_memory:
        peak = harness.peak_memory_bytes(case.run, device, setup=case.setup, warmup=0)
        if peak is not None:
            rows.append(harness.make_row(metric=f"peak_memory_{case.metric}", metric_unit="MB",
                                         y_median=peak / 2**20, **common))
    if log:
        log(f"  {op} {label} {harness_dtype(dtype)} {case.provider} {case.metric}: "
            f"{timing['median_ms']:.3f} ms (p20 {timing['p20_ms']:.3f}, "
            f"p80 {timing['p80_ms']:.3f}, {timing['reps']} reps)")
    return rows


def speedup_rows(op: str, shape, dtype, device, times: Mapping[tuple[str, str], float],
                 baselines_of: Callable[[str], Sequence[str]], env) -> list[dict]:
    """``baseline_ms / mixkernels_ms`` per mixkernels provider and metric (> 1: mixkernels is faster)."""
    rows = []
    for (provider, metric), ms in times.items():
        if not provider.startswith("mixkernels-") or ms <= 0:
            continue
        for baseline in baselines_of(provider):
            if (baseline, metric) in times:
                rows.append(harness.make_row(
                    kernel_name=op, provider=provider, metric=f"speedup_vs_{baseline}_{metric}",
                    metric_unit="x", x_name=X_NAME, x_value=shape_label(shape), dtype=dtype,
                    y_median=times[baseline, metric] / ms, device=device,
                    extra={"shape": list(shape), "baseline": baseline, "timed_metric": metric}, env=env))
    return rows


def tables(rows: Sequence[dict], op: str, titles: Mapping[str, str],
           short_names: Mapping[str, str] | None = None) -> str:
    """Markdown: per metric (``titles``' keys, in order) a time table with ratio columns, then peak memory."""
    short_names = short_names or {}
    op_rows = [r for r in rows if r["kernel_name"] == op]
    if not op_rows:
        return ""
    keys = list(dict.fromkeys((r["x_value"], r["dtype"]) for r in op_rows))
    lookup = {(r["metric"], r["provider"], r["x_value"], r["dtype"]): r["y_median"] for r in op_rows}

    def fmt(v, spec, suffix=""):
        return "" if v is None else format(v, spec) + suffix

    out = []
    for metric, title in titles.items():
        names = list(dict.fromkeys(r["provider"] for r in op_rows if r["metric"] == metric))
        if not names:
            continue
        ratio_cols = list(dict.fromkeys(
            (r["provider"], r["extra"]["baseline"]) for r in op_rows
            if r["metric"].startswith("speedup_vs_") and r["extra"]["timed_metric"] == metric))
        headers = ["B x C x H x W", "dtype"] + [f"{p} ms" for p in names]
        headers += [f"{p.replace('mixkernels-', '')} vs {short_names.get(b, b)}" for p, b in ratio_cols]
        body = [[k[0], k[1]] + [fmt(lookup.get((metric, p) + k), ".3f") for p in names]
                + [fmt(lookup.get((f"speedup_vs_{b}_{metric}", p) + k), ".2f", "x") for p, b in ratio_cols]
                for k in keys]
        out.append(f"### {op}: {title}, median ms (ratios: baseline ms / mixkernels ms)\n")
        out.append(harness.markdown_table(headers, body, align=["l", "l"] + ["r"] * (len(headers) - 2)))
        out.append("")
    shares = {}
    for r in op_rows:
        share = r["extra"].get("foreign_cpu_share") if r["metric"] in titles else None
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
                for k in keys for metric in titles]
        out.append(f"### {op}: peak memory of one call, MB over what was held before it\n")
        out.append(harness.markdown_table(headers, body, align=["l", "l", "l"] + ["r"] * (len(headers) - 3)))
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------- the per-shape loop

def run_shapes(op: str, *, shapes, dtypes, device, names: Sequence[str],
               make_cases: Callable[[tuple, torch.dtype, Sequence[str]], list],
               check: Callable[[list], dict], extra_of: Callable[[object, tuple, Mapping, float, torch.dtype], dict],
               baselines_of: Callable[[str], Sequence[str]], warmup: int, rep: int, budget_s: float,
               measure_memory: bool, env, log, busy_retries: int = 0, busy_threshold: float = 0.1,
               busy_wait_s: float = 120.0) -> list[dict]:
    """For each shape and dtype: build the cases, check them against the reference, time them, return rows.

    ``make_cases(shape, dtype, names)`` builds the shape's inputs (and compiled
    baselines) and returns its cases; ``check(cases)`` runs each once and
    returns ``case.name -> error``; ``extra_of(case, shape, timing, error,
    dtype)`` is the op's ``extra`` of a row (the foreign CPU share and timing
    attempts are added here).
    """
    rows: list[dict] = []
    for shape in shapes:
        label = shape_label(shape)
        for dtype in dtypes:
            cases = make_cases(shape, dtype, names)
            errors = check(cases)
            timings, foreign_share, attempts = time_cases(
                cases, device=device, warmup=warmup, rep=rep, budget_s=budget_s, busy_retries=busy_retries,
                busy_threshold=busy_threshold, busy_wait_s=busy_wait_s, log=log,
                tag=f"{op} {label} {harness_dtype(dtype)}")
            times: dict[tuple[str, str], float] = {}
            for case in cases:
                timing = timings[case.name]
                extra = extra_of(case, shape, timing, errors[case.name], dtype)
                extra["foreign_cpu_share"] = foreign_share
                extra["timing_attempts"] = attempts
                rows += case_rows(op, case, timing, extra, shape=shape, dtype=dtype, device=device, env=env,
                                  measure_memory=measure_memory, log=log)
                times[case.provider, case.metric] = timing["median_ms"]
            del cases
            rows += speedup_rows(op, shape, dtype, device, times, baselines_of, env)
    return rows
