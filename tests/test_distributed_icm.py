"""mixkernels.distributed.infinite_class_mixup_loss with real processes (gloo, CPU).

Each rank holds its slice of one global batch; every rank's loss must be the
single-process loss of the global batch, each rank's hidden.grad (and
per-sample lam.grad) its own rows of the global gradient, and the sums over
ranks of weight.grad, bias.grad and a shared lam's grad the global gradient.
One spawn per world size runs every case, so that start-up is paid once.
"""

import datetime
import itertools
import os
import sys
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import mixkernels
from mixkernels import distributed, reference

NUM_CLASSES, FEATURES = 6, 5


def global_inputs(sizes, lam_kind, dtype):
    """The global batch, the same on every rank (a fixed seed)."""
    gen = torch.Generator().manual_seed(1234)
    batch = sum(sizes)
    hidden = torch.randn(batch, FEATURES, generator=gen).to(dtype)
    weight = (0.7 * torch.randn(NUM_CLASSES, FEATURES, generator=gen)).to(dtype)
    bias = torch.randn(NUM_CLASSES, generator=gen).to(dtype)
    y_a = torch.randint(0, NUM_CLASSES, (batch,), generator=gen)
    y_b = y_a[torch.randperm(batch, generator=gen)]
    y_b[0] = y_a[0]  # a same-class pair
    lam = torch.rand(batch, generator=gen).to(dtype) if lam_kind == "per_sample" else torch.tensor(0.3, dtype=dtype)
    return hidden, weight, bias, y_a, y_b, lam


def run_case(rank, sizes, *, lam_kind, with_bias, axes, reduction, dtype, known_sizes):
    """This rank's loss and grads against the global reference; returns the mismatches."""
    hidden, weight, bias, y_a, y_b, lam = global_inputs(sizes, lam_kind, dtype)
    start = sum(sizes[:rank])
    mine = slice(start, start + sizes[rank])
    per_sample = lam_kind == "per_sample"

    h = hidden[mine].clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    b = bias.clone().requires_grad_(True) if with_bias else None
    lm = (lam[mine] if per_sample else lam).clone().requires_grad_(True)
    out = distributed.infinite_class_mixup_loss(h, w, y_a[mine], y_b[mine], lm, bias=b, axes=axes,
                                                reduction=reduction, batch_sizes=sizes if known_sizes else None)
    grad_output = (torch.linspace(-1.0, 2.0, out.numel(), dtype=out.dtype).reshape(out.shape)
                   if reduction == "none" else torch.tensor(0.37, dtype=out.dtype))
    out.backward(grad_output)

    gh = hidden.clone().requires_grad_(True)
    gw = weight.clone().requires_grad_(True)
    gb = bias.clone().requires_grad_(True) if with_bias else None
    glm = lam.clone().requires_grad_(True)
    expected = reference.infinite_class_mixup_loss(gh, gw, y_a, y_b, glm, gb, axes, reduction)
    expected.backward(grad_output)

    def summed(grad):
        total = grad.clone()
        dist.all_reduce(total)
        return total

    checks = [("loss", out, expected), ("hidden.grad", h.grad, gh.grad[mine]),
              ("sum weight.grad", summed(w.grad), gw.grad)]
    if with_bias:
        checks.append(("sum bias.grad", summed(b.grad), gb.grad))
    checks.append(("lam.grad", lm.grad, glm.grad[mine]) if per_sample else ("sum lam.grad", summed(lm.grad), glm.grad))
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    failures = []
    for name, got, want in checks:
        if got.shape != want.shape or not torch.allclose(got, want, rtol=tol, atol=tol):
            failures.append(f"rank {rank} sizes={sizes} lam={lam_kind} bias={with_bias} {axes} {reduction} "
                            f"{dtype}: {name} {got} != {want}")
    return failures


def cases():
    """Every axes x reduction with per-sample lam and a bias; the other lam and bias
    settings each with every axes and every reduction once."""
    grid = list(itertools.product(("both", "row", "col"), ("mean", "sum", "none")))
    settings = [("per_sample", True, grid)]
    diagonals = [[grid[(3 * i + (i + shift) % 3)] for i in range(3)] for shift in range(3)]
    settings += [(lam_kind, with_bias, diagonal) for (lam_kind, with_bias), diagonal in zip(
        (("per_batch", True), ("per_batch", False), ("per_sample", False)), diagonals)]
    for lam_kind, with_bias, pairs in settings:
        for axes, reduction in pairs:
            yield dict(lam_kind=lam_kind, with_bias=with_bias, axes=axes, reduction=reduction, dtype=torch.float64,
                       known_sizes=False)
    yield dict(lam_kind="per_sample", with_bias=True, axes="both", reduction="mean", dtype=torch.float32,
               known_sizes=True)


