"""Run batches through worker processes with bounded memory, results in input order.

Each worker loads the models once (spawned, not forked: onnxruntime, OpenCV and torch keep
thread pools that a fork would copy half-alive). At most two batches per worker are in flight,
so memory is bounded by ``2 x workers x batch_size`` encoded images however large the shard.
A worker that dies fails the part, whose rerun starts it over.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor

from tasks.safety.config import SafetyConfig
from tasks.safety.process import BatchResult, SafetyModels, SafetyProcessor

_worker: SafetyProcessor | None = None


def _init_worker(cfg_json: str, models: SafetyModels) -> None:
    global _worker
    _worker = SafetyProcessor(SafetyConfig.model_validate_json(cfg_json), models)


def _run_batch(items: list[tuple[str, bytes]]) -> BatchResult:
    return _worker.process(items)


def worker_count(cfg: SafetyConfig) -> int:
    return (os.cpu_count() or 1) if cfg.workers is None else cfg.workers


class BatchRunner:
    """``imap(batches)`` through ``cfg.workers`` processes (or in this process when 0)."""

    def __init__(self, cfg: SafetyConfig, models: SafetyModels) -> None:
        self.cfg, self.models = cfg, models
        self.workers = worker_count(cfg)
        self._local: SafetyProcessor | None = None
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> "BatchRunner":
        if self.workers == 0:
            self._local = SafetyProcessor(self.cfg, self.models)
        else:
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                initargs=(self.cfg.model_dump_json(), self.models),
            )
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def imap(self, batches: Iterable[list[tuple[str, bytes]]]) -> Iterator[BatchResult]:
        if self._local is not None:
            for batch in batches:
                yield self._local.process(batch)
            return
        pending: deque = deque()
        limit = 2 * self.workers
        for batch in batches:
            pending.append(self._pool.submit(_run_batch, batch))
            if len(pending) >= limit:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
