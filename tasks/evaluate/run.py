"""``evaluate(cfg, run_uri) -> summary``: every protocol on every model, one comparison.

Order matters for failures: every dataset is read and label-checked and every model is loaded
(architecture checked against its checkpoint) before the first feature is computed. Then each
model's features are computed once per split and shared by k-NN, the linear probes and copy
detection. Results go to ``{run}/results.parquet`` (one row per model, set and metric),
``{run}/report.md``, ``{run}/pca-*.png``, ``{run}/matches-*.png`` (patch matching on planted
copies, :mod:`tasks.evaluate.patch_match`) and ``{run}/summary.json``.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from storage import uri as su
from tasks.evaluate.config import EvaluateConfig
from tasks.evaluate.datasets import EvalSet, load_eval_set
from tasks.evaluate.features import EvalModel, feature_variants_of, features_for, knn_features, resolve_model
from tasks.evaluate.knn import knn_accuracy
from tasks.evaluate.linear import linear_probe
from tasks.evaluate.report import comparison_markdown, comparison_table

RESULT_SCHEMA = pa.schema([("model", pa.string()), ("dataset", pa.string()), ("metric", pa.string()),
                           ("value", pa.float64()), ("detail", pa.string())])


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def prepare(cfg: EvaluateConfig) -> tuple[list[EvalSet], list[EvalModel]]:
    """Read and check every set, load every model: all bad input fails here, before any work."""
    if cfg.copy_detection.enabled:
        _require_planted_set()
    sets = [load_eval_set(d, cfg.image_size, cfg.seed) for d in cfg.datasets]
    models = [resolve_model(spec, cfg.image_size, cfg.pixels_size) for spec in [*cfg.models, *cfg.baselines]]
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"the same model is listed twice: {names}")
    if cfg.patch_match.enabled:
        for m in models:
            patch = m.backbone.patch_embed.patch_size if m.backbone is not None else 1
            if cfg.patch_match.image_size % patch:
                raise ValueError(f"patch_match.image_size {cfg.patch_match.image_size} is not a multiple of "
                                 f"{m.name}'s patch size {patch}")
    return sets, models


def _require_planted_set() -> None:
    """The planted copy-detection set needs scikit-image's photos and AugLy's edits (dev extras)."""
    try:
        import augly  # noqa: F401
        import skimage  # noqa: F401
    except ImportError as err:
        raise ValueError(f"copy_detection.enabled needs scikit-image and augly ({err}); install the dev extras "
                         "or set copy_detection.enabled=false") from None


def evaluate_set(model: EvalModel, data: EvalSet, cfg: EvaluateConfig, device: torch.device,
                 cache_uri: str | None) -> list[dict]:
    """k-NN and linear-probe rows of one model on one labelled set."""
    train = features_for(model, f"{data.name}/train", data.train.images, cfg.image_size, device, cfg.batch_size, cache_uri)
    test = features_for(model, f"{data.name}/test", data.test.images, cfg.image_size, device, cfg.batch_size, cache_uri)
    y_train, y_test = torch.as_tensor(data.train.labels), torch.as_tensor(data.test.labels)
    rows = []
    if cfg.knn.enabled:
        acc = knn_accuracy(knn_features(train), y_train, knn_features(test), y_test, cfg.knn.ks,
                           cfg.knn.temperature, data.num_classes)
        rows += [{"metric": f"knn_top1_k{k}", "value": v} for k, v in acc.items()]
    if cfg.linear.enabled:
        lin = linear_probe(feature_variants_of(train), y_train, feature_variants_of(test), y_test, data.num_classes,
                           cfg.linear.lrs, cfg.linear.epochs, cfg.linear.batch_size, cfg.linear.heldout_fraction,
                           cfg.seed)
        detail = json.dumps({"variant": lin["linear_variant"], "lr": lin["linear_lr"]})
        rows += [{"metric": "linear_top1", "value": lin["linear_top1"], "detail": detail},
                 {"metric": "linear_heldout_top1", "value": lin["linear_heldout_top1"], "detail": detail}]
    return [{"model": model.name, "dataset": data.name, "detail": "", **r} for r in rows]


def evaluate_copy_detection(models: list[EvalModel], cfg: EvaluateConfig, device: torch.device,
                            cache_uri: str | None, log: Callable[[str], None]) -> list[dict]:
    from tasks.evaluate.copy_detection import copy_detection_metrics, planted_copy_set

    cd = cfg.copy_detection
    planted = planted_copy_set(cd.n_with_copies, tuple(cd.edits), cfg.image_size, cfg.seed)
    log(f"copy detection: {len(planted.references)} references, {len(planted.queries)} queries, "
        f"{planted.n_pairs} true pairs")
    refs, queries = np.stack(planted.references), np.stack(planted.queries)
    rows = []
    for model in models:
        r = knn_features(features_for(model, "planted/references", refs, cfg.image_size, device, cfg.batch_size, cache_uri))
        q = knn_features(features_for(model, "planted/queries", queries, cfg.image_size, device, cfg.batch_size, cache_uri))
        for metric, value in copy_detection_metrics(r, q, planted.truth, cd.top_k).items():
            rows.append({"model": model.name, "dataset": "planted", "metric": metric, "value": value, "detail": ""})
    return rows


def report_photos(n: int, size: int, sets: list[EvalSet]) -> list[np.ndarray]:
    """``n`` packaged real photos (scikit-image and friends) at ``size``; without them, the first test images."""
    from PIL import Image

    from tasks.evaluate.datasets import eval_transform

    images = []
    try:
        from skimage import data as skdata

        from tasks.dedup.planted import SKIMAGE_PHOTOS

        for name in SKIMAGE_PHOTOS[:n]:
            images.append(Image.fromarray(getattr(skdata, name)()).convert("RGB"))
    except (ImportError, AttributeError, OSError):
        images = [Image.fromarray(im) for im in sets[0].test.images[:n]] if sets else []
    return [eval_transform(img, size) for img in images]


def pca_photos(cfg: EvaluateConfig, sets: list[EvalSet]) -> list[np.ndarray]:
    return report_photos(cfg.pca.n_images, cfg.pca.image_size, sets)


def evaluate_patch_matching(models: list[EvalModel], cfg: EvaluateConfig, device: torch.device,
                            sets: list[EvalSet], log: Callable[[str], None]) -> tuple[list[dict], dict[str, bytes]]:
    """Rows ``patch_match_<edit>`` / ``patch_matches_<edit>`` (dataset ``patch-pairs``) of every ViT, and
    per model a PNG of the first photo's pairs."""
    from tasks.evaluate.patch_match import accuracy_rows, match_pair, match_picture, plant

    pm = cfg.patch_match
    photos = report_photos(pm.n_images, pm.image_size, sets)
    rows, pictures = [], {}
    for model in models:
        if model.backbone is None or not photos:
            continue
        model.backbone.to(device).eval()
        patch = model.backbone.patch_embed.patch_size
        results = [match_pair(model.backbone, plant(photo, edit, patch), device) for photo in photos
                   for edit in pm.edits]
        metrics = accuracy_rows(results, pm.radius)
        log(f"{model.name} patch matching: " + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items()))
        detail = f'{{"photos": {len(photos)}, "radius": {pm.radius:g}}}'
        rows += [{"model": model.name, "dataset": "patch-pairs", "metric": k, "value": v, "detail": detail}
                 for k, v in metrics.items()]
        pictures[model.name] = match_picture(results[: len(pm.edits)], pm.radius)
    return rows, pictures


