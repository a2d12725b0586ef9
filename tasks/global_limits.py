"""Limits that hold across every worker process, kept by the Prefect server (global concurrency limits).

A semaphore protects only the process that holds it; when several workers crawl at once, only a count
kept in one place holds across them. Every limit is created (or corrected to the configured values)
before its first use, and slots are taken strictly: a missing limit, an unreachable server or a wait past
the timeout is an error naming the limit, never a silently unlimited run.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import math
import random
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from uuid import UUID

import httpx

from storage import uri as storage_uri
from storage.uri import StorageError
from lvd.errors import LvdError

NAME_PREFIX = "lvd"
S3_REQUESTS = f"{NAME_PREFIX}-s3-requests"
# The server's lease bounds: a worker that dies holding a slot gives it back when its lease ends.
MIN_LEASE_SECONDS = 60.0
MAX_LEASE_SECONDS = 86_400.0
POLL_FIRST_SECONDS = 0.02
POLL_MAX_SECONDS = 0.5
_UNSAFE = re.compile(r"[^a-z0-9._-]+")
_ensured: dict[str, tuple[int, float]] = {}
_ensured_lock = threading.Lock()
logger = logging.getLogger(__name__)


class GlobalLimitError(LvdError, RuntimeError):
    """The Prefect server could not create, find or grant a global limit."""


class GlobalLimitTimeout(GlobalLimitError):
    """No slot of a global limit came free within the configured wait."""


def limit_name(kind: str, key: str) -> str:
    """`lvd-{kind}-{key}` in lower-case letters, digits, '.', '_' and '-' (Prefect refuses '/', '%', '&',
    '<', '>' and names travel in URL paths); a key that had to change gets a digest, so two keys never meet."""
    safe = _UNSAFE.sub("_", key.lower()).strip("._-") or "_"
    if safe != key:
        safe = f"{safe}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"
    return f"{NAME_PREFIX}-{kind}-{safe}"


def require_shared_server(what: str) -> str:
    """The Prefect API URL every process reports to. Without one, each process would start its own
    temporary server and no limit would be shared, so that is refused, naming `what` needed it."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise GlobalLimitError(
            f"{what} needs a Prefect server that every worker reaches: set PREFECT_API_URL "
            "(without it each process starts its own temporary server and no limit is shared)"
        )
    return url


