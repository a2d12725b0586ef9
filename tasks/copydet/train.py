"""``train_copy_detector(cfg, run_uri) -> summary``: train, export and calibrate a copy detector.

The run trains through the one engine (:func:`tasks.engine.loop.run_objective` with
:class:`tasks.engine.objectives.CopyDetectorObjective`; rerunning resumes from its checkpoint),
then writes ``{run_uri}/copy_detector.pt``: an lvd backbone file (``model_config``, ``backbone``)
that also holds the projection (``copy_head``) and, under ``copy_detector``, the descriptor size,
the feature rule, the input size and the calibration (thresholds from edited copies of a sample of
the source, :mod:`tasks.copydet.calibrate`). ``dedup.copy_model`` accepts the file as it is, and
takes its calibrated thresholds where the config sets none.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable

import torch

from storage import uri as su
from tasks.copydet.calibrate import calibrate, sample_images
from tasks.copydet.config import CopyDetectorConfig
from tasks.engine.loop import run_objective
from tasks.engine.objectives import CopyDetectorObjective
from tasks.train.checkpoint import latest_checkpoint, load_checkpoint
from tasks.train.data import open_source
from tasks.train.export import inference_model_config

DETECTOR_FILE = "copy_detector.pt"
FEATURE = "L2(linear(L2([L2(CLS), L2(GeM_p3(patch tokens))])))"


def _payload(objective: CopyDetectorObjective, run_uri: str, calibration: dict | None) -> dict:
    ref = latest_checkpoint(run_uri)
    if ref is None:
        raise FileNotFoundError(f"copy-detector run {run_uri} has no complete checkpoint to export")
    with torch.random.fork_rng(devices=[]):
        model = objective.build()
    load_checkpoint(ref, model, None)
    c = objective.copy_cfg
    return {
        "model_config": inference_model_config(objective.cfg),
        "backbone": {k: v.detach().clone() for k, v in model.student["backbone"].state_dict().items()},
        "copy_head": {k: v.detach().clone() for k, v in model.student["copy_head"].state_dict().items()},
        "step": ref.step,
        "copy_detector": {"descriptor_dim": c.descriptor_dim, "feature": FEATURE, "image_size": c.image_size,
                          "arch": c.arch, "calibration": calibration or {}},
    }


def _write(payload: dict, uri: str) -> None:
    buf = io.BytesIO()
    torch.save(payload, buf)
    su.write_bytes_atomic(uri, buf.getvalue())


def train_copy_detector(cfg: CopyDetectorConfig, run_uri: str, log: Callable[[str], None] = print) -> dict:
    """Train (or resume) into ``run_uri``, export ``copy_detector.pt`` with its calibration; return the summary."""
    from tasks.dedup.model_copy import ModelCopyEmbedder
    from tasks.release.load import model_from_bytes

    objective = CopyDetectorObjective(cfg)
    summary = run_objective(objective, run_uri, log=log)
    out_uri = su.join(run_uri, DETECTOR_FILE)
    payload = _payload(objective, run_uri, None)
    buf = io.BytesIO()
    torch.save(payload, buf)
    embedder = ModelCopyEmbedder(model_from_bytes(buf.getvalue(), out_uri))
    images = sample_images(open_source(objective.cfg.data.source, objective.cfg.data.kind), cfg.calibration_images,
                           cfg.image_size)
    calibration = calibrate(embedder, images, seed=cfg.seed + 1, target_precision=cfg.target_precision,
                            eval_precision=cfg.eval_precision)
    payload["copy_detector"]["calibration"] = calibration
    _write(payload, out_uri)
    log(f"copy detector {out_uri}: {cfg.descriptor_dim}-d, copy threshold {calibration['copy_threshold']} "
        f"(precision {calibration['precision']}, recall {calibration['recall']} on {calibration['positive_pairs']} "
        f"planted copies of {calibration['images']} images), eval threshold {calibration['eval_threshold']}")
    summary.update(detector_uri=out_uri, descriptor_dim=cfg.descriptor_dim, calibration=calibration)
    su.write_bytes_atomic(su.join(run_uri, "summary.json"), json.dumps(summary, indent=1).encode())
    return summary
