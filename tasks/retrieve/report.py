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
from tasks.queries.config import QuerySetConfig
from tasks.queries.sets import iter_query_images

_BG, _FG, _BAR, _GRID = (255, 255, 255), (20, 20, 20), (52, 101, 164), (225, 225, 225)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def cluster_size_histogram_png(sizes: np.ndarray, bins: int = 30, width: int = 640, height: int = 320) -> bytes:
    """Histogram of cluster sizes on log-spaced bins (sizes span orders of magnitude)."""
    sizes = np.asarray(sizes, np.int64)
    img = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 50, width - 15, 25, height - 40
    draw.text((left, 5), f"cluster sizes: {len(sizes):,} clusters, {int((sizes == 0).sum()):,} empty, "
                         f"median {float(np.median(sizes)) if len(sizes) else 0:g}", fill=_FG)
    positive = sizes[sizes > 0]
    if positive.size == 0:
        draw.text((left, height // 2), "no non-empty clusters", fill=_FG)
        return _png(img)
    edges = np.unique(np.round(np.logspace(0, np.log10(positive.max() + 1), bins + 1)).astype(np.int64))
    if len(edges) < 2:
        edges = np.array([positive.min(), positive.max() + 1])
    counts, _ = np.histogram(positive, bins=edges)
    peak = max(int(counts.max()), 1)
    bar_w = (right - left) / len(counts)
    for frac in (0.25, 0.5, 0.75, 1.0):
        y = bottom - frac * (bottom - top)
        draw.line([(left, y), (right, y)], fill=_GRID)
        draw.text((5, y - 6), f"{int(round(frac * peak))}", fill=_FG)
    for i, c in enumerate(counts):
        x0 = left + i * bar_w
        draw.rectangle([x0 + 1, bottom - c / peak * (bottom - top), x0 + bar_w - 1, bottom], fill=_BAR)
    draw.line([(left, bottom), (right, bottom)], fill=_FG)
    for i in range(0, len(edges), max(1, len(edges) // 6)):
        x = left + i * bar_w
        draw.text((x - 4, bottom + 6), str(int(edges[i])), fill=_FG)
    draw.text((right - 120, bottom + 22), "images per cluster (log)", fill=_FG)
    return _png(img)


def contact_sheet_png(rows: list[tuple[str, list[bytes]]], thumb: int = 64, label_width: int = 120) -> bytes:
    """One row of thumbnails per (label, encoded images); undecodable images show as grey squares."""
    cols = max((len(imgs) for _, imgs in rows), default=0)
    img = Image.new("RGB", (label_width + cols * (thumb + 4) + 4, max(1, len(rows)) * (thumb + 4) + 4), _BG)
    draw = ImageDraw.Draw(img)
    for r, (label, images) in enumerate(rows):
        y = 4 + r * (thumb + 4)
        draw.text((4, y + thumb // 2 - 6), label[:18], fill=_FG)
        for c, data in enumerate(images):
            try:
                with Image.open(io.BytesIO(data)) as im:
                    tile = im.convert("RGB")
                    tile.thumbnail((thumb, thumb))
            except Exception:  # a broken image must not break the report
                tile = Image.new("RGB", (thumb, thumb), (160, 160, 160))
            x = label_width + 4 + c * (thumb + 4)
            img.paste(tile, (x + (thumb - tile.width) // 2, y + (thumb - tile.height) // 2))
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
