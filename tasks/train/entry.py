"""Process entry point of a training run: ``python -m tasks.train.entry --config cfg.json --run-uri URI``.

``torchrun`` starts one of these per process; each reads the same JSON config and joins the
process group through the torchrun environment.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tasks.train.config import TrainConfig
from tasks.train.loop import train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="TrainConfig as a JSON file")
    parser.add_argument("--run-uri", required=True, help="run URI (file:// or s3://)")
    parser.add_argument("--summary", help="where rank 0 writes the summary JSON (local path)")
    args = parser.parse_args(argv)
    cfg = TrainConfig.model_validate_json(Path(args.config).read_text())
    summary = train(cfg, args.run_uri, log=lambda msg: print(msg, flush=True))
    if args.summary and summary.get("run_uri"):
        import os

        if int(os.environ.get("RANK", "0")) == 0:
            Path(args.summary).write_text(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
