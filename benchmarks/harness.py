"""Timing, peak-memory and reporting helpers shared by every benchmark suite.

Rows follow a Liger-style schema (one row per kernel x provider x metric x
shape x dtype) so results from different machines and ops can be concatenated:

    kernel_name, provider, metric, metric_unit, x_name, x_value, dtype,
    y_median, y_p20, y_p80, device, extra, env

``extra`` holds the op's own settings (shape, lam, smoothing...) and ``env``
the machine and versions (:func:`environment`), both as JSON strings in CSV.
"""

from __future__ import annotations

import csv
import ctypes
import ctypes.util
import datetime
import functools
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import torch

__all__ = [
    "ROW_FIELDS",
    "measure",
    "measure_interleaved",
    "peak_memory_bytes",
    "environment",
    "make_row",
    "write_csv",
    "write_json",
    "markdown_table",
    "format_environment",
    "backend_usable",
    "backend_reason",
    "cpu_peak_rss_supported",
    "print_flush",
]

ROW_FIELDS = [
    "kernel_name", "provider", "metric", "metric_unit", "x_name", "x_value", "dtype",
    "y_median", "y_p20", "y_p80", "device", "extra", "env",
]


# --------------------------------------------------------------------------- timing

def _is_cuda(device) -> bool:
    return torch.device(device).type == "cuda"


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile, the same convention as ``torch.quantile``."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _summary(times_ms: list[float]) -> dict:
    ordered = sorted(times_ms)
    return {
        "median_ms": statistics.median(ordered),
        "p20_ms": _quantile(ordered, 0.2),
        "p80_ms": _quantile(ordered, 0.8),
        "reps": len(ordered),
    }


def measure(fn: Callable[[], object], *, device, warmup: int = 3, rep: int = 50,
            budget_s: float | None = None, min_rep: int = 5,
            setup: Callable[[], object] | None = None, flush_l2: bool = True) -> dict:
    """Time ``fn()``; return ``dict(median_ms, p20_ms, p80_ms, reps, num_threads)``.

    Every repetition is timed on its own so that the quantiles describe the
    spread between calls. ``setup`` (e.g. ``x.grad = None``) runs before each
    repetition, outside the timed region. With ``budget_s`` the number of
    repetitions is cut to what fits in about that many seconds (estimated from
    the warm-up), but never below ``min_rep``; ``rep`` stays the upper bound.

    CPU: wall time with ``time.perf_counter``; the intra-op thread count is
    left as the caller set it and reported. CUDA: CUDA events around each
    call, and (``flush_l2``) a 256 MB buffer is overwritten before each
    repetition so small shapes are not timed out of a warm L2 cache, as
    ``triton.testing.do_bench`` does.
    """
    cuda = _is_cuda(device)
    setup = setup or (lambda: None)

    warm_times = []
    for _ in range(max(warmup, 1)):  # at least one call: first-call costs are never timed
        setup()
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        warm_times.append(time.perf_counter() - start)

    n = rep
    if budget_s is not None:
        per_call = min(warm_times)
        n = int(max(min_rep, min(rep, budget_s / max(per_call, 1e-6))))

    times_ms: list[float] = []
    if cuda:
        flush = torch.empty(256 * 2**20, dtype=torch.int8, device=device) if flush_l2 else None
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        for i in range(n):
            setup()
            if flush is not None:
                flush.zero_()
            starts[i].record()
            fn()
            ends[i].record()
        torch.cuda.synchronize(device)
        times_ms = [s.elapsed_time(e) for s, e in zip(starts, ends)]
    else:
        for _ in range(n):
            setup()
            start = time.perf_counter()
            fn()
            times_ms.append((time.perf_counter() - start) * 1e3)

    result = _summary(times_ms)
    result["num_threads"] = torch.get_num_threads()
    return result


