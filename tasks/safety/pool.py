"""Run batches through model worker processes with bounded memory, results in input order.

Workers are plain ``python -m tasks.safety.worker`` subprocesses that load the models once:
unlike a multiprocessing pool they never re-import the caller's main module, they work inside
daemonic task-runner processes (Dask workers may not fork multiprocessing children), and no
half-initialised onnxruntime/OpenMP thread pool is copied by a fork. Batches go round-robin,
at most two per worker in flight, so memory is bounded by ``2 x workers x batch_size`` encoded
images however large the shard. A worker that fails or dies fails the part (whose rerun starts
over), with the worker's own error in the message.
"""

from __future__ import annotations

import os
import pickle
import queue
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterable, Iterator

from tasks.safety.config import SafetyConfig
from tasks.safety.process import BatchResult, SafetyModels, SafetyProcessor
from lvd.errors import LvdError

_PKG_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPTH = 2  # batches in flight per worker: one being processed, one waiting in its pipe


class WorkerFailed(LvdError, RuntimeError):
    """A model worker raised or exited; the message carries its error."""


def worker_count(cfg: SafetyConfig) -> int:
    return (os.cpu_count() or 1) if cfg.workers is None else cfg.workers


def _frame(obj) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return len(data).to_bytes(8, "big") + data


class _Worker:
    """One subprocess and a thread that drains its answers, so neither side blocks on a full pipe."""

    def __init__(self, cfg: SafetyConfig, models: SafetyModels) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = _PKG_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["OMP_NUM_THREADS"] = str(cfg.threads_per_worker)
        self.proc = subprocess.Popen([sys.executable, "-m", "tasks.safety.worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env)
        self.answers: queue.Queue = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True, name="safety-worker-reader")
        self.reader.start()
        self.send((cfg.model_dump_json(), models))

    def _read(self) -> None:
        out = self.proc.stdout
        try:
            while True:
                header = out.read(8)
                if len(header) < 8:
                    break
                self.answers.put(pickle.loads(out.read(int.from_bytes(header, "big"))))
        except Exception as exc:  # a broken pipe or a garbled frame: the worker is gone either way
            self.answers.put(WorkerFailed(f"reading from the worker failed: {exc}"))
        self.answers.put(WorkerFailed(f"worker exited (code {self.proc.poll()})"))

    def send(self, obj) -> None:
        try:
            self.proc.stdin.write(_frame(obj))
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the reader reports the exit with the worker's own error

    def receive(self):
        answer = self.answers.get()
        if isinstance(answer, BaseException):
            raise answer if isinstance(answer, WorkerFailed) else WorkerFailed(f"{type(answer).__name__}: {answer}")
        return answer

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(timeout=5)


class BatchRunner:
    """``imap(batches)`` through ``cfg.workers`` processes (or in this process when 0); use ``with``."""

    def __init__(self, cfg: SafetyConfig, models: SafetyModels) -> None:
        self.cfg, self.models = cfg, models
        self.workers = worker_count(cfg)
        self._local: SafetyProcessor | None = None
        self._live: list[_Worker] = []

    def __enter__(self) -> "BatchRunner":
        if self.workers == 0:
            self._local = SafetyProcessor(self.cfg, self.models)
            return self
        try:
            self._live = [_Worker(self.cfg, self.models) for _ in range(self.workers)]
            for worker in self._live:
                worker.receive()  # "ready", or the error that loading the models raised
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for worker in self._live:
            worker.close()
        self._live = []

    def imap(self, batches: Iterable[list[tuple[str, bytes]]]) -> Iterator[BatchResult]:
        if self._local is not None:
            for batch in batches:
                yield self._local.process(batch)
            return
        pending: deque[_Worker] = deque()
        for i, batch in enumerate(batches):
            worker = self._live[i % len(self._live)]
            worker.send(batch)
            pending.append(worker)
            if len(pending) >= DEPTH * len(self._live):
                yield pending.popleft().receive()
        while pending:
            yield pending.popleft().receive()
