"""Where a flow's part tasks run: threads in the flow's process (default), a Dask or a Ray cluster.

The choice is part of the flow's typed parameters, so a deployment, `lvd curate` and a test pick
it the same way. `use_task_runner(cfg)` starts (or connects to) the runner once per flow run and
makes it the one `flows.stages.map_parts` submits every part to; the stage functions do not change.
Sockets of local Dask clusters bind to 127.0.0.1 unless told otherwise; a local Ray cluster listens
on every interface whatever it is told, so run it where the network holds only trusted hosts (a
network namespace with loopback alone, or a private cluster network). A cluster address that
cannot be reached is refused, naming it, before any stage starts.
"""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator
from lvd.errors import LvdError

_ACTIVE: ContextVar[Any | None] = ContextVar("lvd_task_runner", default=None)
_IN_FLIGHT: ContextVar[int | None] = ContextVar("lvd_parts_in_flight", default=None)


class RunnerUnreachable(LvdError, ConnectionError):
    """The configured cluster address does not accept connections."""


class RunnerConfig(BaseModel):
    """The Prefect task runner that runs each stage's parts."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["thread", "dask", "ray"] = Field(
        "thread", description="thread: a thread pool in the flow's process; dask: a Dask cluster's workers; "
        "ray: a Ray cluster's workers.")
    address: str | None = Field(
        None, description="An existing cluster: a Dask scheduler (tcp://host:8786), a Ray head's GCS "
        "(host:6379) or Ray client server (ray://host:10001); None starts a local cluster for the run.")
    n_workers: int = Field(2, ge=1, le=512, description="Worker processes of a local Dask cluster; CPUs (parts "
                           "at a time) of a local Ray cluster.")
    threads_per_worker: int = Field(1, ge=1, le=256, description="Threads per worker of a local Dask cluster.")
    max_workers: int | None = Field(
        None, ge=1, le=1024, description="Threads of the thread runner; None: Prefect's default.")
    host: str = Field("127.0.0.1", min_length=1,
                      description="Interface a local Dask cluster's scheduler, workers and dashboards bind to "
                      "(each on a free port). A local Ray cluster ignores it and listens on every interface.")
    object_store_mb: int = Field(
        256, ge=64, le=1_048_576, description="Shared-memory object store of a local Ray cluster, MiB; parts "
        "exchange only URIs and small summaries, so little is needed.")
    connect_timeout: float = Field(5.0, gt=0, le=120, description="Seconds to wait for `address` to answer.")
    max_parts_in_flight: int | None = Field(
        None, ge=1, le=100_000, description="Parts of a stage submitted at a time, so memory does not grow with "
        "the number of parts; None: the parts the runner can run at once (threads: max_workers or the CPU "
        "count; dask: n_workers x threads_per_worker; ray: n_workers), plus as many queued.")

    @model_validator(mode="after")
    def _address_names_a_host(self) -> "RunnerConfig":
        if self.address is not None and self.kind != "thread":
            address_host_port(self.address, default_port(self))
        return self


def default_port(cfg: RunnerConfig) -> int:
    """Port of `address` when it names none: Dask's scheduler, Ray's client server or GCS."""
    if cfg.kind == "ray":
        return 10001 if (cfg.address or "").startswith("ray://") else 6379
    return 8786


def address_host_port(address: str, default_port: int) -> tuple[str, int]:
    """(host, port) of `tcp://h:p`, `h:p` or `h`."""
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        port = parts.port
    except ValueError:
        port = None
        parts = None
    if parts is None or not parts.hostname or address.strip().lower() == "auto":
        raise ValueError(f"runner.address {address!r} names no host and port (tcp://host:8786, host:6379, "
                         "ray://host:10001)")
    return parts.hostname, port or default_port


def check_reachable(cfg: RunnerConfig) -> None:
    """Refuse an unreachable cluster address before work starts, naming it."""
    if cfg.kind == "thread" or not cfg.address:
        return
    host, port = address_host_port(cfg.address, default_port(cfg))
    try:
        with socket.create_connection((host, port), timeout=cfg.connect_timeout):
            return
    except OSError as err:
        raise RunnerUnreachable(
            f"runner.address: cannot reach the {cfg.kind} cluster at {cfg.address!r} "
            f"({host}:{port}: {err.strerror or err}); start it or fix the address"
        ) from None


def build_task_runner(cfg: RunnerConfig, ray_temp_dir: str | None = None):
    """The Prefect task runner `cfg` describes (not started); a local Ray cluster keeps its sockets,
    logs and spill files under `ray_temp_dir`."""
    if cfg.kind == "thread":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=cfg.max_workers)
    if cfg.kind == "ray":
        return build_ray_runner(cfg, ray_temp_dir)
    from prefect_dask import DaskTaskRunner

    if cfg.address:
        return DaskTaskRunner(address=cfg.address)
    # Dask's dashboards default to 0.0.0.0:8787 and cannot be switched off: pin them to `host`.
    return DaskTaskRunner(cluster_kwargs={
        "n_workers": cfg.n_workers, "threads_per_worker": cfg.threads_per_worker, "processes": True,
        "host": cfg.host, "dashboard_address": f"{cfg.host}:0", "worker_dashboard_address": f"{cfg.host}:0",
    })


def build_ray_runner(cfg: RunnerConfig, temp_dir: str | None):
    """prefect-ray's runner: connected to `address`, or a new local cluster of `n_workers` CPUs in
    its own temp dir that serves no dashboard and reports no usage."""
    from prefect_ray import RayTaskRunner

    if cfg.address:
        return RayTaskRunner(address=cfg.address)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # "local": a new cluster even where RAY_ADDRESS or a running cluster would be picked up instead.
    init = {"address": "local", "num_cpus": cfg.n_workers, "include_dashboard": False,
            "object_store_memory": cfg.object_store_mb * 2**20}
    if temp_dir is not None:
        init["_temp_dir"] = temp_dir
    return RayTaskRunner(init_kwargs=init)


@contextmanager
def _local_ray_dir(cfg: RunnerConfig) -> Iterator[str | None]:
    """A short private directory for a local Ray cluster (its unix sockets must fit in 107 bytes),
    removed with everything in it when the run ends."""
    if cfg.kind != "ray" or cfg.address:
        yield None
        return
    path = tempfile.mkdtemp(prefix="lvd-ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def parts_in_flight(cfg: RunnerConfig) -> int:
    """How many parts `map_parts` keeps submitted: twice what the runner runs at once (one running,
    one queued per slot), unless set."""
    if cfg.max_parts_in_flight is not None:
        return cfg.max_parts_in_flight
    if cfg.kind == "thread":
        slots = cfg.max_workers or os.cpu_count() or 1
    elif cfg.kind == "dask":
        slots = cfg.n_workers * cfg.threads_per_worker
    else:
        slots = cfg.n_workers
    return 2 * slots


def max_parts_in_flight() -> int | None:
    """The bound `use_task_runner` set for this flow run (None outside one: no bound)."""
    return _IN_FLIGHT.get()


@contextmanager
def use_task_runner(cfg: RunnerConfig) -> Iterator[Any | None]:
    """Run the parts of every stage inside this block on `cfg`'s runner (the thread kind keeps
    the flow's own runner, so a flow given another runner with `with_options` still uses it)."""
    check_reachable(cfg)
    bound = _IN_FLIGHT.set(parts_in_flight(cfg))
    try:
        if cfg.kind == "thread" and cfg.max_workers is None:
            yield None
            return
        with _local_ray_dir(cfg) as ray_dir, build_task_runner(cfg, ray_dir) as runner:
            token = _ACTIVE.set(runner)
            try:
                yield runner
            finally:
                _ACTIVE.reset(token)
    finally:
        _IN_FLIGHT.reset(bound)


def active_task_runner():
    """The runner `use_task_runner` started for this flow run, or None (use the flow's own)."""
    return _ACTIVE.get()
