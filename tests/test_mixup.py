"""mixkernels.Mixup against timm's Mixup itself.

timm draws its parameters with numpy; mixkernels draws them as tensors. To
compare the mixing and the targets, each test seeds numpy, lets timm's own
parameter functions make the draws in the order timm's ``__call__`` makes
them, turns those draws into ``MixupParams``, and checks that
``Mixup.mix(x, target, params)`` returns what ``timm.data.Mixup(x, target)``
returns from the same seed: exactly for fp32 batches, within one rounding for
bf16/fp16 (timm rounds each product to the batch's dtype, mixkernels once).
"""

import numpy as np
import pytest
import torch

import mixkernels
from mixkernels.mixup import MixupParams

timm_mixup = pytest.importorskip("timm.data.mixup")

# Triton runs under the interpreter on CPU tensors without a GPU.
BACKENDS = ["torch", "cpu"] + (["triton"] if not torch.cuda.is_available() else [])
CONFIGS = [
    dict(mixup_alpha=1.0, cutmix_alpha=0.0),
    dict(mixup_alpha=0.0, cutmix_alpha=1.0),
    dict(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5),
    dict(mixup_alpha=0.8, cutmix_alpha=1.0, cutmix_minmax=(0.2, 0.8)),
    dict(mixup_alpha=0.0, cutmix_alpha=1.0, correct_lam=False),
    dict(mixup_alpha=0.4, cutmix_alpha=0.0, prob=0.5, label_smoothing=0.0),
]


def timm_draws_as_params(timm_obj, mode, batch, height, width):
    """Make timm's draws, in the order timm's __call__ makes them, and return
    them as MixupParams for mixkernels (numpy must be seeded by the caller)."""
    perm = torch.arange(batch - 1, -1, -1)
    shape = (3, height, width)
    if mode == "batch":
        lam, use_cutmix = timm_obj._params_per_batch()
        mix_lam, box = lam, (0, 0, 0, 0)
        cut = use_cutmix and lam != 1.0
        if cut:
            box, lam = timm_mixup.cutmix_bbox_and_lam((batch,) + shape, lam, ratio_minmax=timm_obj.cutmix_minmax,
                                                      correct_lam=timm_obj.correct_lam)
            box = tuple(int(v) for v in box)
        return MixupParams(float(lam), float(mix_lam), torch.full((batch,), bool(cut)),
                           torch.tensor([box] * batch, dtype=torch.int64), perm)
    n = batch // 2 if mode == "pair" else batch
    lam_draw, use_cutmix = timm_obj._params_per_elem(n)
    lam_final = lam_draw.copy()
    boxes = np.zeros((n, 4), dtype=np.int64)
    cut = np.zeros(n, dtype=bool)
    for i in range(n):
        if lam_draw[i] != 1.0 and use_cutmix[i]:
            box, lam_final[i] = timm_mixup.cutmix_bbox_and_lam(shape, lam_draw[i], ratio_minmax=timm_obj.cutmix_minmax,
                                                               correct_lam=timm_obj.correct_lam)
            boxes[i] = [int(v) for v in box]
            cut[i] = True
    if mode == "pair":  # sample B - 1 - i shares pair i's draw
        index = np.concatenate([np.arange(n), np.arange(n)[::-1]])
        lam_draw, lam_final, boxes, cut = lam_draw[index], lam_final[index], boxes[index], cut[index]
    return MixupParams(torch.from_numpy(np.ascontiguousarray(lam_final)), torch.from_numpy(np.ascontiguousarray(lam_draw)),
                       torch.from_numpy(np.ascontiguousarray(cut)), torch.from_numpy(np.ascontiguousarray(boxes)), perm)


