"""Keep/remove decisions from component labels: representatives, reasons, decontamination.

Pure numpy over per-image arrays, so the rules are testable without any I/O. The detectors are
nested: sha256 groups are merged by hash edges, and those by copy edges, giving three labelings
(``exact`` within ``hashed`` within ``final``). One image per final component survives, chosen by
the same priority at every level, so the cascade reads like the paper's: sha256 dedup keeps one
image per byte-identical group, the hash keeps one per hash group of those, copy detection one
per component of those, and each removed image is named by the level that removed it. Components that touch an evaluation image are dropped whole.
"""

from __future__ import annotations

import numpy as np

SHA256 = "sha256"
COPY = "copy"
EVAL_SET = "eval-set"
CORRUPT = "corrupt"


def representatives(labels: np.ndarray, valid: np.ndarray, keep: str, area: np.ndarray, nbytes: np.ndarray) -> np.ndarray:
    """Index of the surviving member of each row's component (-1 for invalid rows).

    ``keep``: ``"resolution"`` (largest area, then most bytes), ``"bytes"`` (most bytes, then
    area) or ``"first"``; remaining ties go to the lowest index.
    """
    n = len(labels)
    idx = np.arange(n)
    if keep == "resolution":
        keys = (idx, -nbytes, -area, labels)
    elif keep == "bytes":
        keys = (idx, -area, -nbytes, labels)
    elif keep == "first":
        keys = (idx, labels)
    else:
        raise ValueError(f"unknown keep rule {keep!r}")
    order = np.lexsort(tuple(k[valid] for k in keys))
    vidx = idx[valid][order]
    vlab = labels[valid][order]
    first = np.ones(len(vlab), dtype=bool)
    first[1:] = vlab[1:] != vlab[:-1]
    rep_of_label = dict(zip(vlab[first].tolist(), vidx[first].tolist()))
    rep = np.full(n, -1, dtype=np.int64)
    rep[valid] = [rep_of_label[lab] for lab in labels[valid].tolist()]
    return rep


def removal_reasons(levels: list[tuple[str, np.ndarray]], valid: np.ndarray) -> np.ndarray:
    """Object array: None for survivors, else the first detector level that removed the row.

    ``levels`` are ``(reason, representatives)`` from the finest labeling to the coarsest. A row
    is removed at the first level where it is not its component's representative, as if the
    detectors ran one after another on what the previous ones kept.
    """
    n = len(valid)
    out = np.full(n, None, dtype=object)
    out[~valid] = CORRUPT
    idx = np.arange(n)
    for reason, rep in levels:
        rows = valid & (out == None) & (rep != idx)  # noqa: E711 - elementwise test on an object array
        out[rows] = reason
    return out


def contaminated_components(
    labels: np.ndarray, valid: np.ndarray, eval_sim: np.ndarray, eval_idx: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(dropped, cause, cause_sim)``: rows in components holding any row with ``eval_sim > threshold``.

    ``cause`` is the evaluation image index that condemned the row (its own match if it has one,
    else the best match in its component; -1 if not dropped) and ``cause_sim`` that similarity.
    """
    n = len(labels)
    hit = valid & (eval_sim > threshold)
    cause = np.full(n, -1, dtype=np.int64)
    cause_sim = np.full(n, np.nan, dtype=np.float32)
    if not hit.any():
        return np.zeros(n, dtype=bool), cause, cause_sim
    hits = np.nonzero(hit)[0]
    order = hits[np.argsort(-eval_sim[hits], kind="stable")]
    best_of_label: dict[int, int] = {}
    for i in order.tolist():
        best_of_label.setdefault(int(labels[i]), i)
    dropped = valid & np.isin(labels, np.fromiter(best_of_label, dtype=labels.dtype))
    rows = np.nonzero(dropped)[0]
    src = np.array([best_of_label[int(labels[i])] for i in rows], dtype=np.int64)
    src = np.where(hit[rows], rows, src)
    cause[rows] = eval_idx[src]
    cause_sim[rows] = eval_sim[src]
    return dropped, cause, cause_sim
