"""The dedup stage end to end: prepare (train the PCA hash), per-shard parts, finalize, commit.

``dedup_prepare`` -> ``dedup_shard_part`` for every crawl shard (mappable, resumable) ->
``dedup_finalize``. Finalize streams the parts (train/add to the index, then query it) and
keeps per-image state only: keys and sha256 strings (~200 bytes per image as Python objects),
union-find parents, labels and scores (~50 bytes), the packed hash codes (bits/8 bytes) and the
faiss index (4d bytes per image flat, d with SQ8, d/8 with PQ, plus 8-byte ids in IVF lists).
Search results leave each query batch as thresholded edges and are never stored. At 1M images,
d=128, flat: about 0.8 GB; a billion-image pool needs the IVF-PQ codec and a large-memory host
(or a partition by hash prefix, which this module does not do).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pyarrow as pa

from storage.commit import (
    StageNotCommitted,
    begin_stage,
    commit_stage,
    config_digest,
    digest_of_commit,
    part_done,
    read_commit,
)
from storage.shards import iter_samples, manifest_shards
from storage.tables import SCHEMAS, write_table
from storage.uri import basename, exists, join, parent, read_bytes, write_bytes_atomic
from tasks.dedup import decide
from tasks.dedup.config import DedupConfig
from tasks.dedup.decode import decode_working, trim_uniform_border
from tasks.dedup.embedder import CopyEmbedder, check_embedder, thresholds
from tasks.dedup.evalsets import iter_eval_images
from tasks.dedup.hamming import hamming_neighbour_pairs, popcount_distance
from tasks.dedup.knn import build_index, copy_index, index_description, threshold_edges
from tasks.dedup.parts import PCA_FILE, decode_options, dedup_shard_part, load_pca_hash, part_name, read_part
from tasks.dedup.pca_hash import PcaHash, fit_pca_hash
from tasks.dedup.previous import PREVIOUS, load_previous, match_previous, read_index_manifest, write_index_manifest
from tasks.dedup.phash import gray_thumbnails
from tasks.dedup.unionfind import UnionFind

from tasks.dedup.layout import GROUPS_FILE, KEEP_FILE, STAGE


def stage_digests(crawl_stage_uri: str, cfg: DedupConfig, embedder: CopyEmbedder | None,
                  previous: str | None = None) -> tuple[str, str]:
    """(config digest, input digest): the config plus the copy model's identity, and the crawl commit
    (with the earlier version's dedup commit in a refresh)."""
    model = None if embedder is None else {"model_id": embedder.model_id, "checksum": getattr(embedder, "checksum", "")}
    inputs = digest_of_commit(crawl_stage_uri)
    if previous is not None:
        inputs = config_digest({"crawl": inputs, "previous": digest_of_commit(previous)})
    hash_model = None
    if cfg.hash_method == "pca" and cfg.hash_model is not None:
        hash_model = hashlib.sha256(read_hash_model(cfg.hash_model)).hexdigest()
    return config_digest({"dedup": cfg.model_dump(mode="json"), "copy_model": model, "hash_model": hash_model}), inputs


def read_hash_model(uri: str) -> bytes:
    """Bytes of a trained PCA hash named by ``dedup.hash_model``; a missing file is an error now."""
    try:
        return read_bytes(uri)
    except FileNotFoundError:
        raise FileNotFoundError(f"dedup.hash_model {uri} does not exist") from None


def pca_source(cfg: DedupConfig, previous: str | None) -> str:
    """Where the stage's PCA hash comes from: the earlier version (refresh), the named model, the
    reference images, or the pool."""
    if previous is not None:
        return f"previous:{join(previous, PCA_FILE)}"
    if cfg.hash_model is not None:
        return f"model:{cfg.hash_model}"
    return "reference" if cfg.hash_reference else "pool"


def _checked_hash(data: bytes, cfg: DedupConfig, where: str) -> bytes:
    model = PcaHash.from_bytes(data)
    if model.bits != cfg.hash_bits:
        raise ValueError(f"the PCA hash from {where} has {model.bits} bits; dedup.hash_bits is {cfg.hash_bits}")
    return data


def hash_reason(cfg: DedupConfig) -> str:
    return "phash" if cfg.hash_method == "phash" else "pca-hash"


def reference_sample(uris: list[str], cfg: DedupConfig) -> np.ndarray:
    """Grayscale thumbnails of up to ``hash_train_samples`` reference images, decoded as pool images are."""
    thumbs = []
    for uri in uris:
        for _, data in iter_eval_images(uri):
            img = decode_working(data, 64)[1]
            if img is not None:
                thumbs.append(gray_thumbnails([trim_uniform_border(img)])[0])
            if len(thumbs) >= cfg.hash_train_samples:
                return np.stack(thumbs)
    return np.stack(thumbs) if thumbs else np.zeros((0, 32, 32), np.uint8)


def train_sample(shard_urls: list[str], cfg: DedupConfig) -> np.ndarray:
    """Grayscale thumbnails of up to ``hash_train_samples`` images from shards spread over the pool."""
    nshards = min(cfg.hash_train_shards, len(shard_urls))
    picks = sorted({round(i * (len(shard_urls) - 1) / max(1, nshards - 1)) for i in range(nshards)})
    quota = math.ceil(cfg.hash_train_samples / len(picks))
    thumbs = []
    for s in picks:
        taken = 0
        for _, fields in iter_samples(shard_urls[s]):
            jpg = fields.get("jpg")
            img = decode_working(jpg, 64)[1] if jpg is not None else None
            if img is None:
                continue
            thumbs.append(gray_thumbnails([trim_uniform_border(img)])[0])
            taken += 1
            if taken >= quota:
                break
    return np.stack(thumbs) if thumbs else np.zeros((0, 32, 32), np.uint8)


def dedup_prepare(crawl_stage_uri: str, stage_uri: str, cfg: DedupConfig, embedder: CopyEmbedder | None,
                  previous: str | None = None) -> dict:
    """Check inputs and model, decide skip/resume, train the PCA hash; return the shards to map over.

    Returns ``{"skip", "shards", "done", "config_digest", "input_digest"}``. A missing or broken copy
    model fails here, before any shard is read. In a refresh (``previous``: the earlier version's dedup
    stage) the PCA hash is the earlier one, so new codes compare with the persisted ones.
    """
    read_commit(crawl_stage_uri)
    if previous is not None:
        read_commit(previous)
    if embedder is not None:
        check_embedder(embedder)
    shards = [s.url for s in manifest_shards(crawl_stage_uri)]
    cfg_digest, input_digest = stage_digests(crawl_stage_uri, cfg, embedder, previous)
    plan = begin_stage(stage_uri, stage=STAGE, config_digest=cfg_digest, input_digest=input_digest,
                      config=cfg)
    out = {"skip": plan.skip, "shards": shards, "done": sorted(plan.done), "config_digest": cfg_digest,
           "input_digest": input_digest}
    if plan.skip:
        return out
    if cfg.hash_method != "pca":
        return out
    if previous is not None:
        # A refresh codes new images with the earlier version's hash, so they compare with its codes.
        data = _checked_hash(read_bytes(join(previous, PCA_FILE)), cfg, previous)
        if cfg.hash_model is not None and data != read_hash_model(cfg.hash_model):
            raise ValueError(f"dedup.hash_model {cfg.hash_model} is not the PCA hash of the earlier version "
                             f"{previous}; a refresh must code images as that version did")
        write_bytes_atomic(join(stage_uri, PCA_FILE), data)
    elif cfg.hash_model is not None:
        write_bytes_atomic(join(stage_uri, PCA_FILE), _checked_hash(read_hash_model(cfg.hash_model), cfg, cfg.hash_model))
    elif not (plan.done and exists(join(stage_uri, PCA_FILE))):
        thumbs = reference_sample(cfg.hash_reference, cfg) if cfg.hash_reference else train_sample(shards, cfg)
        if len(thumbs) <= cfg.hash_bits:
            where = "the reference images hold" if cfg.hash_reference else "the pool has"
            raise ValueError(
                f"{where} {len(thumbs)} decodable images, too few to train a {cfg.hash_bits}-bit PCA hash; "
                "use hash_method='phash' for pools this small"
            )
        write_bytes_atomic(join(stage_uri, PCA_FILE), fit_pca_hash(thumbs, cfg.hash_bits).to_bytes())
    return out


def _load_parts(stage_uri: str, parts: list[str]) -> dict:
    keys, shards, sha, area, nbytes, errors, codes, sizes, content, grey = [], [], [], [], [], [], [], [], [], []
    for part in parts:
        meta, c, _ = read_part(stage_uri, part)
        keys.extend(meta.column("key").to_pylist())
        shards.extend([part] * meta.num_rows)
        sha.extend(meta.column("sha256").to_pylist())
        area.append(meta.column("orig_width").to_numpy() * meta.column("orig_height").to_numpy())
        content.append(area[-1] * meta.column("content_fraction").to_numpy())
        grey.append(meta.column("grey").to_numpy(zero_copy_only=False))
        nbytes.append(meta.column("bytes").to_numpy())
        errors.extend(meta.column("error").to_pylist())
        codes.append(c)
        sizes.append(meta.num_rows)
    return {
        "keys": np.array(keys, dtype=object), "shards": np.array(shards, dtype=object),
        "sha": np.array(sha, dtype=object), "area": np.concatenate(area).astype(np.int64),
        "bytes": np.concatenate(nbytes).astype(np.int64), "errors": errors, "codes": np.concatenate(codes),
        "content_area": np.concatenate(content).astype(np.float64), "grey": np.concatenate(grey).astype(bool),
        "offsets": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
    }


def _embed_eval_sets(uris: list[str], embedder: CopyEmbedder, cfg: DedupConfig) -> tuple[list[str], np.ndarray, int]:
    ids, descs, batch, skipped = [], [], [], 0
    min_side, full = decode_options(cfg, embedder)

    def flush() -> None:
        if batch:
            descs.append(np.asarray(embedder([img for _, img in batch]), dtype=np.float32))
            ids.extend(i for i, _ in batch)
            batch.clear()

    for uri in uris:
        for image_id, data in iter_eval_images(uri):
            img = decode_working(data, min_side, full)[1]
            if img is None:
                skipped += 1
                continue
            batch.append((image_id, trim_uniform_border(img)))
            if len(batch) >= cfg.batch_size:
                flush()
    flush()
    return ids, (np.concatenate(descs) if descs else np.zeros((0, embedder.dim), np.float32)), skipped


def _copy_edges(stage_uri, parts, offsets, n, cfg, threshold, uf, best_sim, embedder) -> str:
    dim = None
    train = []
    for part in parts:
        d = read_part(stage_uri, part)[2]
        dim = d.shape[1]
        if n > cfg.flat_max and len(d):
            step = max(1, n // cfg.ivf_train_samples)
            train.append(d[::step].astype(np.float32))
    if not dim:
        return "none"
    index = copy_index(build_index(dim, n, cfg, np.concatenate(train) if train else None), embedder, cfg)
    for part in parts:
        index.add(np.ascontiguousarray(read_part(stage_uri, part)[2], dtype=np.float32))
    for p, part in enumerate(parts):
        d = read_part(stage_uri, part)[2]
        for i, j, s in threshold_edges(index, d, int(offsets[p]), cfg.knn_k, threshold, cfg.search_batch):
            uf.union(i, j)
            np.maximum.at(best_sim, i, s)
            np.maximum.at(best_sim, j, s)
    return index_description(dim, n, cfg)


def _centrality(stage_uri, parts, pool, labels, valid, embedder) -> np.ndarray | None:
    """Each image's mean similarity within its final component: copy descriptors streamed per part,
    else the hash codes as +-1 vectors (cosine = 1 - 2 Hamming / bits); None without either."""
    if embedder is not None:
        def chunks():
            for p, part in enumerate(parts):
                yield int(pool["offsets"][p]), read_part(stage_uri, part)[2]
    elif pool["codes"].shape[1]:
        def chunks():
            bits = np.unpackbits(pool["codes"], axis=1).astype(np.float32)
            yield 0, (2 * bits - 1) / np.sqrt(bits.shape[1])
    else:
        return None
    return decide.centrality(labels, valid, chunks)


# Evaluation images each pool image is compared with: more than one, so a grey/colour pair whose
# score rises when rescored (knn.GreyAwareIndex) is not hidden behind a same-kind neighbour.
EVAL_NEIGHBOURS = 8


def _eval_matches(stage_uri, parts, offsets, n, eval_desc, embedder, cfg) -> tuple[np.ndarray, np.ndarray]:
    sim = np.full(n, -np.inf, dtype=np.float32)
    idx = np.full(n, -1, dtype=np.int64)
    if len(eval_desc) == 0:
        return sim, idx
    import faiss

    index = copy_index(faiss.IndexFlatIP(eval_desc.shape[1]), embedder, cfg)
    index.add(np.ascontiguousarray(eval_desc, dtype=np.float32))
    k = min(EVAL_NEIGHBOURS, len(eval_desc))
    for p, part in enumerate(parts):
        d = np.ascontiguousarray(read_part(stage_uri, part)[2], dtype=np.float32)
        if len(d):
            s, j = index.search(d, k)
            sim[offsets[p]:offsets[p + 1]] = s[:, 0]
            idx[offsets[p]:offsets[p + 1]] = j[:, 0]
    return sim, idx


def dedup_finalize(crawl_stage_uri: str, stage_uri: str, cfg: DedupConfig, embedder: CopyEmbedder | None,
                   previous: str | None = None) -> dict:
    """Link duplicates over all parts, decide what survives, write keep/groups tables and the index
    manifest, and commit. In a refresh the survivors are then matched against ``previous``'s index.

    Returns the commit record (its ``counts`` hold the number removed per reason).
    """
    cfg_digest, input_digest = stage_digests(crawl_stage_uri, cfg, embedder, previous)
    plan = begin_stage(stage_uri, stage=STAGE, config_digest=cfg_digest, input_digest=input_digest)
    if plan.skip:
        return plan.commit
    parts = [part_name(s.url) for s in manifest_shards(crawl_stage_uri)]
    missing = [p for p in parts if part_done(stage_uri, p) is None]
    if missing:
        raise StageNotCommitted(f"dedup parts not finished for {len(missing)} shards: {', '.join(missing[:5])}")
    pool = _load_parts(stage_uri, parts)
    n = len(pool["keys"])
    valid = np.array([e is None for e in pool["errors"]], dtype=bool)
    uf = UnionFind(n)
    score = np.full(n, np.nan, dtype=np.float32)

    if cfg.exact and n:
        _, first, inverse = np.unique(pool["sha"], return_index=True, return_inverse=True)
        linked = valid & valid[first[inverse]]
        uf.union(np.nonzero(linked)[0], first[inverse][linked])
    exact_labels = uf.labels()

    min_dist = np.full(n, np.iinfo(np.int32).max, dtype=np.int64)
    if cfg.hash_method != "none" and valid.sum() > 1:
        rows = np.nonzero(valid)[0]
        for a, b, dist in hamming_neighbour_pairs(pool["codes"][rows], cfg.hash_radius, cfg.hash_bucket_cap):
            uf.union(rows[a], rows[b])
            np.minimum.at(min_dist, rows[a], dist)
            np.minimum.at(min_dist, rows[b], dist)
    hashed_labels = uf.labels()

    copy_thr, eval_thr = thresholds(cfg, embedder) if embedder is not None else (None, None)
    best_sim = np.full(n, -np.inf, dtype=np.float32)
    index_kind = "none"
    if embedder is not None and n:
        index_kind = _copy_edges(stage_uri, parts, pool["offsets"], n, cfg, copy_thr, uf, best_sim, embedder)
    labels = uf.labels()

    central = _centrality(stage_uri, parts, pool, labels, valid, embedder) if cfg.keep == "original" else None

    def reps(lab: np.ndarray) -> np.ndarray:
        return decide.representatives(lab, valid, cfg.keep, pool["area"], pool["bytes"], pool["content_area"],
                                      pool["grey"], central, final_labels=labels)

    hash_rep, rep = reps(hashed_labels), reps(labels)
    reasons = decide.removal_reasons(
        [(decide.SHA256, reps(exact_labels)), (hash_reason(cfg), hash_rep), (decide.COPY, rep)], valid
    )

    eval_ids: list[str] = []
    eval_skipped = 0
    cause = np.full(n, -1, dtype=np.int64)
    dropped = np.zeros(n, dtype=bool)
    cause_sim = np.full(n, np.nan, dtype=np.float32)
    if embedder is not None and cfg.eval_sets:
        eval_ids, eval_desc, eval_skipped = _embed_eval_sets(cfg.eval_sets, embedder, cfg)
        esim, eidx = _eval_matches(stage_uri, parts, pool["offsets"], n, eval_desc, embedder, cfg)
        dropped, cause, cause_sim = decide.contaminated_components(labels, valid, esim, eidx, eval_thr)
        reasons[dropped] = decide.EVAL_SET

    score[reasons == decide.SHA256] = 1.0
    hrows = reasons == hash_reason(cfg)
    score[hrows] = popcount_distance(pool["codes"][hrows], pool["codes"][hash_rep[hrows]]) if hrows.any() else []
    crows = reasons == decide.COPY
    score[crows] = np.minimum(best_sim[crows], 1.0)
    score[dropped] = np.minimum(cause_sim[dropped], 1.0)

    earlier_rep = np.full(n, None, dtype=object)
    previous_rows: list[dict] = []
    matched: dict = {}
    if previous is not None:
        previous_rows = read_index_manifest(previous)
        dim = int(embedder.dim) if embedder is not None else 0
        index = load_previous(previous_rows, pool["codes"].shape[1], dim)
        descs = (np.concatenate([read_part(stage_uri, p)[2] for p in parts]) if parts and dim
                 else np.zeros((n, 0), np.float32))
        found = match_previous(np.array([r is None for r in reasons], dtype=bool), pool["sha"], pool["codes"],
                               descs, index, cfg, hash_reason(cfg), copy_thr, embedder)
        reasons[found.matched] = PREVIOUS
        earlier_rep[found.matched] = found.representative[found.matched]
        score[found.matched] = found.score[found.matched]
        matched = {"from": previous, "index_parts": index.parts, "index_images": len(index),
                   "matched": found.counts()}

    counts = _write_tables(stage_uri, pool, labels, rep, reasons, score, dropped, cause, eval_ids, earlier_rep)
    kept = np.array([r is None for r in reasons], dtype=bool)
    index_parts = write_index_manifest(stage_uri, basename(parent(stage_uri)), parts, kept, pool["offsets"],
                                       previous_rows)
    extra = {
        "copy_model": None if embedder is None else embedder.model_id,
        "copy_threshold": copy_thr, "eval_threshold": eval_thr, "index": index_kind,
        "hash": cfg.hash_method, "hash_bits": cfg.code_bits if cfg.hash_method != "none" else 0,
        "eval_images": len(eval_ids), "eval_images_undecodable": eval_skipped,
        "pca_digest": load_pca_hash(stage_uri).digest() if cfg.hash_method == "pca" else None,
        "pca_source": pca_source(cfg, previous) if cfg.hash_method == "pca" else None,
        "index_parts": index_parts, "previous_version": matched or None,
    }
    return commit_stage(stage_uri, stage=STAGE, config_digest=cfg_digest, input_digest=input_digest,
                        counts=counts, extra=extra, require_parts=parts)


def _write_tables(stage_uri, pool, labels, rep, reasons, score, dropped, cause, eval_ids, earlier_rep) -> dict:
    n = len(labels)
    keys, shards = pool["keys"], pool["shards"]
    kept = np.array([r is None for r in reasons], dtype=bool)
    sizes = np.bincount(labels, minlength=n) if n else np.zeros(0, np.int64)
    in_group = (sizes[labels] > 1) | dropped if n else np.zeros(0, bool)
    group_labels, group_id_of = np.unique(labels[in_group], return_inverse=True)
    group_id = np.full(n, -1, dtype=np.int64)
    group_id[in_group] = group_id_of
    eval_name = np.array([eval_ids[c] if c >= 0 else None for c in cause.tolist()], dtype=object)
    keep_rows = {
        "key": keys.tolist(),
        "shard": shards.tolist(),
        "kept": kept.tolist(),
        "reason": reasons.tolist(),
        "group_id": [g if g >= 0 else None for g in group_id.tolist()],
        "representative": [earlier_rep[i] if earlier_rep[i] is not None else keys[r] if (r >= 0 and not kept[i])
                           else None for i, r in enumerate(rep.tolist())],
        "score": [None if math.isnan(s) else s for s in score.tolist()],
        "eval_image": eval_name.tolist(),
        "error": pool["errors"],
    }
    write_table(join(stage_uri, KEEP_FILE), pa.table(keep_rows, schema=SCHEMAS["dedup.keep"]), SCHEMAS["dedup.keep"])
    groups = []
    order = np.argsort(group_id, kind="stable")
    order = order[group_id[order] >= 0]
    bounds = np.nonzero(np.diff(group_id[order]))[0] + 1
    precedence = {decide.SHA256: 0, "phash": 1, "pca-hash": 1, decide.COPY: 2, decide.EVAL_SET: 3}
    for members in np.split(order, bounds) if len(order) else []:
        member_reasons = [reasons[m] or "kept" for m in members.tolist()]
        worst = max((r for r in member_reasons if r in precedence), key=precedence.get, default=decide.COPY)
        survivor = next((keys[m] for m in members.tolist() if kept[m]), None)
        condemned = next((eval_name[m] for m in members.tolist() if eval_name[m] is not None), None)
        groups.append({
            "group_id": int(group_id[members[0]]), "reason": worst, "size": len(members),
            "representative": survivor, "members": keys[members].tolist(), "member_reasons": member_reasons,
            "scores": [None if math.isnan(s) else s for s in score[members].tolist()], "eval_image": condemned,
        })
    write_table(join(stage_uri, GROUPS_FILE), groups, SCHEMAS["dedup.groups"])
    counts = {"pool": int(n), "kept": int(kept.sum()), "groups": len(groups)}
    for reason in (decide.SHA256, "pca-hash", "phash", decide.COPY, decide.EVAL_SET, decide.CORRUPT, PREVIOUS):
        c = int(sum(1 for r in reasons.tolist() if r == reason))
        if c:
            counts[f"removed_{reason}"] = c
    return counts


def run_dedup(crawl_stage_uri: str, stage_uri: str, cfg: DedupConfig, embedder: CopyEmbedder | None,
              previous: str | None = None) -> dict:
    """Prepare, every shard part in order, finalize: the whole stage in one process."""
    prep = dedup_prepare(crawl_stage_uri, stage_uri, cfg, embedder, previous)
    if prep["skip"]:
        return read_commit(stage_uri)
    for shard in prep["shards"]:
        dedup_shard_part(shard, stage_uri, cfg, embedder)
    return dedup_finalize(crawl_stage_uri, stage_uri, cfg, embedder, previous)