def run_both(config, mode, batch, dtype, backend, seed, layout="contiguous", height=12, width=10):
    torch.manual_seed(seed)
    x = torch.randn(batch, 3, height, width).to(dtype)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    target = torch.randint(0, 10, (batch,))
    kwargs = dict(config, mode=mode, num_classes=10)
    timm_obj = timm_mixup.Mixup(**kwargs)
    ours = mixkernels.Mixup(**kwargs, backend=backend)
    np.random.seed(seed)
    timm_x, timm_target = timm_obj(x.clone(), target)
    np.random.seed(seed)
    params = timm_draws_as_params(timm_mixup.Mixup(**kwargs), mode, batch, height, width)
    mixed = x.clone()
    storage = mixed.data_ptr()
    our_x, our_target = ours.mix(mixed, target, params)
    assert our_x is mixed and mixed.data_ptr() == storage, "Mixup must mix in place, as timm does"
    return timm_x, timm_target, our_x, our_target


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
@pytest.mark.parametrize("config", range(len(CONFIGS)))
def test_matches_timm_exactly_fp32(backend, mode, config):
    for seed in range(4):
        timm_x, timm_target, our_x, our_target = run_both(CONFIGS[config], mode, 8, torch.float32, backend, seed)
        torch.testing.assert_close(our_x, timm_x, rtol=0, atol=0)
        torch.testing.assert_close(our_target, timm_target, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_matches_timm_reduced_precision(mode, dtype):
    for seed in range(3):
        timm_x, timm_target, our_x, our_target = run_both(CONFIGS[2], mode, 6, dtype, "cpu", seed)
        # timm rounds lam * x and (1 - lam) * x_partner to the dtype before adding; mixkernels rounds once.
        torch.testing.assert_close(our_x, timm_x, rtol=2 * torch.finfo(dtype).eps, atol=2 * torch.finfo(dtype).eps)
        torch.testing.assert_close(our_target, timm_target, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_channels_last(mode):
    timm_x, _, our_x, _ = run_both(CONFIGS[2], mode, 8, torch.float32, "cpu", 5, layout="channels_last")
    torch.testing.assert_close(our_x, timm_x, rtol=0, atol=0)
    assert our_x.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_odd_batch_is_timms_error(mode):
    for mixer in (timm_mixup.Mixup(mode=mode), mixkernels.Mixup(mode=mode)):
        with pytest.raises(AssertionError, match="Batch size should be even"):
            mixer(torch.randn(5, 3, 4, 4), torch.randint(0, 10, (5,)))


def test_disabled_mixing_is_identity():
    mixer = mixkernels.Mixup(mixup_alpha=1.0, cutmix_alpha=1.0, mode="elem", num_classes=10, label_smoothing=0.0)
    mixer.mixup_enabled = False
    x = torch.randn(4, 3, 5, 5)
    target = torch.tensor([1, 2, 3, 4])
    out, dense = mixer(x.clone(), target)
    torch.testing.assert_close(out, x, rtol=0, atol=0)
    torch.testing.assert_close(dense, torch.nn.functional.one_hot(target, 10).float())


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
@pytest.mark.parametrize("pairing", ["reverse", "random"])
def test_sampled_call_is_consistent(mode, pairing):
    """A real draw (torch RNG): the mixed batch is the reference mix of its own
    params, lam matches the boxes, and sparse targets give the dense ones."""
    torch.manual_seed(0)
    mixer = mixkernels.Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, mode=mode, num_classes=10, pairing=pairing,
                             backend="cpu")
    x = torch.randn(8, 3, 16, 16)
    target = torch.randint(0, 10, (8,))
    params = mixer.sample(8, (16, 16))
    assert torch.equal(torch.sort(params.perm).values, torch.arange(8))
    if mode == "pair":
        assert torch.equal(params.perm[params.perm], torch.arange(8)), "pairs must be symmetric"
    out, dense = mixer.mix(x.clone(), target, params)
    expected, _ = mixkernels.Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, mode=mode, num_classes=10, pairing=pairing,
                                   backend="torch").mix(x.clone(), target, params)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    lam = torch.as_tensor(params.lam, dtype=torch.float64).expand(8)
    area = ((params.boxes[:, 1] - params.boxes[:, 0]) * (params.boxes[:, 3] - params.boxes[:, 2])).double()
    cut = params.use_cutmix
    torch.testing.assert_close(lam[cut], (1 - area / 256)[cut], rtol=1e-6, atol=1e-6)
    mixer.return_sparse = True
    _, sparse = mixer.mix(x.clone(), target, params)
    torch.testing.assert_close(sparse.dense(10, 0.1), dense.float(), rtol=1e-6, atol=1e-6)


def test_sparse_targets_feed_the_fused_loss():
    torch.manual_seed(0)
    mixer = mixkernels.Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, mode="elem", num_classes=10, label_smoothing=0.1,
                             return_sparse=True)
    x, target = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    params = mixer.sample(8, (8, 8))
    _, sparse = mixer.mix(x.clone(), target, params)
    mixer.return_sparse = False
    _, dense = mixer.mix(x.clone(), target, params)
    logits = torch.randn(8, 10)
    torch.testing.assert_close(mixkernels.mixup_cross_entropy(logits, sparse, label_smoothing=0.1),
                               mixkernels.soft_target_cross_entropy(logits, dense), rtol=1e-5, atol=1e-6)


def test_constructor_errors():
    with pytest.raises(ValueError, match="mode"):
        mixkernels.Mixup(mode="sample")
    with pytest.raises(ValueError, match="pairing"):
        mixkernels.Mixup(pairing="neighbours")
    with pytest.raises(AssertionError):
        mixkernels.Mixup(cutmix_minmax=(0.2,))
    with pytest.raises(AssertionError, match="One of mixup_alpha"):
        mixkernels.Mixup(mixup_alpha=0.0, cutmix_alpha=0.0, mode="elem")(torch.randn(2, 3, 4, 4), torch.tensor([0, 1]))
