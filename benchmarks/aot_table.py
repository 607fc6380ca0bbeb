"""The ahead-of-time resource table of a Triton op module: every shipped config,
compiled for sm_80 and sm_90 without a GPU, as a markdown table.

    python -m benchmarks.aot_table --module infinite_class_mixup [--gemm-only]

For each (kernel, config, operand dtype, architecture): registers per
thread, stack and local memory (spills; 0 everywhere is what
tests/test_triton_aot.py enforces), shared memory, and the tensor-core
instructions in the PTX (``wgmma.mma_async`` on sm_90, ``mma.sync`` on
sm_80). Each cell shows the worst of the config's specialisations
(``aot_cases``: aligned, unaligned and unit leading dimensions). The same
compiles as the test, so triton's cache makes a second run quick.
"""

from __future__ import annotations

import argparse
import importlib

import torch

from mixkernels.triton import _aot

ARCHS = (80, 90)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Launch details that do not change the code path worth showing.
_HIDDEN = {"INTERPRETED", "GROUP_M"}


def _short(constexprs: dict) -> str:
    items = []
    for name, value in constexprs.items():
        if name in _HIDDEN:
            continue
        items.append(f"{name}={int(value) if isinstance(value, bool) else value}")
    return " ".join(items)


def table(module_name: str, dtype_names=("fp32", "bf16"), gemm_only: bool = False) -> str:
    module = importlib.import_module(f"mixkernels.triton.{module_name}")
    rows, jobs = [], []
    for kernel_name, constexprs, num_warps in module.SHIPPED_CONFIGS:
        if gemm_only and not (hasattr(module, "uses_dot") and module.uses_dot(kernel_name, constexprs)):
            continue
        dtypes = getattr(module, "config_dtypes", None)
        for dtype_name in dtype_names:
            dtype = DTYPES[dtype_name]
            if dtypes is not None and dtype not in dtypes(kernel_name, constexprs, num_warps):
                continue
            for arch in ARCHS:
                cases = module.aot_cases(kernel_name, constexprs, dtype)
                first = len(jobs)
                for case in cases:
                    jobs.append(_aot.job(module.KERNELS[kernel_name], case["signature"], case["constexprs"],
                                         num_warps, arch, attrs=case["attrs"],
                                         num_stages=case.get("num_stages", 3)))
                rows.append((kernel_name, constexprs, num_warps, dtype_name, arch, range(first, len(jobs))))
    results = _aot.compile_many(jobs)
    header = "| kernel | config | warps | dtype | " + " | ".join(
        f"sm_{arch}: registers, stack / local, shared KiB, MMA" for arch in ARCHS) + " |"
    lines = [header, "|---|---|--:|---|" + "---|" * len(ARCHS)]
    cells = {}
    for kernel_name, constexprs, num_warps, dtype_name, arch, span in rows:
        key = (kernel_name, _short(constexprs), num_warps, dtype_name)
        cells.setdefault(key, {})[arch] = _cell([results[i] for i in span])
    for (kernel_name, config, num_warps, dtype_name), by_arch in cells.items():
        lines.append(f"| {kernel_name} | {config} | {num_warps} | {dtype_name} | "
                     + " | ".join(by_arch.get(arch, "") for arch in ARCHS) + " |")
    return "\n".join(lines)


def _cell(usages: list) -> str:
    """The worst of a config's specialisations on one architecture."""
    errors = [u["error"] for u in usages if "error" in u]
    if errors:
        return f"compile error: {errors[0][:80]}"
    reg = max(u["REG"] for u in usages)
    stack, local = max(u["STACK"] for u in usages), max(u["LOCAL"] for u in usages)
    shared = max(u["SHARED"] + u["DYNAMIC_SHARED"] for u in usages) / 1024
    wgmma, mma = min(u["WGMMA"] for u in usages), min(u["MMA_SYNC"] for u in usages)
    mma_text = f"wgmma x{wgmma}" if wgmma else (f"mma.sync x{mma}" if mma else "none")
    return f"{reg}, {stack} / {local}, {shared:.0f}, {mma_text}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", default="infinite_class_mixup", help="a module of mixkernels.triton")
    parser.add_argument("--dtypes", default="fp32,bf16", help="operand dtypes, comma-separated")
    parser.add_argument("--gemm-only", action="store_true", help="only the configs that multiply (tl.dot)")
    args = parser.parse_args(argv)
    print(table(args.module, tuple(args.dtypes.split(",")), args.gemm_only))


if __name__ == "__main__":
    main()
