"""Tolerances in flash-attention's style.

An implementation's error against an fp64 ground truth may be at most twice
the error that plain PyTorch (mixkernels.reference) has in the same dtype,
plus a small absolute term scaled to the values' magnitude (one rounding step
of the output dtype: the two can round an fp32 result to neighbouring values).
"""

import torch

# About one unit in the last place of each dtype, relative to the largest value.
RELATIVE_ATOL = {torch.float32: 2e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3}


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    both_nan = torch.isnan(a) & torch.isnan(b)
    diff = (a - b).abs().masked_fill(both_nan, 0.0)
    return float(diff.max()) if diff.numel() else 0.0


def assert_matches_ground_truth(actual, baseline, truth, dtype, what: str, scale_floor: float = 1e-3):
    """``actual`` and ``baseline`` (same dtype) against ``truth`` (fp64).

    ``scale_floor``: the magnitude the absolute term is relative to when the
    true values are all (near) zero, e.g. the per-row incoming gradient.
    """
    assert actual.shape == truth.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(truth.shape)}"
    assert actual.dtype == baseline.dtype, f"{what}: dtype {actual.dtype} != {baseline.dtype}"
    assert torch.isnan(actual).eq(torch.isnan(truth)).all(), f"{what}: NaN pattern differs"
    scale = float(truth.detach().double().abs().nan_to_num(0.0).max()) if truth.numel() else 0.0
    err = max_error(actual, truth)
    baseline_err = max_error(baseline, truth)
    bound = 2.0 * baseline_err + RELATIVE_ATOL[dtype] * max(scale, scale_floor)
    assert err <= bound, f"{what}: error {err:.3e} > bound {bound:.3e} (plain PyTorch's error {baseline_err:.3e})"
