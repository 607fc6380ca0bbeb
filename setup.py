"""Builds ``mixkernels._C``: the C++ CPU kernels always, the CUDA kernels when possible.

The CUDA part is optional (as in xformers): the package imports and its CPU
paths work without it. CUDA sources are compiled when

* torch was built with CUDA (``torch.version.cuda``),
* ``CUDA_HOME`` names a toolkit with ``bin/nvcc`` and ``include/cuda_runtime.h``
  (torch guesses ``CUDA_HOME`` from any ``nvcc`` on ``PATH``, which may be a
  wrapper script outside the toolkit, so the guess is checked, not trusted),
* a GPU is visible or ``FORCE_CUDA=1`` is set,
* and ``MIXKERNELS_SKIP_CUDA=1`` is not set.

The CPU kernel files (``csrc/cpu/*_kernel.cpp``) are compiled once per CPU
capability (DEFAULT, AVX2, AVX512), each with its own ISA flags, into
separate namespaces; ``csrc/cpu/dispatch.h`` picks one at run time from
``at::native::get_cpu_capability()``, as ATen does. Nothing is built for the
build machine alone (no ``-march=native``).
"""

import glob
import os
import platform

from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))

# Flags per capability; the same sets ATen uses for its own per-capability kernels.
CPU_CAPABILITY_FLAGS = {
    "DEFAULT": [],
    "AVX2": ["-mavx2", "-mfma", "-mf16c", "-mbmi2"],
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c"],
}


def _cpu_capabilities():
    """The capabilities to build kernels for: x86-64 gets all three, others DEFAULT."""
    if platform.machine().lower() in ("x86_64", "amd64"):
        return CPU_CAPABILITY_FLAGS
    return {"DEFAULT": CPU_CAPABILITY_FLAGS["DEFAULT"]}


def _cuda_build_decision():
    """(build_cuda, reason): whether to compile the CUDA sources, and why not."""
    import torch
    from torch.utils import cpp_extension

    if os.environ.get("MIXKERNELS_SKIP_CUDA", "0") == "1":
        return False, "MIXKERNELS_SKIP_CUDA=1"
    if torch.version.cuda is None:
        return False, "torch was built without CUDA"
    cuda_home = os.environ.get("CUDA_HOME") or cpp_extension.CUDA_HOME
    if not cuda_home:
        return False, "no CUDA toolkit found (set CUDA_HOME)"
    if not os.path.isfile(os.path.join(cuda_home, "bin", "nvcc")):
        return False, f"CUDA_HOME={cuda_home} has no bin/nvcc"
    if not os.path.isfile(os.path.join(cuda_home, "include", "cuda_runtime.h")):
        return False, f"CUDA_HOME={cuda_home} has no include/cuda_runtime.h (not a toolkit)"
    if not (torch.cuda.is_available() or os.environ.get("FORCE_CUDA", "0") == "1"):
        return False, "no GPU visible and FORCE_CUDA is not 1"
    return True, ""


class MixkernelsBuildExtension(BuildExtension):
    """BuildExtension that compiles the CPU kernel files once per capability."""

    def build_extension(self, ext):
        kernel_sources = getattr(ext, "cpu_kernel_sources", [])
        if kernel_sources:
            cxx_flags = ext.extra_compile_args["cxx"] if isinstance(ext.extra_compile_args, dict) \
                else list(ext.extra_compile_args)
            objects = []
            for capability, isa_flags in _cpu_capabilities().items():
                flags = list(cxx_flags) + isa_flags + [
                    f"-DCPU_CAPABILITY={capability}", f"-DCPU_CAPABILITY_{capability}"]
                objects += self.compiler.compile(
                    kernel_sources,
                    output_dir=os.path.join(self.build_temp, "cpu_capability", capability),
                    include_dirs=ext.include_dirs,
                    extra_postargs={"cxx": flags, "nvcc": []},
                )
            ext.extra_objects = list(ext.extra_objects or []) + objects
        super().build_extension(ext)


def _extension():
    build_cuda, reason = _cuda_build_decision()
    if not build_cuda:
        print(f"mixkernels: building CPU kernels only ({reason})")

    def rel(paths):
        return sorted(os.path.relpath(p, ROOT) for p in paths)

    cpu_kernel_sources = [os.path.join(ROOT, p) for p in rel(glob.glob(os.path.join(ROOT, "csrc/cpu/*_kernel.cpp")))]
    sources = rel(glob.glob(os.path.join(ROOT, "csrc/*.cpp")))
    sources += [p for p in rel(glob.glob(os.path.join(ROOT, "csrc/cpu/*.cpp"))) if not p.endswith("_kernel.cpp")]
    # -fopenmp: at::parallel_for is inline code whose `#pragma omp parallel`
    # is ignored without it, and the kernels would run on one thread. The
    # OpenMP runtime resolves to the libgomp that torch itself loads.
    # -ffp-contract=off: the kernels compute what they write, so that a mix
    # rounds like eager PyTorch's `lam * x + (1 - lam) * x[perm]` (two products,
    # then a sum) and every capability build rounds alike; fused multiply-adds
    # are spelled out (at::vec::fmadd) where they are wanted.
    cxx_flags = ["-O3", "-fvisibility=hidden", "-fopenmp", "-ffp-contract=off"]
    link_flags = ["-fopenmp"]
    define_macros = []  # py_limited_api=True makes torch define Py_LIMITED_API itself
    include_dirs = [os.path.join(ROOT, "csrc", "include"), os.path.join(ROOT, "csrc")]
    if build_cuda:
        sources += rel(glob.glob(os.path.join(ROOT, "csrc/cuda/*.cpp")))
        sources += rel(glob.glob(os.path.join(ROOT, "csrc/cuda/*.cu")))
        define_macros.append(("MIXKERNELS_WITH_CUDA", "1"))
        nvcc_flags = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]
        if os.environ.get("MIXKERNELS_PTXAS_VERBOSE", "0") == "1":
            nvcc_flags.append("-Xptxas=-v")
        ext = CUDAExtension(
            "mixkernels._C", sources, include_dirs=include_dirs, define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags}, extra_link_args=link_flags,
            py_limited_api=True)
    else:
        ext = CppExtension(
            "mixkernels._C", sources, include_dirs=include_dirs, define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags, py_limited_api=True)
    ext.cpu_kernel_sources = cpu_kernel_sources
    return ext


setup(
    packages=find_packages(include=["mixkernels", "mixkernels.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": MixkernelsBuildExtension.with_options(no_python_abi_suffix=True)},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
