"""Keep/remove decisions from component labels: representatives, reasons, decontamination.

Pure numpy over per-image arrays, so the rules are testable without any I/O. The detectors are
nested: sha256 groups are merged by hash edges, and those by copy edges, giving three labelings
(``exact`` within ``hashed`` within ``final``). One image per final component survives, chosen by
the same priority at every level, so the cascade reads like the paper's: sha256 dedup keeps one
image per byte-identical group, the hash keeps one per hash group of those, copy detection one
per component of those, and each removed image is named by the level that removed it. The priority
is one key per image (for ``keep='original'`` computed on the final components), so the survivor
of a component also survives every finer level. Components that touch an evaluation image are dropped whole.
"""

from __future__ import annotations

import numpy as np

SHA256 = "sha256"
COPY = "copy"
EVAL_SET = "eval-set"
CORRUPT = "corrupt"


# The keep rule "original" narrows each component step by step to members within a tolerance of
# the best one: mean similarity to the component (edits move a copy away from the original: an
# overlay, a grey conversion, a crop), colour over grey, the picture's area without uniform
# borders, and bytes (a heavy re-encode has far fewer). Of what is left, the most central member
# wins. Tolerances, because lossless re-encodes and small overlays tie the original on every count.
CENTRAL_MARGIN = 0.02
CONTENT_SHARE = 0.9
BYTES_SHARE = 0.75
CENTRAL_MIN_SIZE = 3


def centrality(labels: np.ndarray, valid: np.ndarray, chunks) -> np.ndarray:
    """Mean cosine similarity of each row to the members of its component (including itself).

    ``chunks`` is a callable returning an iterable of ``(offset, unit vectors)`` covering the rows
    in order; it is called twice (component sums, then each row's dot product with its sum), so
    descriptors stream per part. The mean over members is ``x_i . sum_j x_j / m``, the medoid's
    criterion without the m x m matrix. Only components of at least ``CENTRAL_MIN_SIZE`` valid
    members get a value (in a pair both members score the same); others are NaN. Memory: one
    d-vector per such component.
    """
    n = len(labels)
    out = np.full(n, np.nan, dtype=np.float32)
    sizes = np.bincount(labels[valid], minlength=n) if n else np.zeros(0, np.int64)
    big = np.nonzero(sizes >= CENTRAL_MIN_SIZE)[0]
    if len(big) == 0:
        return out
    slot = np.full(n, -1, dtype=np.int64)
    slot[big] = np.arange(len(big))
    row_slot = np.where(valid, slot[labels], -1)
    sums = None
    for offset, x in chunks():
        x = np.asarray(x, dtype=np.float32)
        s = row_slot[offset:offset + len(x)]
        if sums is None:
            sums = np.zeros((len(big), x.shape[1]), dtype=np.float64)
        np.add.at(sums, s[s >= 0], x[s >= 0])
    if sums is None:
        return out
    for offset, x in chunks():
        x = np.asarray(x, dtype=np.float32)
        s = row_slot[offset:offset + len(x)]
        rows = np.nonzero(s >= 0)[0]
        out[offset + rows] = np.einsum("ij,ij->i", x[rows], sums[s[rows]]) / sizes[big][s[rows]]
    return out


def _component_max(labels: np.ndarray, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per row, the largest ``values`` among the ``rows`` of its component (-inf if none)."""
    best = np.full(len(labels), -np.inf)
    np.maximum.at(best, labels[rows], values[rows])
    return best[labels]


def original_candidates(labels: np.ndarray, valid: np.ndarray, central: np.ndarray | None,
                        grey: np.ndarray | None, content: np.ndarray, nbytes: np.ndarray) -> np.ndarray:
    """Rows still in the running to be their component's unedited original (see ``CENTRAL_MARGIN``)."""
    alive = valid.copy()
    if central is not None:
        c = np.where(np.isnan(central), np.inf, central)  # no medoid (small component): no filter
        alive &= c >= _component_max(labels, alive, c) - CENTRAL_MARGIN
    if grey is not None:
        colour = (~np.asarray(grey, dtype=bool)).astype(np.float64)
        alive &= colour >= _component_max(labels, alive, colour)
    content = np.asarray(content, dtype=np.float64)
    alive &= content >= CONTENT_SHARE * _component_max(labels, alive, content)
    nb = np.asarray(nbytes, dtype=np.float64)
    alive &= nb >= BYTES_SHARE * _component_max(labels, alive, nb)
    return alive


def representatives(labels: np.ndarray, valid: np.ndarray, keep: str, area: np.ndarray, nbytes: np.ndarray,
                    content_area: np.ndarray | None = None, grey: np.ndarray | None = None,
                    central: np.ndarray | None = None, final_labels: np.ndarray | None = None) -> np.ndarray:
    """Index of the surviving member of each row's component (-1 for invalid rows).

    ``keep``: ``"original"`` (the unedited image: :func:`original_candidates` narrows each component
    by :func:`centrality`, colour, ``content_area`` (area without uniform borders) and bytes, then
    the most central candidate wins, then the one with the least border (smallest raw area), then
    most bytes), ``"resolution"`` (largest area, then most bytes), ``"bytes"`` (most bytes, then
    area) or ``"first"``; remaining ties go to the lowest index. ``central`` is NaN where a
    component is too small to have a medoid. ``final_labels`` (the coarsest labeling, default
    ``labels``) is where the candidates are chosen: with one candidate set for every level the
    priority is one total order, so a component's survivor also survives each finer level.
    """
    n = len(labels)
    idx = np.arange(n)
    if keep == "original":
        content = area if content_area is None else content_area
        # Bytes of the picture itself: a padded copy's border costs bytes too.
        picture_bytes = nbytes * (np.asarray(content, dtype=np.float64) / np.maximum(area, 1))
        alive = original_candidates(labels if final_labels is None else final_labels, valid, central, grey,
                                    content, picture_bytes)
        c = np.zeros(n) if central is None else np.nan_to_num(central, nan=0.0)
        keys = (idx, -nbytes, area, -c, ~alive, labels)
    elif keep == "resolution":
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
