"""Ahead-of-time compilation of Triton kernels, for checking them without a GPU.

``triton.compile`` with a ``GPUTarget`` needs no GPU: it lowers a kernel to
PTX and, through the ``ptxas`` in the triton wheel, to a cubin. The wheel's
``cuobjdump -res-usage`` then reads the registers, stack, static shared and
local (spill) memory of the cubin. The tests use this to check every shipped
launch configuration for sm_80 and sm_90.

Compiling needs a process in which ``TRITON_INTERPRET`` was off when triton
was imported: under the interpreter, ``@triton.jit`` makes interpreter
functions of triton's own library (``tl.max``, ``tl.sum``, ``tl.cdiv`` are
jit functions), which the code generator cannot lower. The test suite turns
the interpreter on when there is no GPU, so in such a process
:func:`compile_kernel` and :func:`compile_many` run the compiler in child
processes with the interpreter off (``python -m mixkernels.triton._aot``).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton import knobs

__all__ = [
    "compile_kernel",
    "compile_many",
    "job",
    "cuobjdump_path",
    "MAX_SHARED_BYTES_PER_BLOCK",
    "specialisations",
]

# Opt-in maximum of shared memory per block (bytes), static + dynamic, per
# compute capability: A100 (sm_80) 163 KiB, sm_86/sm_89 99 KiB, H100 (sm_90) 227 KiB.
MAX_SHARED_BYTES_PER_BLOCK = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}

_RES_USAGE = re.compile(r"\b(REG|STACK|SHARED|LOCAL):(\d+)")


def cuobjdump_path() -> Path:
    """The ``cuobjdump`` shipped in the triton wheel."""
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not path.is_file():
        raise FileNotFoundError(f"cuobjdump not found at {path}")
    return path


def _kernel_ref(fn) -> tuple[str, str]:
    # (module, name) of a @triton.jit kernel, JITFunction or InterpretedFunction;
    # a child process imports the module to find the kernel again.
    inner = getattr(fn, "fn", None)
    if inner is None:
        raise TypeError(f"not a Triton kernel: {fn!r}")
    return inner.__module__, inner.__name__


def _compile_here(module: str, name: str, signature: dict, constexprs: dict, num_warps: int,
                  arch: int, attrs: dict | None, num_stages: int, with_ptx: bool) -> dict:
    """Compile in this process (the interpreter must be off); see compile_kernel."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    fn = getattr(importlib.import_module(module), name)
    if not isinstance(fn, JITFunction):
        raise RuntimeError(f"{module}.{name} is not a JITFunction here (TRITON_INTERPRET on "
                           "when it was imported?)")
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    # num_warps (and num_stages) go in the options dict, parsed into the
    # backend's CUDAOptions; triton.compile has no num_warps keyword.
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})
    if compiled.metadata.num_warps != num_warps:
        raise AssertionError(f"asked for {num_warps} warps, compiled with "
                             f"{compiled.metadata.num_warps}")
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "kernel.cubin")
        with open(cubin, "wb") as f:
            f.write(compiled.asm["cubin"])
        out = subprocess.run([str(cuobjdump_path()), "-res-usage", cubin], check=True,
                             capture_output=True, text=True).stdout
    usage = {k: int(v) for k, v in _RES_USAGE.findall(out)}
    missing = {"REG", "STACK", "SHARED", "LOCAL"} - usage.keys()
    if missing:
        raise RuntimeError(f"cuobjdump output lacks {sorted(missing)}:\n{out}")
    usage["DYNAMIC_SHARED"] = int(compiled.metadata.shared)
    # Tensor-core instructions in the PTX: warpgroup MMAs (sm_90) and warp MMAs (sm_80).
    ptx = compiled.asm["ptx"]
    usage["WGMMA"] = len(re.findall(r"\bwgmma\.mma_async\b", ptx))
    usage["MMA_SYNC"] = len(re.findall(r"\bmma\.sync\b", ptx))
    if with_ptx:
        usage["ptx"] = compiled.asm["ptx"]
    return usage


def _job(fn, signature, constexprs, num_warps, arch, attrs=None, num_stages=3) -> dict:
    module, name = _kernel_ref(fn)
    return {"module": module, "name": name, "signature": dict(signature),
            "constexprs": dict(constexprs), "num_warps": int(num_warps), "arch": int(arch),
            # JSON has no tuple keys: attrs {(i,): [...]} travel as [[i], [...]] pairs.
            "attrs": [[list(k), v] for k, v in (attrs or {}).items()],
            "num_stages": int(num_stages)}


def _run_job(job: dict, with_ptx: bool) -> dict:
    attrs = {tuple(k): v for k, v in job["attrs"]}
    return _compile_here(job["module"], job["name"], job["signature"], job["constexprs"],
                         job["num_warps"], job["arch"], attrs, job["num_stages"], with_ptx)


