"""Every shipped Triton launch configuration compiles for sm_80 and sm_90 without spilling.

No GPU is needed: ``triton.compile`` with a ``GPUTarget`` lowers each kernel
to a cubin, and the triton wheel's ``cuobjdump -res-usage`` reads its
registers, stack, shared and local memory (``mixkernels/triton/_aot.py``).
This catches what the interpreter forgives (block shapes, dtype rules,
unsupported ops) and spills that would make a kernel slow on the GPU.

The kernels are compiled for every entry of each module's ``SHIPPED_CONFIGS``,
every input dtype (fp32, bf16, fp16) and every specialisation that
``aot_cases`` lists (alignment of strides and C or N, C == 1 or N == 1, target
dtype), with the ``num_stages`` and compile options (``enable_fp_fusion``)
the launchers use, all at once by a module fixture that spreads the compiles
over the cores. Triton's on-disk cache makes later runs fast.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

triton = pytest.importorskip(
    "triton", reason="triton is not importable: there are no Triton kernels to compile")
torch = pytest.importorskip("torch")

from mixkernels.triton import _aot  # noqa: E402
from mixkernels.triton import cutmix_batch, infinite_class_mixup, mask_mix, mix_batch  # noqa: E402
from mixkernels.triton import mixup_cross_entropy, soft_target_cross_entropy  # noqa: E402

MODULES = {
    "mixup_cross_entropy": mixup_cross_entropy,
    "soft_target_cross_entropy": soft_target_cross_entropy,
    "mix_batch": mix_batch,
    "cutmix_batch": cutmix_batch,
    "mask_mix": mask_mix,
    "infinite_class_mixup": infinite_class_mixup,
}
# The cross-entropy modules choose their launch by the number of classes alone.
CROSS_ENTROPY_MODULES = ["mixup_cross_entropy", "soft_target_cross_entropy"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ARCHS = (80, 90)
MAX_REGISTERS = 255


def _config_id(kernel_name, constexprs, num_warps):
    flags = "-".join(f"{k}_{int(v) if isinstance(v, bool) else v}" for k, v in constexprs.items())
    return f"{kernel_name}-{flags}-w{num_warps}"


def _launched_with(module, kernel_name, constexprs, num_warps, dtype_name):
    """Whether the module launches this config on inputs of this dtype (modules
    whose tiles differ by dtype say which with ``config_dtypes``)."""
    if not hasattr(module, "config_dtypes"):
        return True
    return DTYPES[dtype_name] in module.config_dtypes(kernel_name, constexprs, num_warps)


PARAMS = [
    pytest.param(module_name, kernel_name, constexprs, num_warps, dtype_name, arch,
                 id=f"{module_name}-{_config_id(kernel_name, constexprs, num_warps)}-"
                    f"{dtype_name}-sm{arch}")
    for module_name, module in MODULES.items()
    for kernel_name, constexprs, num_warps in module.SHIPPED_CONFIGS
    for dtype_name in DTYPES
    if _launched_with(module, kernel_name, constexprs, num_warps, dtype_name)
    for arch in ARCHS
]


def _key(module_name, kernel_name, constexprs, num_warps, dtype_name, arch):
    return (module_name, kernel_name, tuple(sorted(constexprs.items())), num_warps, dtype_name,
            arch)


@pytest.fixture(scope="module")
def compiled():
    """Every case of every parameter, compiled once, on all cores, in child processes.

    Batched because compiling is the slow part (a second or so each, a few
    hundred of them) and child processes are needed anyway when the suite
    runs under TRITON_INTERPRET (see mixkernels/triton/_aot.py).
    """
    # Jobs grouped by their compile options, which _aot.job does not carry:
    # the children read enable_fp_fusion's default from the environment.
    groups = {}
    for p in PARAMS:
        module_name, kernel_name, constexprs, num_warps, dtype_name, arch = p.values
        module = MODULES[module_name]
        for case in module.aot_cases(kernel_name, constexprs, DTYPES[dtype_name]):
            options = tuple(sorted(case.get("options", {}).items()))
            keys, labels, jobs = groups.setdefault(options, ([], [], []))
            keys.append(_key(*p.values))
            labels.append(case["label"])
            jobs.append(_aot.job(module.KERNELS[kernel_name], case["signature"],
                                 case["constexprs"], num_warps, arch, attrs=case["attrs"],
                                 num_stages=case.get("num_stages", 3)))
    results = {}
    for options, (keys, labels, jobs) in groups.items():
        with pytest.MonkeyPatch.context() as env:
            for name, value in options:
                if name != "enable_fp_fusion":
                    raise NotImplementedError(f"compile option {name} in the AOT test")
                env.setenv("TRITON_DEFAULT_FP_FUSION", "1" if value else "0")
            compiled_jobs = _aot.compile_many(jobs)
        for key, label, result in zip(keys, labels, compiled_jobs):
            results.setdefault(key, []).append((label, result))
    return results


@pytest.mark.parametrize(
    "module_name, kernel_name, constexprs, num_warps, dtype_name, arch", PARAMS)
def test_shipped_config_compiles_without_spills(compiled, module_name, kernel_name, constexprs,
                                                num_warps, dtype_name, arch):
    cases = compiled[_key(module_name, kernel_name, constexprs, num_warps, dtype_name, arch)]
    assert cases
    shared_limit = _aot.MAX_SHARED_BYTES_PER_BLOCK[arch]
    for label, usage in cases:
        where = (f"{module_name}.{kernel_name} {constexprs} num_warps={num_warps} "
                 f"{dtype_name} sm_{arch} [{label}]: {usage}")
        assert "error" not in usage, f"compile failed: {where}"
        assert usage["LOCAL"] == 0, f"local memory (register spills) in {where}"
        assert usage["STACK"] == 0, f"stack frame (spills) in {where}"
        assert usage["REG"] <= MAX_REGISTERS, f"too many registers in {where}"
        assert usage["SHARED"] + usage["DYNAMIC_SHARED"] <= shared_limit, \
            f"shared memory over the sm_{arch} limit of {shared_limit} bytes in {where}"
        module = MODULES[module_name]
        if hasattr(module, "uses_dot") and module.uses_dot(kernel_name, constexprs):
            # A matrix product must run on the tensor cores: warpgroup MMAs on
            # sm_90, warp MMAs on sm_80 (fp32 through tf32x3).
            if arch == 90:
                assert usage["WGMMA"] > 0 and usage["MMA_SYNC"] == 0, f"no wgmma in {where}"
            else:
                assert usage["MMA_SYNC"] > 0, f"no mma.sync in {where}"


@pytest.mark.parametrize("module_name", CROSS_ENTROPY_MODULES)
def test_launch_config_only_picks_shipped_configs(module_name):
    """The launchers never use a configuration the AOT test above did not compile."""
    module = MODULES[module_name]
    shipped = {(kernel_name, constexprs["BLOCK_C"], num_warps)
               for kernel_name, constexprs, num_warps in module.SHIPPED_CONFIGS}
    for kernel_name in module.KERNELS:
        for num_classes in (1, 2, 7, 10, 100, 127, 128, 129, 1000, 1024, 1025, 4096, 21843,
                            32000, 131072, 2**20):
            for dtype in DTYPES.values():
                cfg = module.launch_config(kernel_name, num_classes, dtype)
                assert (kernel_name, cfg["BLOCK_C"], cfg["num_warps"]) in shipped, \
                    (module_name, kernel_name, num_classes, dtype, cfg)
    with pytest.raises(ValueError, match="unknown kernel"):
        module.launch_config("sideways", 10, torch.float32)


def test_mix_batch_launch_config_only_picks_shipped_configs():
    """mix_batch's launchers (tiles by N, or by B in place) use only compiled
    configurations, and launch with the num_stages they were compiled with."""
    shipped = {(kernel_name, tuple(sorted(constexprs.items())), num_warps)
               for kernel_name, constexprs, num_warps in mix_batch.SHIPPED_CONFIGS}
    sizes = (1, 2, 15, 16, 17, 37, 63, 64, 65, 127, 128, 129, 255, 256, 257, 1000, 1024, 1025,
             4096, 150528, 2**20)
    for kernel_name in mix_batch.KERNELS:
        for n_rows in sizes:
            for n_cols in sizes:
                for dtype in DTYPES.values():
                    cfg = dict(mix_batch.launch_config(kernel_name, n_rows, n_cols, dtype))
                    num_warps, num_stages = cfg.pop("num_warps"), cfg.pop("num_stages")
                    key = (kernel_name, tuple(sorted(cfg.items())), num_warps)
                    assert key in shipped, (kernel_name, n_rows, n_cols, dtype, cfg)
                    for case in mix_batch.aot_cases(kernel_name, cfg, dtype):
                        assert case["num_stages"] == num_stages, (kernel_name, cfg)
    with pytest.raises(ValueError, match="unknown kernel"):
        mix_batch.launch_config("sideways", 10, 10, torch.float32)


def test_cutmix_batch_launch_config_only_picks_shipped_configs():
    """cutmix_batch's launchers (forward tiles by N, in place by B, either
    layout) use only compiled configurations, with their num_stages."""
    shipped = {(kernel_name, tuple(sorted(constexprs.items())), num_warps)
               for kernel_name, constexprs, num_warps in cutmix_batch.SHIPPED_CONFIGS}
    sizes = (1, 2, 15, 16, 17, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257, 1000, 3072,
             150528, 2**20)
    for kernel_name in cutmix_batch.KERNELS:
        for n_rows in sizes:
            for n_cols in sizes:
                for channels_last in (False, True):
                    cfg = dict(cutmix_batch.launch_config(kernel_name, n_rows, n_cols,
                                                          torch.float32, channels_last))
                    num_warps, num_stages = cfg.pop("num_warps"), cfg.pop("num_stages")
                    key = (kernel_name, tuple(sorted(cfg.items())), num_warps)
                    assert key in shipped, (kernel_name, n_rows, n_cols, channels_last, cfg)
                    for case in cutmix_batch.aot_cases(kernel_name, cfg, torch.bfloat16):
                        assert case["num_stages"] == num_stages, (kernel_name, cfg)
                        assert case["options"] == cutmix_batch.COMPILE_OPTIONS
    with pytest.raises(ValueError, match="unknown kernel"):
        cutmix_batch.launch_config("sideways", 10, 10, torch.float32, False)


_NO_FMA_CHECK = """
import sys
from mixkernels.triton import _aot, cutmix_batch as cb
import torch
constexprs = {"BLOCK_R": 2, "BLOCK_N": 1024, "CHANNELS_LAST": True}
case = cb.aot_cases("forward", constexprs, torch.float32)[0]
ptx = _aot.compile_kernel(cb.KERNELS["forward"], case["signature"], case["constexprs"], 8, 90,
                          attrs=case["attrs"], num_stages=case["num_stages"])["ptx"]
