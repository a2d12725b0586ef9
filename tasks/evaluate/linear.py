"""Linear probes on frozen features, the DINOv2 way: a grid trained in one batched pass.

Feature variants are the CLS token of the last 1 or 4 blocks, with or without the average of the
last block's patch tokens. For every variant a stack of linear heads, one per learning rate, is
trained at once on the same mini-batches (one einsum per step), with SGD (momentum 0.9, no weight
decay), a cosine learning-rate decay to 0, learning rates scaled by batch/256 and N(0, 0.01)
initial weights, as the official linear evaluation does. The (variant, learning rate) pair is
chosen on a held-out part of the training set and only that head's test accuracy is reported,
so the test set picks nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

OFFICIAL_LRS = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1)


@dataclass
class ProbeGrid:
    """Heads for one feature variant: weights [L, D, C], biases [L, C], one per learning rate."""

    weight: torch.Tensor
    bias: torch.Tensor
    lrs: torch.Tensor

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nd,ldc->lnc", x, self.weight) + self.bias[:, None, :]

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor, batch: int = 4096) -> torch.Tensor:
        """Top-1 accuracy of every head, [L]."""
        correct = torch.zeros(self.weight.shape[0])
        for s in range(0, x.shape[0], batch):
            pred = self.logits(x[s : s + batch]).argmax(-1)
            correct += (pred == y[s : s + batch]).float().sum(-1)
        return correct / max(1, x.shape[0])


def train_probe_grids(
    train: dict[str, torch.Tensor],
    labels: torch.Tensor,
    num_classes: int,
    lrs: tuple[float, ...] = OFFICIAL_LRS,
    epochs: int = 10,
    batch_size: int = 128,
    momentum: float = 0.9,
    seed: int = 0,
) -> dict[str, ProbeGrid]:
    """Train every variant's head stack on the same shuffled mini-batches; returns the grids."""
    n = labels.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    total = max(1, epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    scaled = torch.tensor(lrs, dtype=torch.float32) * batch_size / 256.0
    grids, buffers = {}, {}
    for name, x in train.items():
        w = torch.empty(len(lrs), x.shape[1], num_classes).normal_(0.0, 0.01, generator=gen)
        grids[name] = ProbeGrid(w, torch.zeros(len(lrs), num_classes), scaled)
        buffers[name] = None
    step = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for s in range(0, n, batch_size):
            idx = order[s : s + batch_size]
            y = labels[idx]
            factor = 0.5 * (1.0 + math.cos(math.pi * step / total))
            for name, grid in grids.items():
                x = train[name][idx]
                probs = torch.softmax(grid.logits(x), dim=-1)  # [L, B, C]
                probs[:, torch.arange(len(idx)), y] -= 1.0
                probs /= len(idx)  # d(mean CE)/d(logits)
                g_w = torch.einsum("nd,lnc->ldc", x, probs)
                g_b = probs.sum(1)
                if buffers[name] is None:
                    buffers[name] = (g_w, g_b)
                else:
                    bw, bb = buffers[name]
                    buffers[name] = (bw.mul_(momentum).add_(g_w), bb.mul_(momentum).add_(g_b))
                bw, bb = buffers[name]
                lr = grid.lrs * factor
                grid.weight -= lr[:, None, None] * bw
                grid.bias -= lr[:, None] * bb
            step += 1
    return grids


def heldout_split(labels: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(fit indices, held-out indices): ``fraction`` of every class held out (at least one each)."""
    rng = np.random.default_rng(seed)
    fit, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = max(1, int(round(fraction * len(idx)))) if len(idx) > 1 else 0
        held.append(idx[:k])
        fit.append(idx[k:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(held))


def linear_probe(
    train: dict[str, torch.Tensor],
    train_labels: torch.Tensor,
    test: dict[str, torch.Tensor],
    test_labels: torch.Tensor,
    num_classes: int,
    lrs: tuple[float, ...] = OFFICIAL_LRS,
    epochs: int = 10,
    batch_size: int = 128,
    heldout_fraction: float = 0.1,
    seed: int = 0,
) -> dict:
    """Fit the grid on train minus a held-out part, pick on the held-out part, report on test."""
    fit, held = heldout_split(train_labels.numpy(), heldout_fraction, seed)
    fit_t, held_t = torch.as_tensor(fit), torch.as_tensor(held)
    grids = train_probe_grids({k: v[fit_t] for k, v in train.items()}, train_labels[fit_t], num_classes,
                              lrs, epochs, batch_size, seed=seed)
    best = None
    table = []
    for name, grid in grids.items():
        val = grid.accuracy(train[name][held_t], train_labels[held_t])
        for i, lr in enumerate(lrs):
            table.append({"variant": name, "lr": lr, "heldout_top1": float(val[i])})
            if best is None or float(val[i]) > best[2]:
                best = (name, i, float(val[i]))
    name, i, val_acc = best
    test_acc = float(grids[name].accuracy(test[name], test_labels)[i])
    return {"linear_top1": test_acc, "linear_heldout_top1": val_acc, "linear_variant": name,
            "linear_lr": lrs[i], "grid": table}


def feature_variants(cls_tokens: torch.Tensor, patch_mean: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """DINOv2's four inputs from CLS tokens of the last blocks [N, n, D] and the mean patch [N, D]."""
    out = {"cls1": cls_tokens[:, -1]}
    if cls_tokens.shape[1] >= 4:
        out["cls4"] = cls_tokens[:, -4:].flatten(1)
    if patch_mean is not None:
        out["cls1+avgpool"] = torch.cat([cls_tokens[:, -1], patch_mean], dim=1)
        if "cls4" in out:
            out["cls4+avgpool"] = torch.cat([out["cls4"], patch_mean], dim=1)
    return {k: v.float().contiguous() for k, v in out.items()}

