"""Hands out work round-robin over hosts and never to a host already at its limit, so a slow host
occupies at most its own share of the workers instead of stalling the whole crawl."""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class HostScheduler(Generic[T]):
    def __init__(self, items: Iterable[T], host_of: Callable[[T], str], per_host: int) -> None:
        self.queues: OrderedDict[str, deque[T]] = OrderedDict()
        for item in items:
            self.queues.setdefault(host_of(item), deque()).append(item)
        self.per_host = per_host
        self.active: dict[str, int] = {}
        self.remaining = sum(len(q) for q in self.queues.values())
        self.cond = asyncio.Condition()

    async def take(self) -> tuple[str, T] | None:
        """The next item whose host has a free slot, or None when everything has been handed out."""
        async with self.cond:
            while True:
                if self.remaining == 0:
                    return None
                for host in list(self.queues):
                    queue = self.queues[host]
                    if queue and self.active.get(host, 0) < self.per_host:
                        item = queue.popleft()
                        self.remaining -= 1
                        self.active[host] = self.active.get(host, 0) + 1
                        self.queues.move_to_end(host)  # round-robin: this host goes to the back
                        if not queue:
                            del self.queues[host]
                        return host, item
                await self.cond.wait()

    async def release(self, host: str) -> None:
        async with self.cond:
            self.active[host] -= 1
            self.cond.notify_all()


async def run_per_host(
    items: Iterable[T], host_of: Callable[[T], str], per_host: int, workers: int,
    work: Callable[[T, Callable[[], Awaitable[None]]], Awaitable[None]],
) -> None:
    """Run `work(item, release_host)` over all items with `workers` coroutines; `work` calls `release_host`
    once it no longer talks to the host (e.g. before decoding), and it is called for it otherwise."""
    sched: HostScheduler[T] = HostScheduler(items, host_of, per_host)

    async def worker() -> None:
        while True:
            taken = await sched.take()
            if taken is None:
                return
            host, item = taken
            released = False

            async def release() -> None:
                nonlocal released
                if not released:
                    released = True
                    await sched.release(host)

            try:
                await work(item, release)
            finally:
                await release()

    await asyncio.gather(*(worker() for _ in range(max(1, workers))))
