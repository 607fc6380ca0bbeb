"""The examples are real trainings: run them briefly and check that they learn."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_digits_mixup_learns(capsys):
    pytest.importorskip("sklearn")
    demo = _load("digits_mixup")
    result = demo.main(["--epochs", "2", "--quiet", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "test accuracy" in out
    # Ten classes: chance is 0.1; two epochs of mixup training reach about 0.9.
    assert result["test_accuracy"] > 0.5
    # The fused loss must train the same model the two-CE loss would.
    assert result["max_loss_diff"] < 1e-4
    assert result["max_grad_diff"] < 1e-4
    assert result["loss_ms_mixkernels"] > 0 and result["loss_ms_two_ce"] > 0


def test_icm_digits_trains_all_three_methods(capsys):
    pytest.importorskip("sklearn")
    demo = _load("icm_digits")
    results = demo.main(["--epochs", "2", "--quiet", "--device", "cpu"])
    out = capsys.readouterr().out
    # The summary table: one row per method, and the agreement check's verdict.
    assert "test acc" in out
    for method in ("mixup", "icm", "ic-regmixup"):
        assert f"\n{method} " in out
    assert "dense form" in out and ": passed." in out
    assert set(results) == {"mixup", "icm", "ic-regmixup"}
    for r in results.values():
        assert all(0.0 <= acc <= 1.0 for acc in r["accuracy_per_epoch"])
        assert 0.0 <= r["test_accuracy"] <= 1.0
        # mixkernels' losses and gradients must match the dense form the method's code uses.
        assert r["agrees"]
        assert r["max_loss_diff"] < 1e-4 and r["max_grad_diff"] < 1e-4
        assert r["loss_ms_mixkernels"] > 0 and r["loss_ms_dense"] > 0
