"""Copy-detection metrics as DISC21 defines them, and their measurement on the planted set.

DISC21 scores a list of (query, reference, score) predictions pooled over all queries: sorted by
score, each prefix has a precision and a recall, recall counting against every true pair (a copy
never predicted lowers recall). Micro-AP is the area under that curve, sum over score thresholds
of (recall gain) x precision, tied scores forming one threshold; recall at precision 0.9 is the
highest recall any threshold reaches while precision stays at or above 0.9.

The planted set (``tasks.dedup.planted``): references are the originals of the photos that carry
copies and half of the others; queries are every edited copy and the other half of the
copy-free originals, which have no reference and may only produce false positives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def _curve(scores: np.ndarray, is_match: np.ndarray, n_gt: int) -> tuple[np.ndarray, np.ndarray]:
    """(precision, recall) at every distinct score threshold, highest threshold first."""
    if n_gt <= 0:
        raise ValueError("copy detection needs at least one true pair")
    scores = np.asarray(scores, dtype=np.float64)
    is_match = np.asarray(is_match, dtype=bool)
    if scores.shape != is_match.shape:
        raise ValueError(f"{scores.shape[0]} scores but {is_match.shape[0]} match flags")
    if is_match.sum() > n_gt:
        raise ValueError(f"{int(is_match.sum())} correct predictions but only {n_gt} true pairs")
    order = np.argsort(-scores, kind="stable")
    scores, is_match = scores[order], is_match[order]
    tp = np.cumsum(is_match)
    fp = np.cumsum(~is_match)
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores) != 0), scores.size - 1] if scores.size else np.array([], int)
    tp, fp = tp[last_of_tie], fp[last_of_tie]
    return tp / np.maximum(tp + fp, 1), tp / n_gt


def micro_average_precision(scores, is_match, n_gt: int) -> float:
    """DISC21 micro-AP of pooled predictions against ``n_gt`` true pairs."""
    precision, recall = _curve(np.asarray(scores), np.asarray(is_match), n_gt)
    gains = np.diff(np.r_[0.0, recall])
    return float((gains * precision).sum())


def recall_at_precision(scores, is_match, n_gt: int, precision: float = 0.9) -> float:
    """Highest recall over score thresholds whose precision is at least ``precision`` (0 if none)."""
    prec, recall = _curve(np.asarray(scores), np.asarray(is_match), n_gt)
    ok = prec >= precision
    return float(recall[ok].max()) if ok.any() else 0.0


@dataclass(frozen=True)
class CopyDetectionSet:
    """References and queries (decoded RGB uint8 images) with the true (query -> reference) map."""

    references: list[np.ndarray]
    queries: list[np.ndarray]
    truth: dict[int, int]  # query index -> reference index, copies only

    @property
    def n_pairs(self) -> int:
        return len(self.truth)


def planted_copy_set(n_with_copies: int | None, edits: tuple[str, ...], size: int, seed: int = 0) -> CopyDetectionSet:
    """The planted pool split into references and queries, every image resized to size x size."""
    import io

    from PIL import Image

    from tasks.dedup.planted import planted_pool

    items = planted_pool(n_with_copies, edits, seed)

    def decode(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC))

    sources_with_copies = {it.source for it in items if it.edit != "original"}
    originals = sorted((it for it in items if it.edit == "original"), key=lambda it: it.source)
    copy_free = [it for it in originals if it.source not in sources_with_copies]
    refs = [it for it in originals if it.source in sources_with_copies] + copy_free[0::2]
    ref_index = {it.source: i for i, it in enumerate(refs)}
    queries = [it for it in items if it.edit != "original"] + copy_free[1::2]
    truth = {q: ref_index[it.source] for q, it in enumerate(queries) if it.edit != "original"}
    return CopyDetectionSet([decode(it.data) for it in refs], [decode(it.data) for it in queries], truth)


def copy_detection_metrics(
    ref_features: torch.Tensor, query_features: torch.Tensor, truth: dict[int, int], k: int = 10
) -> dict[str, float]:
    """Micro-AP and recall at precision 0.9 of cosine top-``k`` predictions (features L2-normalised)."""
    sims = query_features.float() @ ref_features.float().T
    k = min(k, sims.shape[1])
    top, idx = sims.topk(k, dim=1)
    scores = top.flatten().numpy()
    queries = np.repeat(np.arange(sims.shape[0]), k)
    is_match = np.array([truth.get(int(q)) == int(r) for q, r in zip(queries, idx.flatten().tolist())])
    return {
        "copy_micro_ap": micro_average_precision(scores, is_match, len(truth)),
        "copy_recall_at_p90": recall_at_precision(scores, is_match, len(truth), 0.9),
    }
