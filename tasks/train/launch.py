"""Start a training run in the right shape for the host, or for one machine of a multi-machine run.

One CPU process on one machine runs in-process (no torchrun). Otherwise torchrun starts the
processes of this machine: one per GPU (all visible GPUs unless ``nproc`` says), or ``nproc`` CPU
processes that train together over gloo with FSDP2. On one machine torchrun runs
``--standalone``; with ``launch.nnodes`` > 1 every machine runs the same command and they meet
at a rendezvous (c10d: a TCP store on ``rdzv_endpoint``; static: node 0 at that address, ranks
by ``node_rank``). Unset launch fields come from the environment that torchrun, Kubernetes
Indexed Jobs and the usual cluster launchers set (see :func:`plan_launch`). The result is the
run's summary dict.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from tasks.train.config import TrainConfig
from lvd.errors import LvdError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PORT = 29500


class LaunchError(LvdError, RuntimeError):
    """The run cannot start as configured, or the distributed run exited with an error (the
    message carries its last output lines)."""


@dataclass(frozen=True)
class LaunchPlan:
    """The processes of one machine of a run, and how the machines meet."""

    nnodes: int
    nproc_per_node: int
    node_rank: int
    device: Literal["cpu", "cuda"]
    rdzv_backend: Literal["c10d", "static"] = "c10d"
    rdzv_endpoint: str | None = None
    rdzv_id: str = "lvd-train"
    max_restarts: int = 0

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    @property
    def in_process(self) -> bool:
        """One CPU process in all: no torchrun needed."""
        return self.world_size == 1 and self.device == "cpu"


def plan_processes(cfg: TrainConfig, gpus: int | None = None) -> tuple[int, str]:
    """(processes on this machine, device kind); ``gpus`` is the visible GPU count (default: torch's)."""
    visible = torch.cuda.device_count() if gpus is None else gpus
    if cfg.device == "cuda" or (cfg.device == "auto" and visible > 0):
        if visible == 0:
            raise LaunchError("device 'cuda' requested but no GPU is visible")
        n = cfg.nproc if cfg.nproc > 1 else visible
        if n > visible:
            raise LaunchError(f"{n} processes requested but only {visible} GPUs are visible")
        return n, "cuda"
    return cfg.nproc, "cpu"


def _env_int(env: Mapping[str, str], *names: str) -> tuple[int, str] | None:
    """The first of ``names`` set in ``env``, as an int (a clear error naming it otherwise)."""
    for name in names:
        value = env.get(name)
        if value not in (None, ""):
            try:
                return int(value), name
            except ValueError:
                raise LaunchError(f"environment variable {name}={value!r} is not an integer") from None
    return None


def plan_launch(cfg: TrainConfig, env: Mapping[str, str] | None = None, gpus: int | None = None) -> LaunchPlan:
    """This machine's processes and the rendezvous, from ``cfg.launch`` first, then the environment.

    nnodes: NNODES, PET_NNODES. Node rank: NODE_RANK, PET_NODE_RANK, JOB_COMPLETION_INDEX (a
    Kubernetes Indexed Job's pod index). Endpoint: PET_RDZV_ENDPOINT, else MASTER_ADDR with
    MASTER_PORT (default 29500). WORLD_SIZE, when set, must equal nnodes x processes per node.
    """
    env = os.environ if env is None else env
    lc = cfg.launch
    nproc, device = plan_processes(cfg, gpus)
    found = _env_int(env, "NNODES", "PET_NNODES")
    nnodes = lc.nnodes if lc.nnodes is not None else (found[0] if found else 1)
    found = _env_int(env, "NODE_RANK", "PET_NODE_RANK", "JOB_COMPLETION_INDEX")
    node_rank = lc.node_rank if lc.node_rank is not None else (found[0] if found else 0)
    if nnodes < 1:
        raise LaunchError(f"launch.nnodes must be at least 1, got {nnodes}")
    if not 0 <= node_rank < nnodes:
        source = "launch.node_rank" if lc.node_rank is not None else found[1]
        raise LaunchError(f"{source}={node_rank} is not a node of a {nnodes}-node run (0..{nnodes - 1})")
    endpoint = lc.rdzv_endpoint or env.get("PET_RDZV_ENDPOINT") or None
    if endpoint is None and env.get("MASTER_ADDR"):
        port = _env_int(env, "MASTER_PORT")
        endpoint = f"{env['MASTER_ADDR']}:{port[0] if port else DEFAULT_PORT}"
    if nnodes > 1 and endpoint is None:
        raise LaunchError(
            f"a {nnodes}-node run needs a rendezvous address: set launch.rdzv_endpoint (host:port) or MASTER_ADDR"
        )
    found = _env_int(env, "WORLD_SIZE")
    if found and found[0] != nnodes * nproc:
        raise LaunchError(
            f"WORLD_SIZE={found[0]} in the environment, but {nnodes} nodes x {nproc} processes make {nnodes * nproc}"
        )
    return LaunchPlan(nnodes, nproc, node_rank, device, lc.rdzv_backend, endpoint, lc.rdzv_id, lc.max_restarts)


def torchrun_arguments(plan: LaunchPlan) -> list[str]:
    """torchrun's own options for ``plan`` (everything between ``torchrun`` and ``-m module``)."""
    args = ["--nnodes", str(plan.nnodes), "--nproc-per-node", str(plan.nproc_per_node)]
    if plan.nnodes == 1:
        args = ["--standalone", *args]
    elif plan.rdzv_backend == "c10d":
        args += ["--rdzv-backend", "c10d", "--rdzv-endpoint", str(plan.rdzv_endpoint), "--rdzv-id", plan.rdzv_id]
    else:
        host, _, port = str(plan.rdzv_endpoint).rpartition(":")
        args += ["--node-rank", str(plan.node_rank), "--master-addr", host, "--master-port", port]
    if plan.max_restarts:
        args += ["--max-restarts", str(plan.max_restarts)]
    return args


def torchrun_command(
    plan: LaunchPlan,
    config_path: str,
    run_uri: str,
    summary_path: str | None = None,
    stop_at_step: int | None = None,
) -> list[str]:
    """The command that starts this machine's processes of the run."""
    cmd = [sys.executable, "-m", "torch.distributed.run", *torchrun_arguments(plan)]
    cmd += ["-m", "tasks.train.entry", "--config", config_path, "--run-uri", run_uri]
    if summary_path is not None:
        cmd += ["--summary", summary_path]
    if stop_at_step is not None:
        cmd += ["--stop-at-step", str(stop_at_step)]
    return cmd


def launch(
    cfg: TrainConfig,
    run_uri: str,
    log: Callable[[str], None] = print,
    stop_at_step: int | None = None,
    env: Mapping[str, str] | None = None,
) -> dict:
    """Train ``cfg`` into ``run_uri`` (resuming if it holds checkpoints); return the summary.

    The world the plan makes is checked against the config and the newest checkpoint before any
    process starts. ``stop_at_step`` ends the run after that step as if it had been stopped.
    """
    from tasks.train.world import check_world

    plan = plan_launch(cfg, env)
    check_world(cfg, plan.world_size, run_uri)
    if plan.in_process:
        from tasks.train.loop import train

        return train(cfg, run_uri, log=log, stop_at_step=stop_at_step)
    with tempfile.TemporaryDirectory(prefix="lvd-train-") as tmp:
        config_path = os.path.join(tmp, "config.json")
        summary_path = os.path.join(tmp, "summary.json")
        Path(config_path).write_text(cfg.model_dump_json())
        cmd = torchrun_command(plan, config_path, run_uri, summary_path, stop_at_step)
        log(f"launching {plan.nproc_per_node} {plan.device} processes on node {plan.node_rank} of {plan.nnodes}: "
            + " ".join(cmd))
        child_env = dict(os.environ if env is None else env)
        child_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), child_env.get("PYTHONPATH", "")) if p
        )
        child_env.pop("WORLD_SIZE", None)  # torchrun sets it per process
        if plan.device == "cpu":
            child_env.setdefault("OMP_NUM_THREADS", str(max(1, cfg.cpu_threads or 1)))
        proc = subprocess.Popen(cmd, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        tail: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            log(line)
            tail = (tail + [line])[-40:]
        if proc.wait() != 0:
            raise LaunchError(f"torchrun exited with {proc.returncode}:\n" + "\n".join(tail))
        if Path(summary_path).exists():
            return json.loads(Path(summary_path).read_text())
        if plan.nnodes > 1:  # global rank 0 ran on another machine; it wrote the run's summary.json
            from storage import uri as su

            written = su.join(run_uri, "summary.json")
            if stop_at_step is None and su.exists(written):
                return json.loads(su.read_bytes(written))
            return {"run_uri": run_uri, "node_rank": plan.node_rank, "world_size": plan.world_size}
        raise LaunchError("torchrun exited without a summary")