def pca_pictures(models: list[EvalModel], cfg: EvaluateConfig, device: torch.device,
                 sets: list[EvalSet]) -> dict[str, bytes]:
    """Model name -> PNG of the patch-PCA picture (ViTs only)."""
    from tasks.evaluate.features import model_inputs
    from tasks.evaluate.pca import pca_picture

    photos = pca_photos(cfg, sets)
    if not photos:
        return {}
    inputs = model_inputs(np.stack(photos), cfg.pca.image_size)
    out = {}
    for model in models:
        if model.backbone is not None:
            model.backbone.to(device)
            out[model.name] = pca_picture(model.backbone, photos, inputs.to(device))
    return out


def training_flags(specs: list[str], models: list[EvalModel]) -> dict[str, list[dict]]:
    """Model name -> the flags its training run recorded (:mod:`tasks.train.flags`), for the models
    given as a run or checkpoint URI whose run recorded them."""
    from tasks.release.load import find_checkpoint
    from tasks.train.flags import read_run_flags

    out = {}
    for spec, model in zip(specs, models):
        if model.kind != "checkpoint":
            continue
        try:
            _, run_uri = find_checkpoint(spec)
        except (FileNotFoundError, ValueError):  # an exported or official file: no training log beside it
            continue
        flags = read_run_flags(run_uri)
        if flags is not None:
            out[model.name] = flags
    return out


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)[:80]


