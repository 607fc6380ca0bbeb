"""Train a small network on scikit-learn's digits with mixup, Infinite Class Mixup and IC-RegMixup.

    python examples/icm_digits.py                   # all three methods, about 30 s on 2 idle CPU cores
    python examples/icm_digits.py --method icm --epochs 5

The network is an MLP feature extractor ``features`` followed by an
``nn.Linear`` classifier. Each step mixes the batch with a random partner
(``torch.randperm``) and one ``lam ~ Beta(alpha, alpha)`` per batch, and trains
on one of three losses:

- ``mixup``: ``mixkernels.mixup_cross_entropy`` of the mixed batch's C-way
  logits (alpha 0.2);
- ``icm``: ``mixkernels.InfiniteClassMixupLoss(classifier)`` of the mixed
  batch's features: each pair k gets the mixed classifier
  ``lam W[y_a_k] + (1 - lam) W[y_b_k]`` (bias alike), the B x B scores
  ``S = hidden @ W~.T + b~`` have the positives on the diagonal, and the loss
  is ``CE(S, arange(B)) + CE(S.T, arange(B))`` (alpha 0.2);
- ``ic-regmixup``: ``mixkernels.ic_regmixup_loss``: the clean batch's C-way
  cross-entropy plus ``gamma`` times ICM of the mixed batch, two forward passes
  (alpha 20).

Test accuracy is always the C-way argmax of the plain logits. ICM alone never
trains a C-way softmax, so its accuracy measures how well the contrastive
objective carries over to C-way prediction.

Each step also computes the same loss in the dense form the method's public
code uses, on the same detached features (so only the loss's forward and
backward are timed): the C-way logits ``Z = hidden @ W.T + b``, the dense
mixup targets ``Y~`` (B x C) built from one-hots, ``S = Z @ Y~.T``, and the
same two cross-entropies. The model is trained with mixkernels' gradient; the
two losses and their gradients (to the features and to the classifier's
weight and bias) are compared on every step. At the end a table gives each
method's test accuracy, median loss step time against the dense form and the
largest differences; the run then fails if any exceeded the tolerance.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

try:
    import mixkernels
except ImportError:  # run from a source checkout without installing: use the checkout's package
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import mixkernels

METHODS = ("mixup", "icm", "ic-regmixup")
# The method's README commands: 0.2 for Mixup and ICM, 20 for RegMixup and IC-RegMixup.
DEFAULT_ALPHA = {"mixup": 0.2, "icm": 0.2, "ic-regmixup": 20.0}
# Agreement of mixkernels with the dense form: max |difference| / max(1, max |dense value|),
# per loss and per gradient. Both are fp32 and differ only in summation order.
AGREEMENT_TOLERANCE = 1e-4
WARMUP_STEPS = 5  # the first calls pay one-time costs (kernel selection, allocations): not timed


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", choices=METHODS, default=None,
                   help="train with one method (default: all three, one after another)")
    p.add_argument("--epochs", type=int, default=80)
    p.add_argument("--backend", default="auto",
                   help='mixkernels backend: "auto", "torch", "cpu", "triton", "cuda"')
    p.add_argument("--alpha", type=float, default=None,
                   help="lam ~ Beta(alpha, alpha) (default: 0.2 for mixup and icm, 20 for ic-regmixup)")
    p.add_argument("--gamma", type=float, default=1.0, help="weight of the ICM term in ic-regmixup")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quiet", action="store_true", help="print only the final summary")
    return p.parse_args(argv)


def load_digits_split(seed: int, device):
    """The 1,797 8x8 digits, pixels scaled to [0, 1], a stratified 75/25 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.data.astype(np.float32) / 16.0
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    as_tensor = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    return as_tensor(x_tr), as_tensor(y_tr), as_tensor(x_te), as_tensor(y_te), int(y.max()) + 1


