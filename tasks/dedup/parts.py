"""Per-shard work of the dedup stage: decode each image once, hash it and describe it.

For one crawl shard this writes, under ``{stage}/parts/{shard name}/``: ``meta.parquet`` (key,
sha256 of the original bytes, sizes, decode error, the share left after border trimming, grey or not), ``codes.npy`` (packed perceptual-hash codes,
uint8) and ``desc.npy`` (copy-detection descriptors, float16), then marks the part done. Images
are decoded and described ``batch_size`` at a time, so memory is one batch of decoded images plus
the shard's codes and descriptors (n x (bits/8 + 2 d) bytes; 10 MB for 10k images at d=512).
A corrupt image gets its error recorded and zero code/descriptor; it never stops the shard.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from storage.commit import mark_part_done, part_done
from storage.shards import iter_samples, shard_name
from storage.uri import join, read_bytes, write_bytes_atomic
from tasks.dedup.config import DedupConfig
from tasks.dedup.decode import decode_working, is_grey, trim_uniform_border
from tasks.dedup.embedder import CopyEmbedder
from tasks.dedup.pca_hash import PcaHash
from tasks.dedup.phash import gray_thumbnails, phash_bits

PCA_FILE = "pca_hash.npz"
PARTS_DIR = "parts"
META_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("orig_width", pa.int64(), nullable=False),
        pa.field("orig_height", pa.int64(), nullable=False),
        pa.field("bytes", pa.int64(), nullable=False),
        pa.field("error", pa.string(), nullable=True),
        # Share of the decoded picture left after trimming uniform borders, and whether it is grey:
        # the keep rule counts padding out of the resolution and prefers colour to a grey copy.
        pa.field("content_fraction", pa.float32(), nullable=False),
        pa.field("grey", pa.bool_(), nullable=False),
    ]
)
# Bumped when a part's files change meaning; parts written in another format are redone.
# 3: images decode to the working size (decode.decode_working); pHash from the full decode.
PART_FORMAT = 3


def part_name(shard_url: str) -> str:
    """Part id of a shard: its canonical name."""
    return shard_name(shard_url)


def part_uri(stage_uri: str, part: str, name: str) -> str:
    return join(stage_uri, PARTS_DIR, part, name)


def save_npy(uri: str, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    write_bytes_atomic(uri, buf.getvalue())


def load_npy(uri: str) -> np.ndarray:
    return np.load(io.BytesIO(read_bytes(uri)), allow_pickle=False)


@functools.lru_cache(maxsize=4)
def _pca_from_bytes(data: bytes) -> PcaHash:
    return PcaHash.from_bytes(data)


def load_pca_hash(stage_uri: str) -> PcaHash:
    """The stage's trained PCA hash (``{stage}/pca_hash.npz``)."""
    try:
        return _pca_from_bytes(read_bytes(join(stage_uri, PCA_FILE)))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{join(stage_uri, PCA_FILE)} is missing: train the PCA hash (dedup_prepare) before the shard parts"
        ) from None


def _meta_of(key: str, fields: dict[str, bytes]) -> tuple[dict, bytes | None]:
    jpg = next((fields[e] for e in ("jpg", "jpeg", "png", "webp") if e in fields), None)
    meta: dict = {}
    error = None
    if "json" in fields:
        try:
            meta = json.loads(fields["json"])
        except (ValueError, UnicodeDecodeError) as exc:
            error = f"unreadable json: {exc}"
    if jpg is None:
        error = "no image in sample"
    sha = meta.get("sha256") or (hashlib.sha256(jpg).hexdigest() if jpg is not None else "")
    row = {
        "key": key,
        "sha256": str(sha),
        "orig_width": int(meta.get("orig_width") or meta.get("width") or 0),
        "orig_height": int(meta.get("orig_height") or meta.get("height") or 0),
        "bytes": int(meta.get("bytes") or (len(jpg) if jpg is not None else 0)),
        "error": error,
        "content_fraction": 1.0,
        "grey": False,
    }
    return row, jpg


def decode_options(cfg: DedupConfig, embedder: CopyEmbedder | None) -> tuple[int, bool]:
    """``(min_side, full)`` for :func:`decode_working`, the same for pool and evaluation images: the
    descriptor's smallest short side, and a full-resolution decode when the pHash must equal
    ``imagehash.phash`` of the stored file."""
    min_side = max(64, int(getattr(embedder, "min_side", 64))) if embedder is not None else 64
    return min_side, cfg.hash_method == "phash"


