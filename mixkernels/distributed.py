"""Infinite Class Mixup over the global batch of a ``torch.distributed`` job.

:func:`infinite_class_mixup_loss` contrasts every rank's outputs with every
rank's mixed classifiers: the global batch is the concatenation of the ranks'
batches in rank order, and the loss is exactly the single-process
:func:`mixkernels.infinite_class_mixup_loss` of that global batch.

How the work is split. Each rank mixes its own classifier rows
``W~_r = lerp(W[y_b], W[y_a], lam)`` (and ``b~_r``), all-gathers the features
``H`` and ``W~``, ``b~`` of the global batch, and computes only its share of
the (B x B) scores: its own rows ``H_r @ W~.T + b~`` (B_r x B) for the row
terms of its samples, and its own columns ``H @ W~_r.T + b~_r`` (B x B_r) for
their column terms. Each rank thus does 1/world_size of the work and memory
of the global loss; the per-rank sums are then all-reduced.

The gradient contract (so that it composes with DistributedDataParallel):

- on every rank the returned value is the global-batch loss;
- after ``backward()`` on every rank, each rank's ``hidden.grad`` equals its
  own rows of the global-batch gradient, and the *sum over ranks* of
  ``weight.grad`` (and ``bias.grad``, and of ``lam.grad`` for a lam shared by
  all ranks) equals the global-batch gradient.

The backward of a gather sums, for each rank's slice, the gradients every
rank computed for it (a reduce-scatter): rank s's row terms depend on rank
r's mixed classifiers and rank s's column terms on rank r's features. The
backward of the final all-reduce passes the gradient through unchanged, so
every rank must call ``backward()`` on the same loss (as in the contract);
with ``reduction="none"`` a rank may instead backpropagate only its own rows
of the returned per-sample loss, and the sum over ranks is then the global
gradient of the total of those rows.

With DDP, which *averages* gradients over the ``world_size`` ranks, every
parameter (the backbone's, reached through ``hidden``, and the classifier's)
ends up with the global-batch gradient divided by ``world_size``. Multiply the
loss by ``world_size`` before ``backward()`` to train on exactly the global
loss's gradient, e.g. when the ICM term is added to per-rank losses that DDP
averages correctly (IC-RegMixup's clean cross-entropy); with ICM alone, the
factor is only a learning-rate scale.

Per-rank batch sizes may differ (each at least 1): they are all-gathered
first (one small collective and a host synchronisation per call), or given
as ``batch_sizes``. Without an initialised process group the call is the
local loss (one process holds the whole batch).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.distributed as dist

from mixkernels import _backend, functional, reference
from mixkernels.functional import ICM_OP

__all__ = ["infinite_class_mixup_loss", "all_gather_rows", "all_reduce_sum"]


def _world(group) -> tuple[int, int]:
    return dist.get_rank(group), dist.get_world_size(group)


def _sizes_of_all_ranks(batch: int, device: torch.device, group) -> list[int]:
    mine = torch.tensor([batch], dtype=torch.int64, device=device)
    sizes = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(sizes, mine, group=group)
    return [int(s) for s in torch.cat(sizes).tolist()]


def _gather_padded(rows: torch.Tensor, sizes: Sequence[int], group) -> torch.Tensor:
    """The ranks' row blocks concatenated in rank order (blocks padded to the
    largest for the collective, the padding dropped)."""
    longest = max(sizes)
    if rows.shape[0] < longest:
        rows = torch.cat([rows, rows.new_zeros((longest - rows.shape[0],) + rows.shape[1:])])
    blocks = [torch.empty_like(rows) for _ in sizes]
    dist.all_gather(blocks, rows.contiguous(), group=group)
    return torch.cat([block[:n] for block, n in zip(blocks, sizes)])


def _reduce_scatter_rows(grad: torch.Tensor, sizes: Sequence[int], rank: int, group) -> torch.Tensor:
    """Sum over ranks of ``grad`` (rows of the global batch), then this rank's rows."""
    offsets = [0]
    for n in sizes:
        offsets.append(offsets[-1] + n)
    if dist.get_backend(group) == dist.Backend.NCCL and len(set(sizes)) == 1:
        mine = grad.new_empty((sizes[rank],) + grad.shape[1:])
        dist.reduce_scatter_tensor(mine, grad.contiguous(), group=group)
        return mine
    # gloo has no reduce-scatter; uneven blocks would need padding for NCCL's.
    total = grad.contiguous().clone()
    dist.all_reduce(total, group=group)
    return total[offsets[rank]:offsets[rank + 1]]


class _AllGatherRows(torch.autograd.Function):
    """All-gather of row blocks. Backward: each rank's slice gets the sum of
    the gradients every rank computed for it."""

    @staticmethod
    def forward(ctx, rows, sizes, rank, group):
        ctx.sizes, ctx.rank, ctx.group = sizes, rank, group
        return _gather_padded(rows, sizes, group)

    @staticmethod
    def backward(ctx, grad):
        return _reduce_scatter_rows(grad, ctx.sizes, ctx.rank, ctx.group), None, None, None


class _AllReduceSum(torch.autograd.Function):
    """All-reduce (sum) of a value every rank then treats as the same loss:
    the gradient passes through unchanged (see the module's contract)."""

    @staticmethod
    def forward(ctx, value, group):
        total = value.reshape(1).clone()
        dist.all_reduce(total, group=group)
        return total.reshape(value.shape)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _AllGatherOwnRowsGrad(torch.autograd.Function):
    """All-gather of per-sample values; backward keeps this rank's rows of the
    incoming gradient (each rank's loss rows are its own)."""

    @staticmethod
    def forward(ctx, rows, sizes, rank, group):
        ctx.start = sum(sizes[:rank])
        ctx.stop = ctx.start + sizes[rank]
        return _gather_padded(rows, sizes, group)

    @staticmethod
    def backward(ctx, grad):
        return grad[ctx.start:ctx.stop], None, None, None