sys.exit(0 if "mul.rn.f32" in ptx and "fma" not in ptx else 1)
"""


def test_cutmix_batch_computes_without_fused_multiply_add():
    """Two products then a sum, as the CPU kernel and eager torch round it:
    compiled with the launchers' options, the PTX has no fma (with Triton's
    default fp fusion it would: w_self*own + w_src*partner contracts)."""
    assert cutmix_batch.COMPILE_OPTIONS == {"enable_fp_fusion": False}
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "0"
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    done = subprocess.run([sys.executable, "-c", _NO_FMA_CHECK], env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_mask_mix_launch_config_only_picks_shipped_configs():
    """mask_mix's launchers (pixel tiles by layout and C, the backward for
    each set of gradients, the mask-gradient reduction) use only compiled
    configurations, with their num_stages and compile options."""
    shipped = {(kernel_name, tuple(sorted(constexprs.items())), num_warps)
               for kernel_name, constexprs, num_warps in mask_mix.SHIPPED_CONFIGS}
    gradients = {"forward": [(True, True)], "mask_grad": [(True, True)],
                 "backward": [(True, True), (True, False), (False, True)]}
    for kernel_name in mask_mix.KERNELS:
        for channels in (1, 2, 3, 4, 5, 16, 17, 32, 64, 1000):
            for channels_last in (False, True):
                for bilinear in (False, True):
                    for needs_x_grad, needs_mask_grad in gradients[kernel_name]:
                        cfg = dict(mask_mix.launch_config(kernel_name, channels, channels_last,
                                                          bilinear, needs_x_grad, needs_mask_grad))
                        num_warps, num_stages = cfg.pop("num_warps"), cfg.pop("num_stages")
                        key = (kernel_name, tuple(sorted(cfg.items())), num_warps)
                        assert key in shipped, (kernel_name, channels, channels_last, bilinear, cfg)
                        for case in mask_mix.aot_cases(kernel_name, cfg, torch.float16):
                            assert case["num_stages"] == num_stages, (kernel_name, cfg)
                            assert case["options"] == mask_mix.COMPILE_OPTIONS


_MASK_MIX_NO_FMA_CHECK = """
import sys
from mixkernels.triton import _aot, mask_mix as mm
import torch
for kernel_name, constexprs, num_warps in mm.SHIPPED_CONFIGS:
    if not constexprs["BILINEAR"] or constexprs.get("CHANNELS_LAST"):
        continue
    case = mm.aot_cases(kernel_name, constexprs, torch.float32)[0]
    usage = _aot.compile_kernel(mm.KERNELS[kernel_name], case["signature"], case["constexprs"],
                                num_warps, 90, attrs=case["attrs"], num_stages=case["num_stages"])
    ptx = usage["ptx"]
    if "mul.rn.f32" not in ptx or "fma" in ptx:
        sys.exit(f"{kernel_name} {constexprs}: fused multiply-add in the PTX")