def _can_compile_here() -> bool:
    return not knobs.runtime.interpret


def compile_kernel(fn, signature: dict, constexprs: dict, num_warps: int, arch: int,
                   attrs: dict | None = None, num_stages: int = 3) -> dict:
    """Compile ``fn`` for ``sm_<arch>`` and return its resource use.

    ``signature`` maps every argument name to a Triton type ("*fp32", "i32",
    "constexpr", ...); ``constexprs`` gives the constexpr values; ``attrs``
    optionally maps ``(arg_index,)`` to specialisations such as
    ``[["tt.divisibility", 16]]`` (what the JIT adds for 16-divisible
    pointers and integers).

    Returns ``{"REG", "STACK", "SHARED", "LOCAL"}`` as read by
    ``cuobjdump -res-usage`` (SHARED is static shared memory), plus
    ``"DYNAMIC_SHARED"``, the shared memory Triton requests at launch
    (``metadata.shared``: reductions and layout conversions use it),
    ``"WGMMA"`` and ``"MMA_SYNC"``, the number of ``wgmma.mma_async`` and
    ``mma.sync`` instructions in the PTX (tensor cores), and, when compiled in
    this process, ``"ptx"``.
    """
    job = _job(fn, signature, constexprs, num_warps, arch, attrs, num_stages)
    if _can_compile_here():
        return _run_job(job, with_ptx=True)
    (result,) = compile_many([job], workers=1)
    if "error" in result:
        raise RuntimeError(result["error"])
    return result


def compile_many(jobs: list, workers: int | None = None) -> list[dict]:
    """Compile many kernels in ``workers`` child processes; results in job order.

    Each job is a dict made by :func:`job`. A failed
    compile gives ``{"error": message}`` in its place instead of raising, so
    one bad kernel does not hide the others. The children run with
    ``TRITON_INTERPRET`` unset and share triton's on-disk cache, so a second
    run only reads cubins back.
    """
    if not jobs:
        return []
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # The children import the kernels' modules: give them this process's path.
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    results: list = [None] * len(jobs)
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for w in range(workers):
            indices = list(range(w, len(jobs), workers))
            job_file = os.path.join(tmp, f"jobs{w}.json")
            out_file = os.path.join(tmp, f"results{w}.json")
            with open(job_file, "w") as f:
                json.dump([jobs[i] for i in indices], f)
            proc = subprocess.Popen([sys.executable, "-m", __name__, job_file, out_file],
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)
            procs.append((proc, indices, out_file))
        for proc, indices, out_file in procs:
            log, _ = proc.communicate()
            if proc.returncode != 0 or not os.path.exists(out_file):
                raise RuntimeError(f"AOT compile worker failed ({proc.returncode}):\n{log}")
            with open(out_file) as f:
                for i, result in zip(indices, json.load(f)):
                    results[i] = result
    return results


def job(fn, signature: dict, constexprs: dict, num_warps: int, arch: int,
        attrs: dict | None = None, num_stages: int = 3) -> dict:
    """A JSON-able description of one compile, for :func:`compile_many`."""
    return _job(fn, signature, constexprs, num_warps, arch, attrs, num_stages)


def specialisations(sig: dict, size_args: list, constexprs: dict, with_unit_c: bool) -> list:
    """The argument specialisations the JIT would compile for: 16-divisible
    pointers and sizes, 16-divisible pointers only, and C == 1 (an integer 1
    becomes a constant) when ``with_unit_c``."""
    names = list(sig)
    pointers = [n for n, ty in sig.items() if ty.startswith("*")]

    def divisible(args):
        return {(names.index(n),): [["tt.divisibility", 16]] for n in args}

    cases = [
        {"label": "aligned", "signature": sig, "attrs": divisible(pointers + size_args),
         "constexprs": dict(constexprs)},
        {"label": "unaligned", "signature": sig, "attrs": divisible(pointers),
         "constexprs": dict(constexprs)},
    ]
    if with_unit_c:
        unit = {n: 1 for n in size_args}
        cases.append({"label": "C=1", "signature": {**sig, **{n: "constexpr" for n in unit}},
                      "attrs": divisible(pointers), "constexprs": {**constexprs, **unit}})
    return cases


def _main(argv: list[str]) -> int:
    job_file, out_file = argv
    if not _can_compile_here():
        print("TRITON_INTERPRET is on in the AOT worker", file=sys.stderr)
        return 2
    with open(job_file) as f:
        jobs = json.load(f)
    results = []
    for j in jobs:
        try:
            results.append(_run_job(j, with_ptx=False))
        except Exception as e:  # reported per job by compile_many's caller
            results.append({"error": f"{type(e).__name__}: {e}"})
    with open(out_file, "w") as f:
        json.dump(results, f)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