def all_gather_rows(rows: torch.Tensor, *, group=None, batch_sizes: Optional[Sequence[int]] = None) -> torch.Tensor:
    """The ranks' ``rows`` (B_r, ...) concatenated in rank order, differentiable:
    the gradient of each rank's slice is summed over the ranks."""
    rank, _ = _world(group)
    sizes = list(batch_sizes) if batch_sizes is not None else _sizes_of_all_ranks(rows.shape[0], rows.device, group)
    return _AllGatherRows.apply(rows, sizes, rank, group)


def all_reduce_sum(value: torch.Tensor, *, group=None) -> torch.Tensor:
    """The sum over ranks of ``value``; its gradient passes through unchanged."""
    return _AllReduceSum.apply(value, group)


def _check_batch_sizes(batch_sizes, world_size: int, rank: int, batch: int) -> list[int]:
    sizes = list(batch_sizes)
    if len(sizes) != world_size or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in sizes):
        raise ValueError(f"batch_sizes must hold {world_size} positive ints (one per rank), got {batch_sizes!r}")
    if sizes[rank] != batch:
        raise ValueError(f"batch_sizes[{rank}] = {sizes[rank]} but this rank's hidden has {batch} rows")
    return sizes


def infinite_class_mixup_loss(hidden: torch.Tensor, weight: torch.Tensor, y_a, y_b: Optional[torch.Tensor] = None,
                              lam=None, *, bias: Optional[torch.Tensor] = None, group=None, axes: str = "both",
                              reduction: str = "mean", backend: str = "auto",
                              batch_sizes: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Infinite Class Mixup over the global batch of all ranks of ``group``.

    Each rank passes its local batch, as to :func:`mixkernels.infinite_class_mixup_loss`
    (same arguments and options; ``lam`` is this rank's, a float, 0-d or
    (B_r,) tensor); the contrast runs over the concatenation of every rank's
    batch in rank order. Every rank gets the global-batch loss: a scalar for
    ``"mean"`` (over the global batch) and ``"sum"``, the global (B,)
    per-sample loss for ``"none"``. Gradients follow the contract in this
    module's documentation; with DDP, multiply the loss by the world size
    for the exact global gradient.

    Args:
        group: the process group (default: the whole job).
        batch_sizes: every rank's local batch size in rank order, if known;
            saves the all-gather of the sizes (and its host synchronisation).

    Every rank must call this with the same options, like any collective.
    Without an initialised process group, this is the local loss.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return functional.infinite_class_mixup_loss(hidden, weight, y_a, y_b, lam, bias=bias, axes=axes,
                                                    reduction=reduction, backend=backend)
    y_a, y_b, lam = functional._unpack_mixed_targets(y_a, y_b, lam, "distributed.infinite_class_mixup_loss")
    device = hidden.device if isinstance(hidden, torch.Tensor) else None
    autocast_dtype = functional._autocast_dtype(device) if device is not None else None
    hidden, weight, bias = (functional._cast_for_autocast(t, autocast_dtype) for t in (hidden, weight, bias))
    functional._check_icm_arguments(hidden, weight, y_a, y_b, lam, bias, axes, reduction, "hidden")
    # Each rank's row and column blocks of S are computed with torch ops (the
    # single-device kernels compute a whole B x B contrast): "auto" runs them,
    # and a compiled backend asked for by name is a clear error.
    backend = _backend.resolve_backend(backend, device, op=f"distributed {ICM_OP}", implemented=())
    rank, world_size = _world(group)
    batch = hidden.shape[0]
    sizes = (_check_batch_sizes(batch_sizes, world_size, rank, batch) if batch_sizes is not None
             else _sizes_of_all_ranks(batch, device, group))
    start = sum(sizes[:rank])
    global_batch = sum(sizes)

    with functional._autocast_off(device, autocast_dtype):
        compute = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        w_mixed, b_mixed = reference.mixed_classifier(weight, y_a, y_b, lam, bias, compute)
        hidden_c = hidden.to(compute)
        own = torch.arange(batch, device=device)
        per_sample = hidden_c.new_zeros(batch)
        # Everything travels in the compute dtype, so that the gradients summed
        # over ranks are rounded to hidden's dtype once, as in the local loss.
        if axes in ("both", "row"):
            all_w_mixed = _AllGatherRows.apply(w_mixed, sizes, rank, group)
            rows = hidden_c @ all_w_mixed.T  # this rank's rows of S (B_r x B)
            if b_mixed is not None:
                rows = rows + _AllGatherRows.apply(b_mixed, sizes, rank, group)
            per_sample = per_sample + (torch.logsumexp(rows, dim=1) - rows[own, start + own])
        if axes in ("both", "col"):
            all_hidden = _AllGatherRows.apply(hidden_c, sizes, rank, group)
            cols = all_hidden @ w_mixed.T  # this rank's columns of S (B x B_r)
            if b_mixed is not None:  # cancels from the column term; kept so that S is S
                cols = cols + b_mixed
            per_sample = per_sample + (torch.logsumexp(cols, dim=0) - cols[start + own, own])

        if reduction == "none":
            loss = _AllGatherOwnRowsGrad.apply(per_sample, sizes, rank, group)
        else:
            loss = _AllReduceSum.apply(per_sample.sum(), group)
            if reduction == "mean":
                loss = loss / global_batch
    return loss.to(functional._loss_dtype(hidden.dtype, autocast_dtype))