class FeaturesAndHead(torch.nn.Module):
    """A model whose forward returns the features; ICM reads its head ``fc`` directly."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.backbone = torch.nn.Sequential(torch.nn.Linear(3, FEATURES), torch.nn.Tanh())
        self.fc = torch.nn.Linear(FEATURES, NUM_CLASSES)

    def forward(self, x):
        return self.backbone(x)


def check_ddp_scaling(rank, sizes):
    """Under DistributedDataParallel (which averages gradients over the ranks), the loss
    times world_size gives every parameter exactly the global-batch gradient."""
    world_size = len(sizes)
    gen = torch.Generator().manual_seed(99)
    x = torch.randn(sum(sizes), 3, generator=gen, dtype=torch.float64)
    _, _, _, y_a, y_b, lam = global_inputs(sizes, "per_sample", torch.float64)

    single = FeaturesAndHead().double()
    mixkernels.infinite_class_mixup_loss(single(x), single.fc.weight, y_a, y_b, lam, bias=single.fc.bias).backward()

    ddp = torch.nn.parallel.DistributedDataParallel(FeaturesAndHead().double())
    mine = slice(sum(sizes[:rank]), sum(sizes[:rank + 1]))
    hidden = ddp(x[mine])  # through DDP's forward, which readies its gradient reduction
    head = ddp.module.fc
    loss = distributed.infinite_class_mixup_loss(hidden, head.weight, y_a[mine], y_b[mine], lam[mine], bias=head.bias)
    (loss * world_size).backward()
    failures = []
    for (name, p_single), p_ddp in zip(single.named_parameters(), ddp.module.parameters()):
        if not torch.allclose(p_ddp.grad, p_single.grad, rtol=1e-10, atol=1e-12):
            failures.append(f"rank {rank} sizes={sizes} DDP: {name}.grad {p_ddp.grad} != {p_single.grad}")
    return failures


def check_batch_sizes_rejected(rank, world_size):
    """Wrong batch_sizes raise on every rank alike, before any collective."""
    hidden, weight = torch.randn(2, FEATURES), torch.randn(NUM_CLASSES, FEATURES)
    y = torch.zeros(2, dtype=torch.int64)
    failures = []
    for sizes in ([2] * (world_size + 1), [3] * world_size, [2] * (world_size - 1) + [0]):
        try:
            distributed.infinite_class_mixup_loss(hidden, weight, y, y, 0.5, batch_sizes=sizes)
            failures.append(f"rank {rank}: batch_sizes={sizes} accepted")
        except ValueError as exc:
            if "batch_sizes" not in str(exc):
                failures.append(f"rank {rank}: batch_sizes={sizes}: {exc}")
    return failures


def worker(rank, world_size, init_file, size_sets, result_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=60))
    failures = []
    try:
        for sizes in size_sets:
            for case in cases():
                # A rank that fails keeps going, so that every rank runs the same collectives.
                failures += run_case(rank, sizes, **case)
            failures += check_ddp_scaling(rank, sizes)
        failures += check_batch_sizes_rejected(rank, world_size)
    except Exception:  # noqa: BLE001  (reported to the parent below)
        failures.append(f"rank {rank}: {traceback.format_exc()}")
    finally:
        dist.destroy_process_group()
    with open(f"{result_dir}/rank{rank}.txt", "w") as f:
        f.write("\n".join(failures))
    # The results are written: leave without the interpreter's teardown, where
    # gloo's background threads intermittently abort the process
    # ("terminate called without an active exception") after all work is done.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@pytest.mark.parametrize("size_sets", [[(3, 3), (2, 5)], [(2, 2, 2), (1, 4, 2)]],
                         ids=["2-ranks", "3-ranks"])
def test_global_batch_loss_and_gradients(tmp_path, size_sets):
    """Equal and unequal local batches; per-sample and per-batch lam; bias on and off;
    every axes and reduction; the sizes gathered or given."""
    world_size = len(size_sets[0])
    mp.spawn(worker, args=(world_size, str(tmp_path / "init"), size_sets, str(tmp_path)), nprocs=world_size,
             join=True)
    failures = [(tmp_path / f"rank{rank}.txt").read_text() for rank in range(world_size)]
    failures = [f for f in failures if f]
    assert not failures, "\n".join(failures)


def test_without_a_process_group_is_the_local_loss():
    gen = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(5, 4, generator=gen), torch.randn(7, 4, generator=gen)
    y_a, y_b, lam = torch.randint(0, 7, (5,), generator=gen), torch.randint(0, 7, (5,), generator=gen), 0.4
    assert not dist.is_initialized()
    torch.testing.assert_close(distributed.infinite_class_mixup_loss(hidden, weight, y_a, y_b, lam, axes="col"),
                               mixkernels.infinite_class_mixup_loss(hidden, weight, y_a, y_b, lam, axes="col"))
    with pytest.raises(IndexError, match="y_a"):
        distributed.infinite_class_mixup_loss(hidden, weight, y_a + 7, y_b, lam)
