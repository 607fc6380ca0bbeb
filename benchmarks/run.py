"""Benchmark CLI: ``python -m benchmarks.run [--op ...] [--quick] [--out DIR]``.

Runs the suites on the device at hand (CUDA if available, else CPU), writes
``<op>.csv``, ``<op>.json`` and ``<op>.md`` per op to ``--out`` (default
``benchmarks/results/``), and prints markdown tables headed by the machine and
versions, with each mixkernels backend's speedup over the eager and the
``torch.compile`` baselines measured in the same run.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.util
import inspect
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks import bench_infinite_class_mixup as icmb
from benchmarks import bench_mask_mix
from benchmarks import bench_mix_batch as mixb
from benchmarks import bench_mixup
from benchmarks import bench_mixup_cross_entropy as mce
from benchmarks import harness

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
# op -> module with providers(op, device, include_compile), parse_shapes(text),
# bench_shapes(quick), run_suite(op, ...) and tables(rows)
SUITES = {mce.MIXUP: mce, mce.SOFT: mce, mixb.OP: mixb, bench_mask_mix.OP: bench_mask_mix,
          bench_mixup.OP: bench_mixup, icmb.OP: icmb}
DTYPE_NAMES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
               "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def build_identity() -> dict:
    """Which mixkernels code was measured: the checkout's commit (``-dirty`` with local
    edits) and a hash of the compiled extension, which others may rebuild between runs."""
    info = {"git": None, "extension": None, "extension_sha256": None, "extension_mtime": None}
    try:
        info["git"] = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).parent,
                                     capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    spec = importlib.util.find_spec("mixkernels._C")
    if spec is not None and spec.origin:
        path = Path(spec.origin)
        info["extension"] = str(path)
        info["extension_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        info["extension_mtime"] = datetime.datetime.fromtimestamp(
            path.stat().st_mtime, datetime.timezone.utc).isoformat(timespec="seconds")
    return info


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    p.add_argument("--op", choices=[*SUITES, "all"], default="all")
    p.add_argument("--quick", action="store_true",
                   help="smallest shape only and few repetitions (a smoke test, not a measurement)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for CSV/JSON/markdown")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--shapes", default=None,
                   help='override the sweep: BxC for the losses ("512x1000,1024x32768"), BxCxHxW for '
                        'mix_batch, mask_mix and mixup ("64x3x224x224"); with --op all, suites whose shapes these are not are skipped')
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated dtypes")
    p.add_argument("--providers", default=None, help="comma-separated provider names to keep")
    p.add_argument("--no-compile", action="store_true", help="skip the torch-compile baseline")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of timed repetitions per provider and shape (default 2.5, quick 0.2)")
    p.add_argument("--retry-busy", type=int, default=0, metavar="N",
                   help="suites that measure other processes' CPU use (mix_batch, mask_mix) wait for a quieter "
                        "machine and re-time a shape up to N times when that use exceeds 10%%")
    return p


def main(argv=None) -> dict:
    """Run the CLI; return ``{op: {"rows": [...], "csv": path, "json": path, "markdown": str}}``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    device = args.device or mce.default_device()
    ops = list(SUITES) if args.op == "all" else [args.op]
    shapes_of = {}  # each suite reads its own shape format
    for op in ops:
        suite = SUITES[op]
        if not args.shapes:
            shapes_of[op] = suite.bench_shapes(quick=True if args.quick else None)
            continue
        try:
            shapes_of[op] = suite.parse_shapes(args.shapes)
        except ValueError as exc:
            if args.op != "all":
                parser.error(f"--shapes {args.shapes!r} for {op}: {exc}")
            harness.print_flush(f"skipping {op}: --shapes {args.shapes!r} are not its shapes")
    ops = [op for op in ops if op in shapes_of]
    if not ops:
        parser.error(f"--shapes {args.shapes!r} fit no suite")
    dtypes = [DTYPE_NAMES[d.strip().lower()] for d in args.dtypes.split(",") if d.strip()]
    keep = [p.strip() for p in args.providers.split(",")] if args.providers else None
    budget = args.budget if args.budget is not None else (0.2 if args.quick else 2.5)
    warmup, rep = (1, 10) if args.quick else (2, 1000)

    env = harness.environment(device)
    env["mixkernels_build"] = build = build_identity()
    header = ("## mixkernels benchmarks\n\n" + harness.format_environment(env)
              + f"\n- mixkernels build: git {build['git']}, extension sha256 {build['extension_sha256']} "
                f"(built {build['extension_mtime']})\n")
    harness.print_flush(header)

    results = {}
    for op in ops:
        suite = SUITES[op]
        names = suite.providers(op, device, include_compile=not args.no_compile)
        if keep is not None:
            # Suites may offer providers that run only when named (optional_providers).
            optional = getattr(suite, "optional_providers", lambda *_: [])(op, device)
            names = [n for n in dict.fromkeys(names + list(optional)) if n in keep]
        if not names:  # an empty list would mean "every provider" to run_suite
            harness.print_flush(f"skipping {op}: none of its providers is in --providers")
            continue
        shapes = shapes_of[op]
        harness.print_flush(f"running {op} on {device}: providers {', '.join(names)}; "
                            f"shapes {', '.join('x'.join(map(str, s)) for s in shapes)}")
        start = time.perf_counter()
        options = {}
        if args.retry_busy and "busy_retries" in inspect.signature(suite.run_suite).parameters:
            options["busy_retries"] = args.retry_busy
        rows = suite.run_suite(op, device=device, shapes=shapes, dtypes=dtypes, provider_names=names,
                               warmup=warmup, rep=rep, budget_s=budget,
                               measure_memory=not args.no_memory, env=env,
                               log=harness.print_flush, **options)
        table = suite.tables(rows)
        csv_path = harness.write_csv(rows, args.out / f"{op}.csv")
        json_path = harness.write_json(rows, args.out / f"{op}.json", environment_info=env)
        (args.out / f"{op}.md").write_text(header + "\n" + table + "\n")
        harness.print_flush(f"\n{table}\n({time.perf_counter() - start:.0f} s; wrote {csv_path}, {json_path})\n")
        results[op] = {"rows": rows, "csv": csv_path, "json": json_path, "markdown": table}
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
