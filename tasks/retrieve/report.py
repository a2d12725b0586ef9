"""Pictures for Prefect artifacts: cluster-size histogram and contact sheets, as PNG bytes.

Drawn with Pillow alone (no plotting library in the runtime). Kept small: artifacts live in
the Prefect database, so thumbnails, not full images.
"""

from __future__ import annotations

import io
from collections import defaultdict

import numpy as np
from PIL import Image, ImageDraw

from storage.shards import iter_samples
from storage.tables import read_table
from storage.uri import join
from tasks.pictures import LINE_HEIGHT, label_column_width, wrap_label
from tasks.queries.config import QuerySetConfig
from tasks.queries.sets import iter_query_images

_BG, _FG, _BAR, _GRID = (255, 255, 255), (20, 20, 20), (52, 101, 164), (225, 225, 225)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def count_ticks(peak: int, most: int = 5) -> list[int]:
    """Distinct integer ticks 0 .. top for a count axis (top >= peak, at most ``most`` of them), on a
    1-2-5 step: a peak of 2 reads 0, 1, 2, never 0, 1, 2, 2."""
    peak = max(int(peak), 1)
    step, mults = 1, (2, 2.5, 2)  # 1, 2, 5, 10, 20, 50, ...
    i = 0
    while -(-peak // step) > most - 1:
        step = int(step * mults[i % 3])
        i += 1
    top = -(-peak // step) * step
    return list(range(0, top + 1, step))


def size_bins(sizes: np.ndarray, bins: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """(edges, counts) of the non-empty cluster sizes on log-spaced integer bins [edges[i], edges[i+1]):
    sizes are integers, so every edge is a distinct integer and a small range gets one bin per size."""
    positive = np.asarray(sizes, np.int64)
    positive = positive[positive > 0]
    if positive.size == 0:
        return np.array([1, 2], np.int64), np.zeros(1, np.int64)
    lo, hi = int(positive.min()), int(positive.max()) + 1
    if hi - lo <= bins:
        edges = np.arange(lo, hi + 1, dtype=np.int64)
    else:
        edges = np.unique(np.round(np.logspace(np.log10(lo), np.log10(hi), bins + 1)).astype(np.int64))
        edges[0], edges[-1] = lo, max(int(edges[-1]), hi)
        edges = np.unique(edges)
    counts, _ = np.histogram(positive, bins=edges)
    return edges, counts


def bin_label(lo: int, hi: int) -> str:
    """The sizes a bin [lo, hi) holds: `7` for one size, `8-15` for several."""
    return str(lo) if hi - lo == 1 else f"{lo}-{hi - 1}"


def cluster_size_histogram_png(sizes: np.ndarray, bins: int = 30, width: int = 640, height: int = 320) -> bytes:
    """Histogram of cluster sizes on log-spaced integer bins (sizes span orders of magnitude); each bar is
    labelled by the sizes it holds, the count axis by distinct integers."""
    sizes = np.asarray(sizes, np.int64)
    img = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 50, width - 15, 25, height - 40
    draw.text((left, 5), f"cluster sizes: {len(sizes):,} clusters, {int((sizes == 0).sum()):,} empty, "
                         f"median {float(np.median(sizes)) if len(sizes) else 0:g}", fill=_FG)
    if not (sizes > 0).any():
        draw.text((left, height // 2), "no non-empty clusters", fill=_FG)
        return _png(img)
    edges, counts = size_bins(sizes, bins)
    ticks = count_ticks(int(counts.max()))
    axis_top = ticks[-1]
    bar_w = (right - left) / len(counts)
    for t in ticks[1:]:
        y = bottom - t / axis_top * (bottom - top)
        draw.line([(left, y), (right, y)], fill=_GRID)
        draw.text((5, y - 6), str(t), fill=_FG)
    draw.text((5, bottom - 6), "0", fill=_FG)
    for i, c in enumerate(counts):
        x0 = left + i * bar_w
        draw.rectangle([x0 + 1, bottom - c / axis_top * (bottom - top), x0 + bar_w - 1, bottom], fill=_BAR)
    draw.line([(left, bottom), (right, bottom)], fill=_FG)
    labels = [bin_label(int(edges[i]), int(edges[i + 1])) for i in range(len(counts))]
    room = max((draw.textlength(t) for t in labels), default=0) + 8
    every = max(1, int(np.ceil(room / bar_w)))
    for i in range(0, len(counts), every):
        x = left + (i + 0.5) * bar_w - draw.textlength(labels[i]) / 2
        draw.text((x, bottom + 6), labels[i], fill=_FG)
    axis = "images per cluster (log bins)"
    draw.text((right - draw.textlength(axis), bottom + 22), axis, fill=_FG)
    return _png(img)


def contact_sheet_png(rows: list[tuple[str, list[bytes]]], thumb: int = 64, label_width: int | None = None) -> bytes:
    """One row of thumbnails per (label, encoded images); undecodable images show as grey squares.

    Labels are shown whole: the label column is as wide as the longest needs (up to 240 px, or
    ``label_width``), and a longer label wraps onto more lines, the row growing to hold them."""
    cols = max((len(imgs) for _, imgs in rows), default=0)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = label_width or label_column_width(measure, [label for label, _ in rows])
    wrapped = [wrap_label(measure, label, label_width - 8) for label, _ in rows]
    heights = [max(thumb, len(lines) * LINE_HEIGHT) for lines in wrapped]
    img = Image.new("RGB", (label_width + cols * (thumb + 4) + 4, sum(h + 4 for h in heights) + 4), _BG)
    draw = ImageDraw.Draw(img)
    y = 4
    for (label, images), lines, h in zip(rows, wrapped, heights):
        ty = y + (h - len(lines) * LINE_HEIGHT) // 2
        for n, line in enumerate(lines):
            draw.text((4, ty + n * LINE_HEIGHT), line, fill=_FG)
        for c, data in enumerate(images):
            try:
                with Image.open(io.BytesIO(data)) as im:
                    tile = im.convert("RGB")
                    tile.thumbnail((thumb, thumb))
            except Exception:  # a broken image must not break the report
                tile = Image.new("RGB", (thumb, thumb), (160, 160, 160))
            x = label_width + 4 + c * (thumb + 4)
            img.paste(tile, (x + (thumb - tile.width) // 2, y + (h - tile.height) // 2))
        y += h + 4
    return _png(img)


def _fetch_pool_images(pool_stage_uri: str, wanted: dict[str, set[str]]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for shard, keys in wanted.items():
        found = 0
        for key, fields in iter_samples(join(pool_stage_uri, shard)):
            if key in keys:
                out[key] = fields.get("jpg") or fields.get("png") or b""
                found += 1
                if found == len(keys):
                    break
    return out


def cluster_contact_sheet(retrieve_stage_uri: str, pool_stage_uri: str, n_clusters: int = 8, per_cluster: int = 8,
                          seed: int = 0) -> bytes:
    """Thumbnails of a few random non-empty clusters (one row each), from the retrieve stage's assignments."""
    table = read_table(join(retrieve_stage_uri, "assignments.parquet"))
    keys, shards = table.column("key").to_pylist(), table.column("shard").to_pylist()
    clusters = np.asarray(table.column("cluster").to_pylist())
    rng = np.random.default_rng(seed)
    present = np.unique(clusters)
    chosen = rng.choice(present, min(n_clusters, len(present)), replace=False)
    members: dict[int, list[int]] = {}
    wanted: dict[str, set[str]] = defaultdict(set)
    for c in sorted(int(c) for c in chosen):
        rows = np.flatnonzero(clusters == c)
        rows = rng.choice(rows, min(per_cluster, len(rows)), replace=False)
        members[c] = rows.tolist()
        for i in rows:
            wanted[shards[i]].add(keys[i])
    images = _fetch_pool_images(pool_stage_uri, wanted)
    return contact_sheet_png([(f"cluster {c} ({int((clusters == c).sum())})", [images.get(keys[i], b"") for i in rows])
                              for c, rows in members.items()])


def neighbour_contact_sheet(retrieve_stage_uri: str, pool_stage_uri: str, query_set: QuerySetConfig,
                            n_queries: int = 6, per_query: int = 6) -> bytes:
    """For a few queries of ``query_set``: the query image, then the pool images it retrieved (best first)."""
    sel = read_table(join(retrieve_stage_uri, "selection.parquet")).to_pylist()
    by_query: dict[str, list[dict]] = defaultdict(list)
    for r in sel:
        if r["query_dataset"] == query_set.name and r["source"] == "pool" and r["query_id"]:
            by_query[r["query_id"]].append(r)
    qids = sorted(by_query)[:n_queries]
    wanted: dict[str, set[str]] = defaultdict(set)
    for q in qids:
        by_query[q].sort(key=lambda r: -r["similarity"])
        for r in by_query[q][:per_query]:
            wanted[r["shard"]].add(r["key"])
    pool_images = _fetch_pool_images(pool_stage_uri, wanted)
    query_images = {img.id: img.data for img in iter_query_images(query_set) if img.id in set(qids)}
    return contact_sheet_png([(q.rsplit("/", 1)[-1], [query_images.get(q, b"")] +
                               [pool_images.get(r["key"], b"") for r in by_query[q][:per_query]]) for q in qids])
