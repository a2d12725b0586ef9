"""A pool of decode/resize worker processes driven from the event loop.

Workers are plain `python -m tasks.crawl.decode_worker` subprocesses: they start in ~0.5 s whatever the
parent imported, a crash or a hang costs only the image being decoded (the worker is replaced), and the
event loop never blocks on Pillow.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import sys

from tasks.crawl import reasons
from tasks.crawl.imaging import ImageParams, Processed, Refused

_PKG_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Worker:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def ask(self, payload: bytes) -> bytes:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(len(payload).to_bytes(4, "big") + payload)
        await self.proc.stdin.drain()
        size = int.from_bytes(await self.proc.stdout.readexactly(4), "big")
        return await self.proc.stdout.readexactly(size)

    async def kill(self) -> None:
        if self.proc.returncode is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
        await self.proc.wait()


class DecodePool:
    """`await pool.run(data, params)` decodes in one of `workers` processes; use `async with`."""

    def __init__(self, workers: int, timeout: float = 60.0) -> None:
        self.workers = workers
        self.timeout = timeout
        self._idle: asyncio.Queue[_Worker] | None = None
        self._all: set[_Worker] = set()
        self.replaced = 0

    async def _spawn(self) -> _Worker:
        env = dict(os.environ)
        env["PYTHONPATH"] = _PKG_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("OMP_NUM_THREADS", "1")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tasks.crawl.decode_worker",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
        )
        worker = _Worker(proc)
        self._all.add(worker)
        return worker

    async def __aenter__(self) -> "DecodePool":
        self._idle = asyncio.Queue()
        for worker in await asyncio.gather(*(self._spawn() for _ in range(self.workers))):
            self._idle.put_nowait(worker)
        return self

    async def __aexit__(self, *exc) -> None:
        for worker in list(self._all):
            if worker.proc.stdin is not None:
                worker.proc.stdin.close()
        for worker in list(self._all):
            try:
                await asyncio.wait_for(worker.proc.wait(), 5)
            except asyncio.TimeoutError:
                await worker.kill()
        self._all.clear()

    async def _replace(self, worker: _Worker) -> None:
        self._all.discard(worker)
        await worker.kill()
        self.replaced += 1
        assert self._idle is not None
        self._idle.put_nowait(await self._spawn())

    async def run(self, data: bytes, params: ImageParams) -> Processed | Refused:
        assert self._idle is not None, "use DecodePool as an async context manager"
        payload = pickle.dumps((data, params), protocol=pickle.HIGHEST_PROTOCOL)
        for _ in range(2):
            worker = await self._idle.get()
            try:
                answer = await asyncio.wait_for(worker.ask(payload), self.timeout)
            except asyncio.TimeoutError:
                await self._replace(worker)
                return Refused(reasons.DECODE_TIMEOUT, f"no answer within {self.timeout:g} s")
            except (asyncio.IncompleteReadError, BrokenPipeError, ConnectionResetError):
                await self._replace(worker)  # the worker died on this image (or before): try once more
                continue
            except BaseException:
                await self._replace(worker)  # cancelled mid-answer: the worker's stream is out of step
                raise
            self._idle.put_nowait(worker)
            return pickle.loads(answer)
        return Refused(reasons.WORKER_CRASHED, "decode worker died twice on this image")