def hash_images(images: list, cfg: DedupConfig, pca: PcaHash | None, trimmed: list) -> np.ndarray:
    """Packed perceptual-hash codes of a batch: pHash on the decoded images as stored (full size, as
    ``imagehash.phash`` reads them), PCA hash on the trimmed working images."""
    if cfg.hash_method == "phash":
        return np.packbits(phash_bits(gray_thumbnails(images)), axis=1)
    if cfg.hash_method == "pca":
        return pca.encode(gray_thumbnails(trimmed))
    return np.zeros((len(images), 0), dtype=np.uint8)


def _process_batch(batch: list[tuple[int, bytes]], cfg, pca, embedder, rows, codes, descs) -> None:
    min_side, full = decode_options(cfg, embedder)
    images, working, idx = [], [], []
    for i, jpg in batch:
        img, work, error = decode_working(jpg, min_side, full)
        if img is None:
            rows[i]["error"] = error
            continue
        images.append(img)
        working.append(work)
        idx.append(i)
    if not images:
        return
    trimmed = [trim_uniform_border(img) for img in working]
    for i, img, t in zip(idx, working, trimmed):
        rows[i]["content_fraction"] = (t.width * t.height) / (img.width * img.height)
        rows[i]["grey"] = is_grey(t)
    if codes.shape[1]:
        codes[idx] = hash_images(images, cfg, pca, trimmed)
    if embedder is not None:
        descs[idx] = np.asarray(embedder(trimmed), dtype=np.float32).astype(np.float16)


def dedup_shard_part(shard_url: str, stage_uri: str, cfg: DedupConfig, embedder: CopyEmbedder | None) -> dict:
    """Hash and describe every image of one crawl shard; reuse the part if it is already done.

    Returns the part summary: ``{"part", "shard", "n", "errors", "pca_digest", "model_id", "dim"}``.
    """
    part = part_name(shard_url)
    pca = load_pca_hash(stage_uri) if cfg.hash_method == "pca" else None
    pca_digest = pca.digest() if pca is not None else None
    model_id = embedder.model_id if embedder is not None else None
    done = part_done(stage_uri, part)
    if (done is not None and done.get("pca_digest") == pca_digest and done.get("model_id") == model_id
            and done.get("format") == PART_FORMAT):
        return done
    dim = int(embedder.dim) if embedder is not None else 0
    rows: list[dict] = []
    pending: list[tuple[int, bytes]] = []
    code_chunks, desc_chunks = [], []
    nbytes = cfg.code_bits // 8 if cfg.hash_method != "none" else 0
    chunk_start = 0

    def flush() -> None:
        nonlocal chunk_start
        n = len(rows) - chunk_start
        if n == 0:
            return
        codes = np.zeros((n, nbytes), dtype=np.uint8)
        descs = np.zeros((n, dim), dtype=np.float16)
        local = [(i - chunk_start, jpg) for i, jpg in pending]
        _process_batch(local, cfg, pca, embedder, rows[chunk_start:], codes, descs)
        code_chunks.append(codes)
        desc_chunks.append(descs)
        pending.clear()
        chunk_start = len(rows)

    for key, fields in iter_samples(shard_url):
        row, jpg = _meta_of(key, fields)
        if row["error"] is None:
            pending.append((len(rows), jpg))
        rows.append(row)
        if len(pending) >= cfg.batch_size:
            flush()
    flush()
    n = len(rows)
    codes = np.concatenate(code_chunks) if code_chunks else np.zeros((0, nbytes), np.uint8)
    descs = np.concatenate(desc_chunks) if desc_chunks else np.zeros((0, dim), np.float16)
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=META_SCHEMA), buf, compression="zstd")
    write_bytes_atomic(part_uri(stage_uri, part, "meta.parquet"), buf.getvalue())
    save_npy(part_uri(stage_uri, part, "codes.npy"), codes)
    save_npy(part_uri(stage_uri, part, "desc.npy"), descs)
    summary = {
        "part": part, "shard": shard_url, "n": n, "errors": sum(r["error"] is not None for r in rows),
        "pca_digest": pca_digest, "model_id": model_id, "dim": dim, "format": PART_FORMAT,
    }
    mark_part_done(stage_uri, part, summary)
    return summary


def read_part(stage_uri: str, part: str) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """``(meta table, codes, descriptors)`` of a finished part."""
    with io.BytesIO(read_bytes(part_uri(stage_uri, part, "meta.parquet"))) as f:
        meta = pq.read_table(f)
    return meta, load_npy(part_uri(stage_uri, part, "codes.npy")), load_npy(part_uri(stage_uri, part, "desc.npy"))