class FeaturesAndClassifier(nn.Module):
    """``classifier(features(x))``: ICM needs the features, evaluation the C-way logits."""

    def __init__(self, num_features: int, hidden: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Linear(num_features, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
        )
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


class MixedBatch(NamedTuple):
    x: torch.Tensor
    y: torch.Tensor
    x_mixed: torch.Tensor
    y_a: torch.Tensor
    y_b: torch.Tensor
    lam: float


def dense_mixup_targets(y_a, y_b, lam: float, num_classes: int, dtype) -> torch.Tensor:
    """``Y~ = lam * onehot(y_a) + (1 - lam) * onehot(y_b)``, (B, C)."""
    return (lam * F.one_hot(y_a, num_classes).to(dtype)
            + (1.0 - lam) * F.one_hot(y_b, num_classes).to(dtype))


def dense_icm_loss(hidden, weight, bias, y_a, y_b, lam: float) -> torch.Tensor:
    """ICM as the method's public code computes it: through the C-way logits and dense targets."""
    logits = hidden @ weight.T + bias
    targets = dense_mixup_targets(y_a, y_b, lam, weight.shape[0], logits.dtype)
    scores = logits @ targets.T
    positives = torch.arange(len(hidden), device=hidden.device)
    return F.cross_entropy(scores, positives) + F.cross_entropy(scores.T, positives)


def forward_outputs(method: str, model: FeaturesAndClassifier, batch: MixedBatch) -> list:
    """What the method's loss reads: the mixed batch's logits or features, plus the clean logits."""
    if method == "mixup":
        return [model(batch.x_mixed)]
    if method == "icm":
        return [model.features(batch.x_mixed)]
    return [model(batch.x), model.features(batch.x_mixed)]  # ic-regmixup: two forward passes


def mixkernels_loss(method: str, leaves: list, batch: MixedBatch, model: FeaturesAndClassifier,
                    icm_loss: mixkernels.InfiniteClassMixupLoss, args) -> torch.Tensor:
    """The method's loss through mixkernels; the ICM terms read the classifier's own parameters."""
    if method == "mixup":
        return mixkernels.mixup_cross_entropy(leaves[0], batch.y_a, batch.y_b, batch.lam, backend=args.backend)
    if method == "icm":
        return icm_loss(leaves[0], batch.y_a, batch.y_b, batch.lam)
    return mixkernels.ic_regmixup_loss(leaves[0], batch.y, leaves[1], model.classifier.weight,
                                       batch.y_a, batch.y_b, batch.lam, bias=model.classifier.bias,
                                       gamma=args.gamma, backend=args.backend)


def dense_loss(method: str, leaves: list, weight, bias, batch: MixedBatch, args) -> torch.Tensor:
    """The same loss in plain PyTorch with dense (B, C) mixup targets, as the method's public code."""
    if method == "mixup":
        logits = leaves[0]
        return F.cross_entropy(logits, dense_mixup_targets(batch.y_a, batch.y_b, batch.lam, logits.shape[1],
                                                           logits.dtype))
    if method == "icm":
        return dense_icm_loss(leaves[0], weight, bias, batch.y_a, batch.y_b, batch.lam)
    return (F.cross_entropy(leaves[0], batch.y)
            + args.gamma * dense_icm_loss(leaves[1], weight, bias, batch.y_a, batch.y_b, batch.lam))


@torch.no_grad()
def accuracy(model: nn.Module, x, y) -> float:
    model.eval()
    correct = (model(x).argmax(dim=1) == y).sum().item()
    model.train()
    return correct / len(y)


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _scaled_max_diff(value: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(max |value - reference|, that divided by max(1, max |reference|))."""
    diff = (value.detach() - reference.detach()).abs().max().item()
    return diff, diff / max(1.0, reference.detach().abs().max().item())


def train(method: str, args: argparse.Namespace) -> dict:
    """Train with one method; return its test accuracy, loss step times and agreement with the dense form."""
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    alpha = DEFAULT_ALPHA[method] if args.alpha is None else args.alpha
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    x_tr, y_tr, x_te, y_te, num_classes = load_digits_split(args.seed, device)
    model = FeaturesAndClassifier(x_tr.shape[1], args.hidden, num_classes).to(device)
    icm_loss = mixkernels.InfiniteClassMixupLoss(model.classifier, backend=args.backend)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, args.epochs))
    uses_classifier = method != "mixup"  # the ICM losses take the classifier's weight and bias themselves

    def mixkernels_step(leaves, batch):
        loss = mixkernels_loss(method, leaves, batch, model, icm_loss, args)
        loss.backward()
        sync()
        return loss

    def dense_step(leaves, weight, bias, batch):
        loss = dense_loss(method, leaves, weight, bias, batch, args)
        loss.backward()
        sync()
        return loss

    mixkernels_ms, dense_ms = [], []
    max_loss_diff = max_grad_diff = max_scaled_diff = 0.0
    accuracies = []
    step = 0
    start = time.perf_counter()
    for epoch in range(args.epochs):
        order = torch.randperm(len(x_tr), device=device)
        epoch_loss = 0.0
        for i in range(0, len(order), args.batch_size):
            idx = order[i:i + args.batch_size]
            x, y = x_tr[idx], y_tr[idx]
            lam = float(rng.beta(alpha, alpha))
            perm = torch.randperm(len(idx), device=device)
            batch = MixedBatch(x, y, lam * x + (1.0 - lam) * x[perm], y, y[perm], lam)

            outputs = forward_outputs(method, model, batch)
            # The loss is timed on its own: detached leaves hold the gradients of the
            # network's outputs, which are then pushed through the network.
            leaves = [o.detach().requires_grad_(True) for o in outputs]
            dense_leaves = [o.detach().requires_grad_(True) for o in outputs]
            # mixkernels' loss writes the classifier's gradient straight into its parameters;
            # the dense form gets copies, so the two gradients can be compared.
            weight = model.classifier.weight.detach().clone().requires_grad_(True)
            bias = model.classifier.bias.detach().clone().requires_grad_(True)
            opt.zero_grad(set_to_none=True)
            sync()
            # Alternate which loss runs first so neither always gets the warmer cache.
            if step % 2 == 0:
                loss, t_mixkernels = _timed(lambda: mixkernels_step(leaves, batch))
                loss_dense, t_dense = _timed(lambda: dense_step(dense_leaves, weight, bias, batch))
            else:
                loss_dense, t_dense = _timed(lambda: dense_step(dense_leaves, weight, bias, batch))
                loss, t_mixkernels = _timed(lambda: mixkernels_step(leaves, batch))
            if step >= WARMUP_STEPS:
                mixkernels_ms.append(t_mixkernels * 1e3)
                dense_ms.append(t_dense * 1e3)

            pairs = [(loss, loss_dense)] + [(a.grad, b.grad) for a, b in zip(leaves, dense_leaves)]
            if uses_classifier:
                pairs += [(model.classifier.weight.grad, weight.grad), (model.classifier.bias.grad, bias.grad)]
            diffs = [_scaled_max_diff(value, reference) for value, reference in pairs]
            max_scaled_diff = max([max_scaled_diff] + [scaled for _, scaled in diffs])
            max_loss_diff = max(max_loss_diff, diffs[0][0])
            max_grad_diff = max([max_grad_diff] + [d for d, _ in diffs[1:]])

            torch.autograd.backward(outputs, [leaf.grad for leaf in leaves])
            opt.step()
            epoch_loss += loss.item() * len(idx)
            step += 1
        sched.step()
        accuracies.append(accuracy(model, x_te, y_te))
        if not args.quiet:
            print(f"{method:11s} epoch {epoch + 1:3d}/{args.epochs}  train loss {epoch_loss / len(x_tr):.4f}  "
                  f"test acc {accuracies[-1]:.4f}  ({time.perf_counter() - start:.1f} s)", flush=True)
    train_s = time.perf_counter() - start

    mixkernels_med = statistics.median(mixkernels_ms) if mixkernels_ms else float("nan")
    dense_med = statistics.median(dense_ms) if dense_ms else float("nan")
    return {
        "method": method,
        "alpha": alpha,
        "test_accuracy": accuracies[-1] if accuracies else accuracy(model, x_te, y_te),
        "accuracy_per_epoch": accuracies,
        "epochs": args.epochs,
        "steps": step,
        "train_seconds": train_s,
        "loss_ms_mixkernels": mixkernels_med,
        "loss_ms_dense": dense_med,
        "speedup": dense_med / mixkernels_med if mixkernels_med > 0 else float("nan"),
        "max_loss_diff": max_loss_diff,
        "max_grad_diff": max_grad_diff,
        "agrees": max_scaled_diff <= AGREEMENT_TOLERANCE,
        "num_classes": num_classes,
    }


def format_summary(results: list, args: argparse.Namespace) -> str:
    num_classes = results[0]["num_classes"]
    icm_backends = ", ".join(mixkernels.functional.ICM_BACKENDS) or "none, so ICM runs the PyTorch reference"
    agreement = ("passed" if all(r["agrees"] for r in results)
                 else "FAILED for " + ", ".join(r["method"] for r in results if not r["agrees"]))
    lines = [
        "=" * 92,
        f"digits, {args.epochs} epochs per method, batch {args.batch_size}, hidden {args.hidden}, on {args.device} "
        f"(mixkernels backend={args.backend!r}; compiled ICM backends: {icm_backends})",
        f"{'method':12s} {'alpha':>5s} {'test acc':>8s}   {'loss fwd+bwd median':>19s}  {'dense form':>10s}  "
        f"{'speedup':>7s}   {'max|dloss|':>10s} {'max|dgrad|':>10s}",
    ]
    for r in results:
        lines.append(
            f"{r['method']:12s} {r['alpha']:5.1f} {r['test_accuracy']:8.4f}   "
            f"{r['loss_ms_mixkernels'] * 1e3:16.1f} us  {r['loss_ms_dense'] * 1e3:7.1f} us  "
            f"{r['speedup']:6.2f}x   {r['max_loss_diff']:10.2e} {r['max_grad_diff']:10.2e}")
    lines.append(f"test acc: C-way argmax of the plain logits after the last epoch (chance {1 / num_classes:.2f}).")
    if any(r["method"] == "icm" for r in results):
        lines.append("icm trains no C-way softmax (only the B x B contrast of mixed pairs): its test acc is how far "
                     "that carries over to C-way prediction.")
    lines += [
        "dense form: as the method's public code (C-way logits, dense B x C mixup targets, S = Z @ Y~.T; "
        "for mixup, soft-target CE).",
        f"agreement with the dense form, losses and all gradients on every step "
        f"(max |diff| / max(1, max |dense|) <= {AGREEMENT_TOLERANCE:.0e}): {agreement}.",
        f"(B={args.batch_size}, C={num_classes}: every loss here is bound by per-call overhead; "
        "python -m benchmarks.run times large shapes)",
        "=" * 92,
    ]
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    methods = METHODS if args.method is None else (args.method,)
    results = [train(method, args) for method in methods]
    print(format_summary(results, args), flush=True)
    disagreeing = [r["method"] for r in results if not r["agrees"]]
    if disagreeing:
        raise AssertionError(f"mixkernels and the dense form disagree beyond {AGREEMENT_TOLERANCE:.0e} for "
                             f"{', '.join(disagreeing)}")
    return {r["method"]: r for r in results}


if __name__ == "__main__":
    main(sys.argv[1:])