async def aensure_limit(name: str, limit: int, slot_decay_per_second: float = 0.0) -> None:
    """Create the global limit `name`, or set its limit, decay and active flag to these values (idempotent;
    workers racing to create it are fine). Done once per process and name unless the values change."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    wanted = (limit, float(slot_decay_per_second))
    with _ensured_lock:
        if _ensured.get(name) == wanted:
            return
    require_shared_server(f"global limit {name!r}")
    try:
        async with get_client() as client:
            try:
                current = await client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                try:
                    await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(
                        name=name, limit=limit, slot_decay_per_second=wanted[1], active=True))
                    current = None
                except ObjectAlreadyExists:  # another worker created it a moment ago
                    current = await client.read_global_concurrency_limit_by_name(name)
            if current is not None and (current.limit, current.slot_decay_per_second, current.active) != (
                    limit, wanted[1], True):
                await client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(
                    limit=limit, slot_decay_per_second=wanted[1], active=True))
    except Exception as exc:
        raise GlobalLimitError(
            f"cannot create or update the Prefect global limit {name!r} (limit {limit}, decay "
            f"{wanted[1]:g}/s): {type(exc).__name__}: {exc}"
        ) from exc
    with _ensured_lock:
        _ensured[name] = wanted


def ensure_limit(name: str, limit: int, slot_decay_per_second: float = 0.0) -> None:
    """`aensure_limit` for synchronous callers (also from a thread that runs an event loop)."""
    from prefect.utilities.asyncutils import run_coro_as_sync

    with _ensured_lock:
        if _ensured.get(name) == (limit, float(slot_decay_per_second)):
            return
    run_coro_as_sync(aensure_limit(name, limit, slot_decay_per_second))


def _forget(name: str) -> None:
    """Next use re-creates the limit (someone may have deleted it while we ran)."""
    with _ensured_lock:
        _ensured.pop(name, None)


def _poll_delay(attempt: int, rng: random.Random) -> float:
    """Short jittered waits between tries. Prefect's own `concurrency()` waits out the server's Retry-After,
    which starts from a 2 s average occupancy and grows with every denial, and renews each lease from a new
    thread: two workers sending 80 requests of 0.1 s under a limit of 2 took 14 s with it, 7 s this way."""
    return min(POLL_MAX_SECONDS, POLL_FIRST_SECONDS * 2**attempt) * (0.5 + rng.random())


class GlobalSlots:
    """Slots of Prefect global concurrency limits, taken with leases over one API client.

    Use as an async context manager (the client lives in the caller's event loop). A lease outlives the
    longest block it guards, so no renewal is needed, and the server takes the slot back if this process
    dies holding it.
    """

    def __init__(self, lease_seconds: float = MIN_LEASE_SECONDS) -> None:
        self.lease_seconds = min(max(MIN_LEASE_SECONDS, lease_seconds), MAX_LEASE_SECONDS)
        self._client = None
        self._rng = random.Random()

    async def __aenter__(self) -> "GlobalSlots":
        from prefect.client.orchestration import get_client

        require_shared_server("global concurrency limits")
        self._client = get_client()
        await self._client.__aenter__()
        return self

    async def __aexit__(self, *exc) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.__aexit__(*exc)

    @asynccontextmanager
    async def hold(self, name: str, limit: int, timeout: float) -> AsyncIterator[None]:
        """Hold one slot of `name` (created with `limit` slots if missing) for the block; past `timeout`
        seconds of waiting raise GlobalLimitTimeout. Waiting never blocks the event loop."""
        lease_id = await self._acquire(name, limit, timeout)
        try:
            yield
        finally:
            await asyncio.shield(self._release(name, lease_id))

    async def _acquire(self, name: str, limit: int, timeout: float):
        if self._client is None:
            raise RuntimeError("GlobalSlots used outside 'async with'")
        deadline = time.monotonic() + timeout
        recreated = False
        for attempt in itertools.count():
            await aensure_limit(name, limit)
            try:
                # never cancelled half-way: a lease the server granted must reach _release
                response = await self._client.increment_concurrency_slots_with_lease(
                    names=[name], slots=1, mode="concurrency", lease_duration=self.lease_seconds)
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 423:  # 423 Locked: the limit is full
                    raise GlobalLimitError(f"Prefect global limit {name!r}: HTTP {exc.response.status_code} "
                                           f"{exc.response.text[:200]}") from None
            except httpx.HTTPError as exc:
                raise GlobalLimitError(f"Prefect global limit {name!r}: {type(exc).__name__}: {exc}") from None
            else:
                granted = response.json()
                if granted.get("limits"):
                    return granted["lease_id"]
                # the limit vanished since we created it: the server granted nothing, so create it again once
                await self._release(name, granted["lease_id"])
                _forget(name)
                if recreated:
                    raise GlobalLimitError(f"Prefect global limit {name!r} does not exist and cannot be created")
                recreated = True
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise GlobalLimitTimeout(
                    f"waited {timeout:g}s for a slot of the Prefect global limit {name!r} ({limit} slots)")
            await asyncio.sleep(min(left, _poll_delay(attempt, self._rng)))

    async def _release(self, name: str, lease_id) -> None:
        try:
            await self._client.release_concurrency_slots_with_lease(lease_id=UUID(str(lease_id)))
        except Exception as exc:  # the lease expires on its own; the request's outcome stands
            logger.warning("releasing a slot of Prefect global limit %r failed (it returns when its lease of "
                           "%gs ends): %s: %s", name, self.lease_seconds, type(exc).__name__, exc)


def rate_limit_size(requests_per_second: float) -> int:
    """Slots of a rate limit: one second's worth of requests may go at once, then they decay at the rate."""
    return max(1, math.ceil(requests_per_second))


@dataclass(frozen=True)
class RateGate:
    """A storage request gate taking one slot of a decaying Prefect limit per S3 request (equal gates are
    one gate, so parts running side by side in one process do not count a request twice)."""

    name: str
    requests_per_second: float
    timeout: float

    def __call__(self, uri: str, action: str) -> None:
        from prefect.concurrency.asyncio import AcquireConcurrencySlotTimeoutError, ConcurrencySlotAcquisitionError
        from prefect.concurrency.sync import rate_limit

        try:
            require_shared_server("the S3 request rate limit")  # this thread may lack the run's settings
            ensure_limit(self.name, rate_limit_size(self.requests_per_second), self.requests_per_second)
        except GlobalLimitError as exc:
            raise StorageError(f"{action} {uri}: {exc}") from None
        try:
            rate_limit(self.name, occupy=1, timeout_seconds=self.timeout, strict=True)
        except AcquireConcurrencySlotTimeoutError:
            raise StorageError(
                f"{action} {uri}: waited {self.timeout:g}s for the S3 request rate limit {self.name!r} "
                f"({self.requests_per_second:g}/s)") from None
        except ConcurrencySlotAcquisitionError as exc:
            _forget(self.name)
            raise StorageError(f"{action} {uri}: S3 request rate limit {self.name!r}: {exc}") from exc


def s3_rate_gate(requests_per_second: float, timeout: float) -> RateGate:
    """The gate for the shared S3 request rate, its limit created or corrected on the server."""
    require_shared_server("the S3 request rate limit")
    gate = RateGate(S3_REQUESTS, requests_per_second, timeout)
    ensure_limit(gate.name, rate_limit_size(requests_per_second), requests_per_second)
    return gate


@contextmanager
def s3_request_rate(requests_per_second: float | None, timeout: float) -> Iterator[None]:
    """S3 requests of this process go at most at the shared rate inside the block (None: unchanged)."""
    if requests_per_second is None:
        yield
        return
    with storage_uri.request_gate(s3_rate_gate(requests_per_second, timeout)):
        yield
