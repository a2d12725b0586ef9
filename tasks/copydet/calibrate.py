"""Cosine thresholds of a copy detector, from edited copies planted into a sample of images.

Each sampled image gets one copy per edit type of :mod:`tasks.copydet.edits` (parameters drawn
from the calibration seed, not the training one). Every (copy, original) pair is scored: the
copy's own original is a positive, every other original a negative, and so is every pair of
distinct originals. The copy threshold is the lowest cosine above which pair precision stays at
``target_precision`` or better for every higher threshold; the eval-set threshold is the same at
the looser ``eval_precision`` (decontamination prefers recall). The precision/recall curve and the
recall per edit type at the chosen threshold are recorded with them.
"""

from __future__ import annotations

import json
import math

import numpy as np
from PIL import Image

from tasks.copydet.edits import EDITS, edit, working_copy

CURVE = tuple(round(float(t), 2) for t in np.arange(0.30, 0.96, 0.05))


def sample_images(source, n: int, size: int = 256) -> list[Image.Image]:
    """Up to ``n`` images read from shards spread over ``source`` (a ``tasks.train.data.Source``),
    long side capped at ``4 * size``."""
    sizes = source.shard_sizes()
    if not sizes or sum(sizes) == 0:
        raise ValueError("the source holds no images to calibrate on")
    picks = sorted({round(i * (len(sizes) - 1) / max(1, min(n, len(sizes)) - 1)) for i in range(min(n, len(sizes)))})
    quota = math.ceil(n / len(picks))
    out: list[Image.Image] = []
    for s in picks:
        for _, raw in source.read_shard(s)[:quota]:
            out.append(working_copy(source.decode(raw), size))
    return out[:n]


def threshold_for(pos: np.ndarray, neg: np.ndarray, precision: float) -> float:
    """Lowest score ``t`` such that pairs scoring above any ``t' >= t`` have at least ``precision``."""
    scores = np.concatenate([pos, neg])
    labels = np.concatenate([np.ones(len(pos), bool), np.zeros(len(neg), bool)])
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(labels[order])
    prec = tp / np.arange(1, len(order) + 1)
    # precision of "everything scoring >= scores[order[k]]"; keep the prefix where it never dips below target
    ok = np.minimum.accumulate(prec) >= precision
    if not ok[0]:
        return float(min(1.0 - 1e-6, scores[order[0]] + 1e-6))
    last = int(np.nonzero(ok)[0][-1])
    below = scores[order[last + 1]] if last + 1 < len(order) else scores[order[last]] - 1e-3
    return float((scores[order[last]] + below) / 2)


def _pr(pos: np.ndarray, neg: np.ndarray, t: float) -> tuple[float, float]:
    tp, fp = int((pos > t).sum()), int((neg > t).sum())
    return (tp / (tp + fp) if tp + fp else 1.0), tp / max(1, len(pos))


def calibrate(embedder, images: list[Image.Image], seed: int, target_precision: float = 0.99,
              eval_precision: float = 0.9, edits: tuple[str, ...] = EDITS) -> dict:
    """Thresholds, curve and per-edit recall of ``embedder`` (PIL list -> L2-normalised rows) on ``images``."""
    if len(images) < 2:
        raise ValueError(f"calibration needs at least 2 images, got {len(images)}")
    rng = np.random.default_rng([seed, 0xC0C0A])
    copies, source, kinds = [], [], []
    for i, img in enumerate(images):
        for kind in edits:
            copies.append(edit(img, kind, rng))
            source.append(i)
            kinds.append(kind)
    orig = np.asarray(embedder(images), np.float32)
    desc = np.asarray(embedder(copies), np.float32)
    sims = desc @ orig.T
    src = np.asarray(source)
    own = np.zeros_like(sims, dtype=bool)
    own[np.arange(len(src)), src] = True
    pos = sims[own]
    oo = orig @ orig.T
    neg = np.concatenate([sims[~own], oo[np.triu_indices(len(images), 1)]])
    copy_t = threshold_for(pos, neg, target_precision)
    eval_t = min(copy_t, threshold_for(pos, neg, eval_precision))
    p, r = _pr(pos, neg, copy_t)
    kinds_arr = np.asarray(kinds)
    result = {
        "copy_threshold": round(copy_t, 4), "eval_threshold": round(eval_t, 4),
        "target_precision": target_precision, "eval_precision": eval_precision,
        "precision": round(p, 4), "recall": round(r, 4),
        "recall_per_edit": {k: round(float((pos[kinds_arr == k] > copy_t).mean()), 4) for k in edits},
        "curve": [{"threshold": t, **dict(zip(("precision", "recall"), map(lambda v: round(v, 4), _pr(pos, neg, t))))}
                  for t in CURVE],
        "images": len(images), "positive_pairs": int(len(pos)), "negative_pairs": int(len(neg)), "seed": seed,
    }
    return json.loads(json.dumps(result))  # plain JSON values: the file is read back with weights_only
