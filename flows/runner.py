"""Where a flow's part tasks run: threads in the flow's process (default) or a Dask cluster.

The choice is part of the flow's typed parameters, so a deployment, `lvd curate` and a test pick
it the same way. `use_task_runner(cfg)` starts (or connects to) the runner once per flow run and
makes it the one `flows.stages.map_parts` submits every part to; the stage functions do not change.
Sockets of local clusters bind to 127.0.0.1 unless told otherwise, and a cluster address that
cannot be reached is refused, naming it, before any stage starts.
"""
from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

_ACTIVE: ContextVar[Any | None] = ContextVar("lvd_task_runner", default=None)


class RunnerUnreachable(ConnectionError):
    """The configured cluster address does not accept connections."""


class RunnerConfig(BaseModel):
    """The Prefect task runner that runs each stage's parts."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["thread", "dask"] = Field(
        "thread", description="thread: a thread pool in the flow's process; dask: a Dask cluster's workers.")
    address: str | None = Field(
        None, description="Scheduler of an existing Dask cluster (tcp://host:8786); None starts a local "
        "cluster for the run.")
    n_workers: int = Field(2, ge=1, le=512, description="Worker processes of a local cluster.")
    threads_per_worker: int = Field(1, ge=1, le=256, description="Threads per worker of a local Dask cluster.")
    max_workers: int | None = Field(
        None, ge=1, le=1024, description="Threads of the thread runner; None: Prefect's default.")
    host: str = Field("127.0.0.1", min_length=1,
                      description="Interface a local cluster's scheduler, workers and dashboards bind to "
                      "(each on a free port).")
    connect_timeout: float = Field(5.0, gt=0, le=120, description="Seconds to wait for `address` to answer.")


def address_host_port(address: str, default_port: int) -> tuple[str, int]:
    """(host, port) of `tcp://h:p`, `h:p` or `h`."""
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if not parts.hostname:
        raise ValueError(f"runner.address {address!r} names no host")
    return parts.hostname, parts.port or default_port


def check_reachable(cfg: RunnerConfig) -> None:
    """Refuse an unreachable cluster address before work starts, naming it."""
    if cfg.kind == "thread" or not cfg.address:
        return
    host, port = address_host_port(cfg.address, 8786)
    try:
        with socket.create_connection((host, port), timeout=cfg.connect_timeout):
            return
    except OSError as err:
        raise RunnerUnreachable(
            f"runner.address: cannot reach the {cfg.kind} cluster at {cfg.address!r} "
            f"({host}:{port}: {err.strerror or err}); start it or fix the address"
        ) from None


def build_task_runner(cfg: RunnerConfig):
    """The Prefect task runner `cfg` describes (not started)."""
    if cfg.kind == "thread":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=cfg.max_workers)
    from prefect_dask import DaskTaskRunner

    if cfg.address:
        return DaskTaskRunner(address=cfg.address)
    # Dask's dashboards default to 0.0.0.0:8787 and cannot be switched off: pin them to `host`.
    return DaskTaskRunner(cluster_kwargs={
        "n_workers": cfg.n_workers, "threads_per_worker": cfg.threads_per_worker, "processes": True,
        "host": cfg.host, "dashboard_address": f"{cfg.host}:0", "worker_dashboard_address": f"{cfg.host}:0",
    })


@contextmanager
def use_task_runner(cfg: RunnerConfig) -> Iterator[Any | None]:
    """Run the parts of every stage inside this block on `cfg`'s runner (the thread kind keeps
    the flow's own runner, so a flow given another runner with `with_options` still uses it)."""
    check_reachable(cfg)
    if cfg.kind == "thread" and cfg.max_workers is None:
        yield None
        return
    with build_task_runner(cfg) as runner:
        token = _ACTIVE.set(runner)
        try:
            yield runner
        finally:
            _ACTIVE.reset(token)


def active_task_runner():
    """The runner `use_task_runner` started for this flow run, or None (use the flow's own)."""
    return _ACTIVE.get()