def evaluate(cfg: EvaluateConfig, run_uri: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate every model in ``cfg`` into ``run_uri``; returns URIs, the table and picture URIs."""
    t0 = time.perf_counter()
    device = _device(cfg.device)
    if device.type == "cpu" and cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    sets, models = prepare(cfg)
    log(f"evaluating {[m.name for m in models]} on {[s.name for s in sets]}")
    su.write_bytes_atomic(su.join(run_uri, "config.json"), cfg.model_dump_json(indent=1).encode())
    cache_uri = su.join(run_uri, "features")
    rows: list[dict] = []
    for data in sets:
        for model in models:
            rows += evaluate_set(model, data, cfg, device, cache_uri)
            log(f"{model.name} on {data.name}: " + ", ".join(f"{r['metric']}={r['value']:.4f}"
                                                            for r in rows if r["model"] == model.name
                                                            and r["dataset"] == data.name))
    if cfg.copy_detection.enabled:
        rows += evaluate_copy_detection(models, cfg, device, cache_uri, log)
    pictures = pca_pictures(models, cfg, device, sets) if cfg.pca.enabled else {}
    picture_uris = {}
    for name, png in pictures.items():
        picture_uris[name] = su.join(run_uri, f"pca-{_slug(name)}.png")
        su.write_bytes_atomic(picture_uris[name], png)
    match_uris = {}
    if cfg.patch_match.enabled:
        match_rows, match_pngs = evaluate_patch_matching(models, cfg, device, sets, log)
        rows += match_rows
        for name, png in match_pngs.items():
            match_uris[name] = su.join(run_uri, f"matches-{_slug(name)}.png")
            su.write_bytes_atomic(match_uris[name], png)

    table = comparison_table(rows, models)
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=RESULT_SCHEMA), buf)
    su.write_bytes_atomic(su.join(run_uri, "results.parquet"), buf.getvalue())
    flags = training_flags(list(cfg.models), models)
    for name, raised in flags.items():
        for f in raised:
            log(f"WARNING: {name} was flagged in training ({f['flag']}): {f['message']}")
    markdown = comparison_markdown(table, cfg, {n: su.basename(u) for n, u in picture_uris.items()},
                                   {n: su.basename(u) for n, u in match_uris.items()}, flags)
    su.write_bytes_atomic(su.join(run_uri, "report.md"), markdown.encode())
    summary = {
        "run_uri": run_uri,
        "models": [{"name": m.name, "kind": m.kind, "params": m.params} for m in models],
        "datasets": [{"name": s.name, "train": len(s.train), "test": len(s.test), "classes": s.num_classes}
                     for s in sets],
        "table": table,
        "results_uri": su.join(run_uri, "results.parquet"),
        "report_uri": su.join(run_uri, "report.md"),
        "pictures": picture_uris,
        "match_pictures": match_uris,
        "training_flags": flags,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    su.write_bytes_atomic(su.join(run_uri, "summary.json"), json.dumps(summary, indent=1).encode())
    return summary
