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
