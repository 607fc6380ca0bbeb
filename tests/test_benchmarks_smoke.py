"""The benchmark CLI's quick path end to end, and the CPU peak-memory probe."""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # ``benchmarks`` is a top-level folder of the checkout, not installed
    sys.path.insert(0, str(ROOT))

from benchmarks import bench_mask_mix as maskb  # noqa: E402
from benchmarks import bench_mix_batch as mixb  # noqa: E402
from benchmarks import bench_mixup_cross_entropy as mce  # noqa: E402
from benchmarks import harness, run  # noqa: E402


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    # torch.compile of the baselines costs 10-20 s per function on a small CPU; it has
    # its own test below, so this one checks the rest of the suite's plumbing.
    results = run.main(["--quick", "--no-compile", "--budget", "0.05", "--out", str(out)])
    return out, results


def _expected_providers(op, device):
    return set(mce.providers(op, device, include_compile=False))


@pytest.mark.parametrize("op", mce.OPS)
def test_quick_run_writes_csv_and_json(quick_results, op):
    out, results = quick_results
    device = mce.default_device()
    expected = _expected_providers(op, device)
    assert any(p.startswith("mixkernels-") for p in expected), expected

    with open(out / f"{op}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and set(rows[0]) == set(harness.ROW_FIELDS)
    speed = [r for r in rows if r["metric"] == "speed"]
    assert {r["provider"] for r in speed} == expected
    assert {r["dtype"] for r in speed} == {"float32", "bfloat16"}
    for r in speed:
        for key in ("y_median", "y_p20", "y_p80"):
            value = float(r[key])
            assert math.isfinite(value) and value > 0, (r["provider"], key, value)
        assert json.loads(r["env"])["torch"] == torch.__version__

    payload = json.loads((out / f"{op}.json").read_text())
    assert payload["environment"]["device"] == device
    json_speed = [r for r in payload["rows"] if r["metric"] == "speed"]
    assert {r["provider"] for r in json_speed} == expected
    assert all(math.isfinite(r["y_median"]) and r["y_median"] > 0 for r in json_speed)
    ratios = [r for r in payload["rows"] if r["metric"].startswith("speedup_vs_")]
    assert ratios and all(r["y_median"] > 0 for r in ratios)
    if device == "cpu" and harness.cpu_peak_rss_supported():
        assert any(r["metric"] == "memory" for r in payload["rows"])

    table = results[op]["markdown"]
    assert all(p in table for p in expected)
    assert (out / f"{op}.md").exists()


def test_mix_batch_quick_run(quick_results):
    out, results = quick_results  # --op all: the mix_batch suite ran too, without torch.compile
    device = mce.default_device()
    expected = set(mixb.providers(mixb.OP, device, include_compile=False))
    assert {"mixkernels-cpu", "mixkernels-cpu-inplace"} <= expected or device != "cpu", expected

    with open(out / f"{mixb.OP}.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert csv_rows and set(csv_rows[0]) == set(harness.ROW_FIELDS)
    timed = [r for r in csv_rows if r["metric"] in mixb.METRICS]
    got = {(r["provider"], r["metric"], r["dtype"]) for r in timed}
    want = {(p, m, d) for p in expected for m in mixb.metrics_of(p) for d in ("float32", "bfloat16")}
    assert got == want
    for r in timed:
        assert r["x_value"] == "x".join(map(str, mixb.QUICK_SHAPES[0]))
        for key in ("y_median", "y_p20", "y_p80"):
            value = float(r[key])
            assert math.isfinite(value) and value > 0, (r["provider"], r["metric"], key, value)
        extra = json.loads(r["extra"])
        assert extra["agrees"], (r["provider"], r["metric"], r["dtype"], extra["max_rel_error"])
        if r["provider"] == mixb.TIMM:
            assert extra["lam"] == mixb.TIMM_LAM and extra["lam_kind"].startswith("per-batch")

    rows = results[mixb.OP]["rows"]
    ratios = {(r["provider"], r["metric"], r["dtype"]): r["y_median"] for r in rows
              if r["metric"].startswith("speedup_vs_")}
    for provider in (p for p in expected if p.startswith("mixkernels-")):
        for metric in mixb.metrics_of(provider):
            assert ratios[provider, f"speedup_vs_eager_{metric}", "float32"] > 0
        if mixb.is_inplace(provider):
            assert ratios[provider, f"speedup_vs_{mixb.TIMM}_forward", "float32"] > 0
    if device == "cpu" and harness.cpu_peak_rss_supported():
        assert any(r["metric"] == "peak_memory_forward" for r in rows)

    table = results[mixb.OP]["markdown"]
    assert all(p in table for p in expected) and "forward + backward" in table


def test_mask_mix_quick_run(quick_results):
    out, results = quick_results  # --op all: the mask_mix suite ran too, without torch.compile
    device = mce.default_device()
    expected = set(maskb.providers(maskb.OP, device, include_compile=False))
    assert "mixkernels-cpu" in expected or device != "cpu", expected

    with open(out / f"{maskb.OP}.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    timed = [r for r in csv_rows if r["metric"] in maskb.METRICS]
    assert {(r["provider"], r["metric"], r["dtype"]) for r in timed} == {
        (p, m, d) for p in expected for m in maskb.METRICS for d in ("float32", "bfloat16")}
    for r in timed:
        assert r["x_value"] == "x".join(map(str, maskb.QUICK_SHAPES[0]))
        assert all(math.isfinite(float(r[k])) and float(r[k]) > 0 for k in ("y_median", "y_p20", "y_p80"))
        extra = json.loads(r["extra"])
        assert extra["agrees"], (r["provider"], r["metric"], r["dtype"], extra["max_rel_error"])
        assert extra["mask"] == list(maskb.mask_size(maskb.QUICK_SHAPES[0]))

    rows = results[maskb.OP]["rows"]
    ratios = {(r["provider"], r["metric"], r["dtype"]) for r in rows if r["metric"].startswith("speedup_vs_")}
    for provider in (p for p in expected if p.startswith("mixkernels-")):
        for metric in maskb.METRICS:
            assert (provider, f"speedup_vs_eager_{metric}", "float32") in ratios
    table = results[maskb.OP]["markdown"]
    assert all(p in table for p in expected) and "grads to x and the mask" in table


def test_shapes_are_read_by_each_suite(capsys):
    assert mixb.parse_shapes("64x3x224x224, 8x3x32x32") == ((64, 3, 224, 224), (8, 3, 32, 32))
    with pytest.raises(ValueError):
        mixb.parse_shapes("512x1000")
    with pytest.raises(SystemExit):  # one op named: a shape it cannot read is an error, before any run
        run.main(["--op", mixb.OP, "--shapes", "512x1000"])
    assert "BxCxHxW" in capsys.readouterr().err


def test_peak_memory_of_a_known_allocation():
    if not harness.cpu_peak_rss_supported():
        pytest.skip("this kernel cannot reset the peak RSS (/proc/self/clear_refs)")
    nbytes = 128 * 2**20

    def touch_128mb():
        t = torch.empty(nbytes // 4, dtype=torch.float32)
        t.fill_(1.0)  # resident only once written
        del t

    peak = harness.peak_memory_bytes(touch_128mb, "cpu")
    assert 0.9 * nbytes < peak < 1.25 * nbytes, peak / 2**20
    # Nothing allocated: nothing reported beyond noise.
    assert harness.peak_memory_bytes(lambda: None, "cpu") < 8 * 2**20


def test_measure_reports_quantiles():
    result = harness.measure(lambda: sum(range(1000)), device="cpu", warmup=1, rep=20)
    assert 0 < result["p20_ms"] <= result["median_ms"] <= result["p80_ms"]
    assert result["reps"] == 20 and result["num_threads"] == torch.get_num_threads()


def test_markdown_table_shape():
    text = harness.markdown_table(["a", "b"], [["x", 1.5], ["yy", 10]])
    lines = text.splitlines()
    assert len(lines) == 4 and all(line.startswith("|") and line.endswith("|") for line in lines)


# A cold torch.compile of the baselines (two losses, and mix_batch's and mask_mix's forward
# and forward + backward) takes about 30 s on 2 idle cores (a few seconds with a warm
# inductor cache); MIXKERNELS_SMOKE_COMPILE=0 skips it.
@pytest.mark.skipif(os.environ.get("MIXKERNELS_SMOKE_COMPILE", "1") == "0",
                    reason="MIXKERNELS_SMOKE_COMPILE=0")
def test_quick_run_with_torch_compile(tmp_path):
    results = run.main(["--quick", "--dtypes", "float32", "--no-memory",
                        "--providers", "eager-two-ce,timm-soft-target,eager,torch-compile",
                        "--budget", "0.05", "--out", str(tmp_path)])
    for op in mce.OPS:
        rows = [r for r in results[op]["rows"] if r["metric"] == "speed"]
        eager_name = mce.EAGER_BASELINE[op]
        assert {r["provider"] for r in rows} == {eager_name, "torch-compile"}
        assert all(math.isfinite(r["y_median"]) and r["y_median"] > 0 for r in rows)
        compiled = next(r for r in rows if r["provider"] == "torch-compile")
        eager = next(r for r in rows if r["provider"] == eager_name)
        assert compiled["extra"]["loss"] == pytest.approx(eager["extra"]["loss"], rel=1e-4)
    rows = [r for r in results[mixb.OP]["rows"] if r["metric"] in mixb.METRICS]
    assert {(r["provider"], r["metric"]) for r in rows} == {
        (p, m) for p in (mixb.EAGER, mixb.COMPILE) for m in mixb.METRICS}
    assert all(math.isfinite(r["y_median"]) and r["y_median"] > 0 and r["extra"]["agrees"] for r in rows)
    rows = [r for r in results[maskb.OP]["rows"] if r["metric"] in maskb.METRICS]
    assert {(r["provider"], r["metric"]) for r in rows} == {
        (p, m) for p in (maskb.EAGER, maskb.COMPILE) for m in maskb.METRICS}
    assert all(math.isfinite(r["y_median"]) and r["y_median"] > 0 and r["extra"]["agrees"] for r in rows)


def test_infinite_class_mixup_quick_run(quick_results):
    from benchmarks import bench_infinite_class_mixup as icmb

    out, results = quick_results  # --op all: the ICM suite ran too, without torch.compile
    device = mce.default_device()
    expected = set(icmb.providers(icmb.OP, device, include_compile=False))
    assert {icmb.DENSE, icmb.FACTORISED} <= expected
    assert {p[len("mixkernels-"):] for p in expected if p.startswith("mixkernels-")} <= set(icmb.ICM_BACKENDS)

    with open(out / f"{icmb.OP}.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert csv_rows and set(csv_rows[0]) == set(harness.ROW_FIELDS)
    speed = [r for r in csv_rows if r["metric"] == "speed"]
    assert {(r["provider"], r["dtype"]) for r in speed} == {(p, d) for p in expected for d in ("float32", "bfloat16")}
    for r in speed:
        assert r["x_name"] == "BxDxC" and r["x_value"] == "x".join(map(str, icmb.QUICK_SHAPES[0]))
        assert all(math.isfinite(float(r[k])) and float(r[k]) > 0 for k in ("y_median", "y_p20", "y_p80"))
        extra = json.loads(r["extra"])
        assert extra["agrees"], (r["provider"], r["dtype"], extra["rel_errors"])
        assert set(extra["rel_errors"]) == {"loss", "hidden", "weight", "bias"}

    rows = results[icmb.OP]["rows"]
    ratios = {(r["provider"], r["metric"], r["dtype"]) for r in rows if r["metric"].startswith("speedup_vs_")}
    for provider in (p for p in expected if p.startswith("mixkernels-")):
        assert (provider, f"speedup_vs_{icmb.DENSE}", "float32") in ratios
    if device == "cpu" and harness.cpu_peak_rss_supported():
        assert {r["provider"] for r in rows if r["metric"] == "memory"} == expected
    table = results[icmb.OP]["markdown"]
    assert all(p in table for p in expected) and "grads to hidden, weight, bias" in table


def test_infinite_class_mixup_shapes():
    from benchmarks import bench_infinite_class_mixup as icmb

    assert icmb.parse_shapes("128x512x100, 2048x1024x21843") == ((128, 512, 100), (2048, 1024, 21843))
    for other_suites_shape in ("512x1000", "64x3x224x224"):
        with pytest.raises(ValueError):
            icmb.parse_shapes(other_suites_shape)
    with pytest.raises(ValueError):  # and theirs reject this suite's
        mce.parse_shapes("128x512x100")
    assert icmb.bench_shapes(quick=True) == icmb.QUICK_SHAPES
    assert icmb.GPU_ONLY_SHAPES[0] not in icmb.bench_shapes(quick=False, device="cpu")
    assert icmb.GPU_ONLY_SHAPES[0] in icmb.bench_shapes(quick=False, device="cuda")
    assert (4096, 2048, 1000) in icmb.bench_shapes(quick=False, device="cpu")


def test_infinite_class_mixup_forced_paths_run_only_when_named(tmp_path):
    """--providers mixkernels-cpu@factorised,mixkernels-cpu@logits times each path
    (what the "auto" rule rests on); without --providers they do not run."""
    from benchmarks import bench_infinite_class_mixup as icmb

    optional = icmb.optional_providers(icmb.OP, "cpu")
    assert "mixkernels-cpu@logits" in optional and "mixkernels-cpu@factorised" in optional
    assert not set(optional) & set(icmb.providers(icmb.OP, "cpu"))
    with pytest.raises(ValueError, match="path"):
        icmb.make_loss("mixkernels-cpu@diagonal")
    results = run.main(["--op", icmb.OP, "--device", "cpu", "--quick", "--no-compile", "--no-memory",
                        "--budget", "0.05", "--dtypes", "float32", "--providers",
                        "mixkernels-cpu@factorised,mixkernels-cpu@logits", "--out", str(tmp_path)])
    rows = [r for r in results[icmb.OP]["rows"] if r["metric"] == "speed"]
    assert {r["provider"] for r in rows} == {"mixkernels-cpu@factorised", "mixkernels-cpu@logits"}
    assert all(r["extra"]["agrees"] for r in rows)
