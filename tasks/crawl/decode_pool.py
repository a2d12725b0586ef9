"""A pool of decode/resize worker processes driven from the event loop.

Workers are plain `python -m tasks.crawl.decode_worker` subprocesses: they start in ~0.5 s whatever the
parent imported, a crash or a hang costs only the images queued on that worker (the worker is replaced and
they are retried once), and the event loop never blocks on Pillow. Each worker holds up to `depth` requests,
so it starts on the next image while the previous answer travels back.
"""

from __future__ import annotations

import asyncio
import collections
import os
import pickle
import sys

from tasks.crawl import reasons
from tasks.crawl.imaging import ImageParams, Processed, Refused

_PKG_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class WorkerDied(Exception):
    """The worker exited or was replaced before answering."""


class _Worker:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pending: collections.deque[asyncio.Future] = collections.deque()
        self.retired = False
        self.successor_ready = asyncio.Event()
        self.reader = asyncio.ensure_future(self._read_answers())

    async def _read_answers(self) -> None:
        assert self.proc.stdout is not None
        try:
            while True:
                size = int.from_bytes(await self.proc.stdout.readexactly(4), "big")
                answer = await self.proc.stdout.readexactly(size)
                fut = self.pending.popleft()
                if not fut.done():
                    fut.set_result(answer)
        except (asyncio.IncompleteReadError, ConnectionError, IndexError):
            pass
        finally:
            self._fail_pending()

    def _fail_pending(self) -> None:
        while self.pending:
            fut = self.pending.popleft()
            if not fut.done():
                fut.set_exception(WorkerDied())

    async def ask(self, payload: bytes) -> bytes:
        assert self.proc.stdin is not None
        if self.reader.done() or self.retired:
            raise WorkerDied()
        fut = asyncio.get_running_loop().create_future()
        self.pending.append(fut)
        try:
            self.proc.stdin.write(len(payload).to_bytes(4, "big") + payload)
            await self.proc.stdin.drain()
        except (ConnectionError, RuntimeError):
            if not fut.done():
                fut.set_exception(WorkerDied())
        return await fut

    async def kill(self) -> None:
        if self.proc.returncode is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
        await self.proc.wait()
        await asyncio.gather(self.reader, return_exceptions=True)
        self._fail_pending()


class DecodePool:
    """`await pool.run(data, params)` decodes in one of `workers` processes; use `async with`."""

    def __init__(self, workers: int, timeout: float = 60.0, depth: int = 2) -> None:
        self.workers, self.timeout, self.depth = workers, timeout, depth
        self._live: list[_Worker] = []
        self._slots: asyncio.Semaphore | None = None
        self.replaced = 0

    async def _spawn(self) -> _Worker:
        env = dict(os.environ)
        env["PYTHONPATH"] = _PKG_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("OMP_NUM_THREADS", "1")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tasks.crawl.decode_worker",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
        )
        return _Worker(proc)

    async def __aenter__(self) -> "DecodePool":
        self._live = list(await asyncio.gather(*(self._spawn() for _ in range(self.workers))))
        self._slots = asyncio.Semaphore(self.workers * self.depth)
        return self

    async def __aexit__(self, *exc) -> None:
        for worker in self._live:
            if worker.proc.stdin is not None:
                worker.proc.stdin.close()
        for worker in self._live:
            try:
                await asyncio.wait_for(worker.proc.wait(), 5)
            except asyncio.TimeoutError:
                pass
            await worker.kill()
        self._live = []

    async def _replace(self, worker: _Worker) -> None:
        if worker.retired:  # another request on the same worker is already replacing it
            await worker.successor_ready.wait()
            return
        worker.retired = True
        try:
            self._live[self._live.index(worker)] = await self._spawn()
            self.replaced += 1
        finally:
            worker.successor_ready.set()
        await worker.kill()

    async def run(self, data: bytes, params: ImageParams) -> Processed | Refused:
        assert self._slots is not None, "use DecodePool as an async context manager"
        payload = pickle.dumps((data, params), protocol=pickle.HIGHEST_PROTOCOL)
        async with self._slots:
            tries = 0
            while tries < 2:
                worker = min(self._live, key=lambda w: (w.retired, len(w.pending)))
                if worker.retired:  # all workers are being replaced: wait for a successor
                    await worker.successor_ready.wait()
                    continue
                try:
                    answer = await asyncio.wait_for(worker.ask(payload), self.timeout)
                except asyncio.TimeoutError:
                    await self._replace(worker)
                    return Refused(reasons.DECODE_TIMEOUT, f"no answer within {self.timeout:g} s")
                except WorkerDied:
                    tries += 1  # died on this image or a neighbour's: try once more on a fresh worker
                    await self._replace(worker)
                    continue
                return pickle.loads(answer)
        return Refused(reasons.WORKER_CRASHED, "decode worker died twice on this image")