def measure_interleaved(cases: Mapping[str, tuple[Callable[[], object], Callable[[], object] | None]],
                        *, device, warmup: int = 2, rep: int = 50, budget_s: float | None = None,
                        min_rep: int = 5, burst_s: float = 0.25,
                        flush_l2: bool = True) -> dict[str, dict]:
    """Time several ``name -> (fn, setup)`` cases in turn; return ``name -> measure()``-style dicts.

    The cases take turns in bursts of about ``burst_s`` seconds each, round
    after round, so that a change in machine load during the run (another
    process taking a core of a small CPU) hits every provider alike and the
    ratios between them stay meaningful. Within a burst the calls run back to
    back, as in a training loop, so a small case's data stays in cache after
    the burst's first call. ``budget_s`` is per case, as in :func:`measure`.
    """
    cuda = _is_cuda(device)
    names = list(cases)
    per_call = {}
    for name in names:
        fn, setup = cases[name]
        per_call[name] = measure(fn, device=device, warmup=warmup, rep=2, setup=setup,
                                 flush_l2=False)["p20_ms"] / 1e3
    n = rep
    if budget_s is not None:
        round_s = sum(per_call.values())
        n = int(max(min_rep, min(rep, budget_s * len(names) / max(round_s, 1e-6))))
    burst = {name: int(max(1, min(n, burst_s / max(per_call[name], 1e-6)))) for name in names}

    flush = (torch.empty(256 * 2**20, dtype=torch.int8, device=device)
             if cuda and flush_l2 else None)
    times: dict[str, list] = {name: [] for name in names}
    while any(len(times[name]) < n for name in names):
        for name in names:
            fn, setup = cases[name]
            for _ in range(min(burst[name], n - len(times[name]))):
                if setup is not None:
                    setup()
                if cuda:
                    if flush is not None:
                        flush.zero_()
                    start = torch.cuda.Event(enable_timing=True)
                    end = torch.cuda.Event(enable_timing=True)
                    start.record()
                    fn()
                    end.record()
                    times[name].append((start, end))
                else:
                    start = time.perf_counter()
                    fn()
                    times[name].append((time.perf_counter() - start) * 1e3)
    if cuda:
        torch.cuda.synchronize(device)
        times = {name: [s.elapsed_time(e) for s, e in pairs] for name, pairs in times.items()}
    out = {}
    for name in names:
        out[name] = _summary(times[name])
        out[name]["num_threads"] = torch.get_num_threads()
    return out


# --------------------------------------------------------------------------- memory

_PROC_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _libc():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


_LIBC = _libc()


def _status_bytes(*keys: str) -> dict:
    values = {}
    for line in _PROC_STATUS.read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in keys:
            values[key] = int(rest.split()[0]) * 1024  # the kernel reports kB
    return values


@functools.lru_cache(maxsize=None)
def cpu_peak_rss_supported() -> bool:
    """Whether this process can reset its peak RSS (Linux >= 4.0 ``clear_refs``)."""
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
        return "VmHWM" in _status_bytes("VmHWM")
    except OSError:
        return False


def peak_memory_bytes(fn: Callable[[], object], device, *, warmup: int = 1,
                      setup: Callable[[], object] | None = None) -> int | None:
    """Peak memory added by one call of ``fn()`` over what was held before it.

    CUDA: ``max_memory_allocated`` after ``reset_peak_memory_stats``, minus the
    memory allocated before the call (the caching allocator's reserve is not
    counted, as in PyTorch's own memory benchmarks).

    CPU: PyTorch has no CPU allocator statistics, so the process's peak
    resident set is used: writing ``5`` to ``/proc/self/clear_refs`` resets
    ``VmHWM`` (the high-water mark) to the current ``VmRSS``, and after the call
    ``VmHWM - VmRSS_before`` is the largest number of bytes that became
    resident during it. Freed heap memory is first handed back to the OS
    (``malloc_trim``) so that reused pages count again; what is reported is
    thus memory actually touched, so an allocation never written is not
    counted. Returns ``None`` where the kernel does not support the reset.
    """
    setup = setup or (lambda: None)
    for _ in range(warmup):  # lazy one-time allocations (code, thread pools) are not the op's
        setup()
        fn()
    setup()
    gc.collect()

    if _is_cuda(device):
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - base)

    if not cpu_peak_rss_supported():
        return None
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)
    with open(_CLEAR_REFS, "w") as f:
        f.write("5")
    base = _status_bytes("VmRSS")["VmRSS"]
    fn()
    peak = _status_bytes("VmHWM")["VmHWM"]
    return max(0, peak - base)


# --------------------------------------------------------------------------- environment

