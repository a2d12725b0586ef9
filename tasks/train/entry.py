"""Process entry point of a training run, started by torchrun once per process::

    python -m tasks.train.entry --config cfg.json|preset.yaml --run-uri URI [key=value ...]

Each process reads the same config (a TrainConfig as JSON, or a YAML preset whose ``train:``
section is read, with dotted overrides such as ``data.source=s3://...``) and joins the process
group through the torchrun environment. Kubernetes pods run it under torchrun directly (see
deploy/k8s/train-multinode.yaml).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from lvd.config import load_config
from tasks.train.config import TrainConfig
from tasks.train.loop import train


def read_config(path: str, overrides: list[str]) -> TrainConfig:
    """A complete TrainConfig from JSON (as the launcher writes it), or a YAML preset plus overrides."""
    if Path(path).suffix == ".json":
        if overrides:
            raise SystemExit("overrides apply to YAML presets; a JSON config is taken whole")
        return TrainConfig.model_validate_json(Path(path).read_text())
    return load_config(TrainConfig, path, overrides, section="train")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="TrainConfig as JSON, or a YAML preset (its train: section)")
    parser.add_argument("--run-uri", required=True, help="run URI (file:// or s3://)")
    parser.add_argument("--summary", help="where global rank 0 writes the summary JSON (local path)")
    parser.add_argument("--stop-at-step", type=int, help="end after this step as if stopped (resume later)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides of the config, key=value")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = read_config(args.config, args.overrides)
    summary = train(cfg, args.run_uri, stop_at_step=args.stop_at_step, log=lambda msg: print(msg, flush=True))
    if args.summary and int(os.environ.get("RANK", "0")) == 0:
        Path(args.summary).write_text(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