"""


def test_mask_mix_computes_without_fused_multiply_add():
    """The taps, the bilinear blends and the mixes are products then sums,
    rounded as the CPU kernel rounds them: compiled with the launchers'
    options, no kernel's PTX has an fma."""
    assert mask_mix.COMPILE_OPTIONS == {"enable_fp_fusion": False}
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "0"
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    done = subprocess.run([sys.executable, "-c", _MASK_MIX_NO_FMA_CHECK], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_infinite_class_mixup_launches_only_shipped_configs(monkeypatch):
    """Every launch of infinite_class_mixup_loss's forward and backward (both
    paths, the one-tile forward, small and large GEMM outputs, each axes,
    fp32 and half operands, bias on and off) uses a config compiled above for
    its dtype."""
    from mixkernels.ops.infinite_class_mixup import infinite_class_mixup_loss_triton

    icm = infinite_class_mixup
    shipped = {(kernel_name, tuple(sorted(constexprs.items())), num_warps): icm.config_dtypes(kernel_name,
                                                                                             constexprs, num_warps)
               for kernel_name, constexprs, num_warps in icm.SHIPPED_CONFIGS}
    launched = []
    real_launch = icm._launch

    def recording_launch(kernel_name, grid, *args, num_warps, **constexprs):
        launched.append((kernel_name, dict(constexprs), num_warps))
        return real_launch(kernel_name, grid, *args, num_warps=num_warps, **constexprs)

    monkeypatch.setattr(icm, "_launch", recording_launch)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no GPU and the Triton interpreter is off")
    # (B, D, C, axes): one tile; tiles through W~; through the logits with a
    # 128 x 128 GEMM (Z); through W~ with 128 x 128 GEMMs (dW~).
    cases = [(37, 31, 100, "both"), (100, 31, 300, "row"), (100, 31, 300, "col"), (300, 8, 260, "both"),
             (260, 256, 300, "both")]
    for dtype in (torch.float32, torch.bfloat16):
        for batch, features, num_classes, axes in cases:
            for bias in (True, False):
                torch.manual_seed(0)
                hidden = torch.randn(batch, features, device=device).to(dtype).requires_grad_()
                weight = torch.randn(num_classes, features, device=device).to(dtype).requires_grad_()
                b = torch.randn(num_classes, device=device).to(dtype).requires_grad_() if bias else None
                y_a = torch.randint(0, num_classes, (batch,), device=device)
                y_b = torch.randint(0, num_classes, (batch,), device=device)
                lam = torch.rand(batch, device=device)
                launched.clear()
                path = "factorised" if batch <= num_classes else "logits"
                loss, _, _, _ = infinite_class_mixup_loss_triton(hidden, weight, b, y_a, y_b, lam, axes, path,
                                                                 path == "logits")
                loss.sum().backward()
                assert launched
                for kernel_name, constexprs, num_warps in launched:
                    if kernel_name in icm._INTERPRETED_FLAG:
                        constexprs["INTERPRETED"] = False
                    key = (kernel_name, tuple(sorted(constexprs.items())), num_warps)
                    assert key in shipped, (dtype, batch, features, num_classes, key)
                    assert dtype in shipped[key], (dtype, key)


def test_aot_table_reports_every_gemm_config_on_the_tensor_cores():
    """benchmarks/aot_table.py (the README's table) lists each GEMM config of
    infinite_class_mixup for sm_80 and sm_90, without spills, on MMA instructions."""
    from benchmarks import aot_table

    text = aot_table.table("infinite_class_mixup", ("bf16",), gemm_only=True)
    rows = [line for line in text.splitlines()[2:] if line.startswith("|")]
    expected = [c for c in infinite_class_mixup.SHIPPED_CONFIGS if infinite_class_mixup.uses_dot(c[0], c[1])
                and torch.bfloat16 in infinite_class_mixup.config_dtypes(*c)]
    assert len(rows) == len(expected) > 0
    for line in rows:
        sm80, sm90 = line.split("|")[5:7]
        assert "mma.sync" in sm80 and "wgmma" in sm90 and " 0 / 0," in sm80 and " 0 / 0," in sm90, line