def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device=None) -> dict:
    """Machine, versions and settings that decide the numbers, recorded with every row."""
    try:
        import triton
        triton_version = triton.__version__
    except Exception:  # Triton is optional
        triton_version = None
    try:
        import mixkernels
        mk_version = getattr(mixkernels, "__version__", None)
        mk_backends = {name: {"usable": backend_usable(status), "reason": backend_reason(status)}
                       for name, status in mixkernels.backends().items()}
    except Exception as exc:  # the suite can still describe the machine
        mk_version, mk_backends = None, {"error": repr(exc)}

    cuda_ok = torch.cuda.is_available()
    dev = torch.device(device) if device is not None else torch.device("cuda" if cuda_ok else "cpu")
    env = {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": dev.type,
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "num_threads": torch.get_num_threads(),
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE", "unset"),
        # Other processes on a small machine distort CPU timings badly (thread
        # pools spin on busy cores): keep the load seen when the run started.
        "loadavg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "gpu_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": triton_version,
        "mixkernels": mk_version,
        "mixkernels_backends": mk_backends,
    }
    return env


def format_environment(env: Mapping) -> str:
    """A few markdown lines describing the machine, to head a results table."""
    machine = env.get("gpu_name") or env.get("cpu_model")
    lines = [
        f"- device: {env.get('device')} ({machine})",
        f"- CPU: {env.get('cpu_model')}, {env.get('cpu_count')} cores "
        f"({env.get('cpu_affinity')} usable), capability {env.get('cpu_capability')}, "
        f"torch threads {env.get('num_threads')}, THP_MEM_ALLOC_ENABLE={env.get('THP_MEM_ALLOC_ENABLE')}",
        f"- python {env.get('python')}, torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), "
        f"triton {env.get('triton')}, mixkernels {env.get('mixkernels')}",
        f"- {env.get('timestamp')}, load average at start {env.get('loadavg_1min')}",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- backends

def backend_usable(status) -> bool:
    """``backends()`` values may be ``(usable, reason)`` tuples or objects with ``.usable``."""
    if hasattr(status, "usable"):
        return bool(status.usable)
    if isinstance(status, (tuple, list)):
        return bool(status[0]) if status else False
    return bool(status)


def backend_reason(status) -> str:
    if hasattr(status, "reason"):
        return str(status.reason)
    if isinstance(status, (tuple, list)) and len(status) > 1:
        return str(status[1])
    return ""


# --------------------------------------------------------------------------- rows and writers

def make_row(*, kernel_name: str, provider: str, metric: str, metric_unit: str, x_name: str,
             x_value, dtype, y_median: float, y_p20: float | None = None,
             y_p80: float | None = None, device: str = "", extra: Mapping | None = None,
             env: Mapping | None = None) -> dict:
    return {
        "kernel_name": kernel_name,
        "provider": provider,
        "metric": metric,
        "metric_unit": metric_unit,
        "x_name": x_name,
        "x_value": x_value,
        "dtype": str(dtype).replace("torch.", ""),
        "y_median": y_median,
        "y_p20": y_median if y_p20 is None else y_p20,
        "y_p80": y_median if y_p80 is None else y_p80,
        "device": device,
        "extra": dict(extra or {}),
        "env": dict(env or {}),
    }


def write_csv(rows: Iterable[Mapping], path) -> Path:
    """One row per measurement; ``extra`` and ``env`` are JSON-encoded cells."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=ROW_FIELDS)
        writer.writeheader()
        for row in rows:
            cells = {k: row.get(k) for k in ROW_FIELDS}
            for key in ("extra", "env"):
                cells[key] = json.dumps(cells[key] or {}, sort_keys=True)
            writer.writerow(cells)
    return path


def write_json(rows: Iterable[Mapping], path, *, environment_info: Mapping | None = None) -> Path:
    """``{"environment": {...}, "rows": [...]}``; each row keeps its own ``env`` too."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"environment": dict(environment_info or {}), "rows": list(rows)}
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    return path


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence], *,
                   align: Sequence[str] | None = None) -> str:
    """A GitHub markdown table; numbers right-aligned unless ``align`` says otherwise."""
    rows = [["" if c is None else str(c) for c in r] for r in rows]
    headers = [str(h) for h in headers]
    if align is None:
        align = ["l"] + ["r"] * (len(headers) - 1)
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def fmt(cells):
        out = []
        for cell, width, a in zip(cells, widths, align):
            out.append(cell.rjust(width) if a == "r" else cell.ljust(width))
        return "| " + " | ".join(out) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if a == "r" else ("-" * (w + 2))
                          for w, a in zip(widths, align)) + "|"
    return "\n".join([fmt(headers), rule] + [fmt(r) for r in rows])


def print_flush(*args, **kwargs):
    print(*args, **kwargs)
    sys.stdout.flush()
