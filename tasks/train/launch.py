"""Start a training run in the right shape for the host.

One CPU process runs in-process (no torchrun). Otherwise ``torchrun --standalone`` starts one
process per GPU (all visible GPUs unless told) or, when asked, N CPU processes that train
together over gloo with FSDP2. Either way the result is the run's summary dict.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from tasks.train.config import TrainConfig

REPO_ROOT = Path(__file__).resolve().parents[2]


class LaunchError(RuntimeError):
    """The distributed run exited with an error; the message carries its last output lines."""


def plan_processes(cfg: TrainConfig) -> tuple[int, str]:
    """(number of processes, device kind) for this host and config."""
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if use_cuda:
        visible = torch.cuda.device_count()
        if visible == 0:
            raise LaunchError("device 'cuda' requested but no GPU is visible")
        n = cfg.nproc if cfg.nproc > 1 else visible
        if n > visible:
            raise LaunchError(f"{n} processes requested but only {visible} GPUs are visible")
        return n, "cuda"
    return cfg.nproc, "cpu"


def torchrun_command(nproc: int, config_path: str, run_uri: str, summary_path: str) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
        "-m", "tasks.train.entry", "--config", config_path, "--run-uri", run_uri, "--summary", summary_path,
    ]


def launch(cfg: TrainConfig, run_uri: str, log: Callable[[str], None] = print) -> dict:
    """Train ``cfg`` into ``run_uri`` (resuming if it holds checkpoints); return the summary."""
    nproc, kind = plan_processes(cfg)
    if nproc == 1 and kind == "cpu":
        from tasks.train.loop import train

        return train(cfg, run_uri, log=log)
    with tempfile.TemporaryDirectory(prefix="lvd-train-") as tmp:
        config_path = os.path.join(tmp, "config.json")
        summary_path = os.path.join(tmp, "summary.json")
        Path(config_path).write_text(cfg.model_dump_json())
        cmd = torchrun_command(nproc, config_path, run_uri, summary_path)
        log(f"launching {nproc} {kind} processes: {' '.join(cmd)}")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        if kind == "cpu":
            env.setdefault("OMP_NUM_THREADS", str(max(1, cfg.cpu_threads or 1)))
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        tail: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            log(line)
            tail = (tail + [line])[-40:]
        if proc.wait() != 0:
            raise LaunchError(f"torchrun exited with {proc.returncode}:\n" + "\n".join(tail))
        return json.loads(Path(summary_path).read_text())
