"""One way to reach every store: plain paths, ``file://`` URIs and ``s3://bucket/prefix``.

Writers never leave a half-written object under its final name: local files are
written to a hidden temp name in the same directory and renamed; S3 objects go up in
one PUT, or as a multipart upload that S3 only makes visible when it completes (and
that is aborted on failure). S3 requests have connect/read timeouts and a bounded
number of attempts, and uploads a deadline derived from their size, so an unreachable
or stalled endpoint becomes a :class:`StorageUnavailable` naming the endpoint, never a hang.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import os
import re
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import BinaryIO

import fsspec
from fsspec.exceptions import FSTimeoutError
from fsspec.implementations.local import LocalFileSystem

from storage.config import StorageConfig
from lvd.errors import LvdError

# s3fs repeats a request that botocore gave up on this many times in all (payload errors, SlowDown).
S3FS_ATTEMPTS = 2
_configured: StorageConfig | None = None
_fs_cache: dict[tuple, fsspec.AbstractFileSystem] = {}
_sessions: dict[tuple, object] = {}
_fs_lock = threading.Lock()
_local_fs = LocalFileSystem()
# Called as gate(uri, action) before every S3 request made here (a shared request rate, for instance).
RequestGate = Callable[[str, str], None]
_gates: Counter = Counter()
_gates_lock = threading.Lock()
_log = logging.getLogger(__name__)
# S3 allows at most this many parts in one multipart upload.
MAX_UPLOAD_PARTS = 10_000


class StorageError(LvdError, RuntimeError):
    """A store refused or failed a request after the bounded retries."""


class StorageUnavailable(StorageError):
    """The store could not be reached at all (connection refused, timed out, dropped)."""


class RootNotWritable(StorageError):
    """The dataset root cannot be created or written (checked before a flow does any work)."""


def configure(cfg: StorageConfig | None, export_env: bool = False) -> None:
    """Use ``cfg`` for every later ``open_fs`` in this process (None: back to the environment).

    ``export_env`` also writes the settings into ``os.environ`` so child processes inherit them.
    """
    global _configured
    _configured = cfg
    if cfg is not None and export_env:
        os.environ.update(cfg.to_env())


def current_config() -> StorageConfig:
    """The settings ``open_fs`` uses now: those given to ``configure``, else the environment's."""
    return _configured if _configured is not None else StorageConfig.from_env()


def clear_fs_cache() -> None:
    """Forget cached S3 clients (after credentials or endpoint change)."""
    with _fs_lock:
        _fs_cache.clear()


def scheme_of(uri: str) -> str:
    """``"s3"`` or ``"file"``; anything else is refused with the list of supported schemes."""
    if not isinstance(uri, str) or not uri:
        raise ValueError(f"storage URI must be a non-empty string, got {uri!r}")
    if "://" not in uri:
        return "file"
    scheme = uri.split("://", 1)[0].lower()
    if scheme not in ("file", "s3"):
        raise ValueError(f"unsupported storage URI {uri!r}: use a plain path, file:// or s3://bucket/prefix")
    return scheme


def _drop_expect_header(request, **_kwargs) -> None:
    """botocore asks for ``100-continue`` on uploads, and aiohttp then waits for that answer
    with no timeout at all: a stalled endpoint would hang the upload forever. Send the body
    straight away instead, so the read timeout always applies."""
    request.headers.pop("Expect", None)


def _s3_fs(cfg: StorageConfig) -> fsspec.AbstractFileSystem:
    import aiobotocore.session
    import s3fs

    key = (
        os.getpid(),
        cfg.endpoint_url,
        cfg.profile,
        cfg.region,
        cfg.connect_timeout,
        cfg.read_timeout,
        cfg.max_attempts,
        cfg.multipart_chunksize,
        os.environ.get("AWS_ACCESS_KEY_ID"),
        os.environ.get("AWS_SECRET_ACCESS_KEY"),
        os.environ.get("AWS_SESSION_TOKEN"),
    )
    with _fs_lock:
        fs = _fs_cache.get(key)
        if fs is None:
            config_kwargs = {
                "connect_timeout": cfg.connect_timeout,
                "read_timeout": cfg.read_timeout,
                "retries": {"max_attempts": cfg.max_attempts, "mode": "standard"},
                # S3-compatible stores rarely resolve bucket subdomains; AWS accepts both.
                "s3": {"addressing_style": "path" if cfg.endpoint_url else "auto"},
            }
            client_kwargs = {"region_name": cfg.region} if cfg.region else {}
            # One session per profile: it caches the service model, which costs ~1.5 s to load.
            session = _sessions.get((os.getpid(), cfg.profile))
            if session is None:
                session = aiobotocore.session.AioSession(profile=cfg.profile)
                session.register("before-send.s3", _drop_expect_header)
                _sessions[(os.getpid(), cfg.profile)] = session
            fs = s3fs.S3FileSystem(
                session=session,
                # keys from the environment are passed explicitly, since the session caches
                # whatever credentials it resolved first; None falls back to the profile chain
                key=os.environ.get("AWS_ACCESS_KEY_ID") or None,
                secret=os.environ.get("AWS_SECRET_ACCESS_KEY") or None,
                token=os.environ.get("AWS_SESSION_TOKEN") or None,
                endpoint_url=cfg.endpoint_url,
                config_kwargs=config_kwargs,
                client_kwargs=client_kwargs,
                use_listings_cache=False,
                skip_instance_cache=True,
                default_block_size=cfg.multipart_chunksize,
            )
            # botocore already retries with backoff; s3fs adds one retry for payload errors.
            fs.retries = S3FS_ATTEMPTS
            _fs_cache[key] = fs
        return fs


def open_fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem holding ``uri`` and the path to pass to it.

    Local paths come back absolute (``file://./x`` is relative to the working directory);
    S3 paths as ``bucket/key``.
    """
    scheme = scheme_of(uri)
    if scheme == "file":
        path = uri.split("://", 1)[1] if "://" in uri else uri
        if not path:
            raise ValueError(f"storage URI {uri!r} names no path")
        return _local_fs, os.path.abspath(os.path.expanduser(path))
    rest = uri.split("://", 1)[1]
    if not rest.strip("/") or rest.startswith("/"):
        raise ValueError(f"S3 URI {uri!r} names no bucket: expected s3://bucket/prefix")
    return _s3_fs(current_config()), rest.strip("/")


def join(uri: str, *parts: str) -> str:
    """Append path parts to a URI with single slashes, keeping its scheme and form."""
    out = uri.rstrip("/") if uri not in ("/",) else ""
    for part in parts:
        part = str(part).strip("/")
        if not part:
            raise ValueError(f"empty path part joining {uri!r} with {parts!r}")
        if part in (".", "..") or "/../" in f"/{part}/":
            raise ValueError(f"path part {part!r} may not climb directories")
        out = f"{out}/{part}"
    return out


def basename(uri: str) -> str:
    """Last path component of a URI."""
    return uri.rstrip("/").rsplit("/", 1)[-1]


def parent(uri: str) -> str:
    """URI of the directory (prefix) holding ``uri``."""
    return uri.rstrip("/").rsplit("/", 1)[0]


def endpoint_of(uri: str) -> str:
    """Human-readable name of the store behind ``uri`` for error messages."""
    if scheme_of(uri) == "file":
        return "local filesystem"
    return current_config().endpoint_url or "AWS S3 (default endpoint)"


_UNREACHABLE_NAMES = (
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ConnectionClosedError",
    "ClientConnectorError",
    "ServerDisconnectedError",
    "ClientOSError",
    "ServerTimeoutError",
    "FSTimeoutError",
    "TimeoutError",
)


def _is_unreachable(exc: BaseException) -> bool:
    seen = 0
    while exc is not None and seen < 10:
        if type(exc).__name__ in _UNREACHABLE_NAMES or isinstance(exc, (ConnectionError, TimeoutError)):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


@contextlib.contextmanager
def request_gate(gate: RequestGate) -> Iterator[None]:
    """Pass every S3 request of this process through ``gate`` inside the block. Installing an equal gate
    again (parts running side by side) keeps one, so a request is never counted twice."""
    with _gates_lock:
        _gates[gate] += 1
    try:
        yield
    finally:
        with _gates_lock:
            _gates[gate] -= 1
            if _gates[gate] <= 0:
                del _gates[gate]


def _pass_gates(uri: str, action: str) -> None:
    with _gates_lock:
        gates = list(_gates)
    for gate in gates:
        gate(uri, action)


@contextlib.contextmanager
def guard(uri: str, action: str) -> Iterator[None]:
    """Turn low-level client failures into errors that name the URI, the action and the endpoint;
    S3 requests wait for the installed request gates first."""
    if _gates and scheme_of(uri) == "s3":
        _pass_gates(uri, action)
    try:
        yield
    except (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, ValueError, TypeError):
        raise
    except StorageError:
        raise
    except PermissionError as exc:
        raise PermissionError(f"{action} {uri}: access denied by {endpoint_of(uri)} ({exc})") from exc
    except Exception as exc:
        if scheme_of(uri) == "file":
            raise
        if _is_unreachable(exc):
            cfg = current_config()
            detail = str(exc) or "the upload deadline passed without an answer"
            raise StorageUnavailable(
                f"{action} {uri}: S3 endpoint {endpoint_of(uri)} unreachable or stalled "
                f"(connect timeout {cfg.connect_timeout}s, read timeout {cfg.read_timeout}s, "
                f"{cfg.max_attempts} attempts per request; {type(exc).__name__}: {detail})"
            ) from exc
        raise StorageError(
            f"{action} {uri}: failed at {endpoint_of(uri)} ({type(exc).__name__}: {exc})"
        ) from exc


def read_bytes(uri: str) -> bytes:
    """Whole object as bytes; FileNotFoundError naming the URI if it is absent."""
    fs, path = open_fs(uri)
    with guard(uri, "reading"):
        try:
            return fs.cat_file(path)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{uri} does not exist") from exc


def _local_temp_name(path: str) -> str:
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}.tmp-{uuid.uuid4().hex[:12]}")


# The names `_local_temp_name` gives: ".{final name}.tmp-{12 hex digits}".
_TEMP_NAME_RE = re.compile(r"^\..+\.tmp-[0-9a-f]{12}$")


def is_temp_name(name: str) -> bool:
    """Whether ``name`` (a file name, not a path) is the temp name of an unfinished local write."""
    return bool(_TEMP_NAME_RE.match(name))


def remove_temp_files(uri: str) -> list[str]:
    """Delete the temp files that killed local writers left anywhere under ``uri``; returns their paths.

    Only local stores have them: S3 objects go up under their final key (a multipart upload that
    dies is aborted, see :func:`abort_multipart_uploads`). Call it only while nothing writes there.
    """
    if scheme_of(uri) != "file":
        return []
    _, path = open_fs(uri)
    removed = []
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            if is_temp_name(name):
                full = os.path.join(dirpath, name)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(full)
                    removed.append(full)
    return removed


def _fsync_dir(path: str) -> None:
    """Make a rename inside ``path`` durable (best effort: some filesystems refuse to open directories)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- S3 multipart uploads, driven from the calling thread --------------------------------------
# s3fs aborts a failed multipart upload only on ``Exception``: a KeyboardInterrupt, or the
# CancelledError its own deadline raises inside the upload, left the upload open with every part
# stored (and billed) until a lifecycle rule removes it. Here every request of the upload is a
# future the calling thread waits on, so any failure there, BaseException included, cancels the
# parts in flight and aborts the upload before it propagates.
def _s3_submit(fs, method: str, **kwargs) -> concurrent.futures.Future:
    return asyncio.run_coroutine_threadsafe(fs._call_s3(method, **kwargs), fs.loop)


def _s3_wait(future: concurrent.futures.Future, deadline: float | None):
    left = None if deadline is None else deadline - time.monotonic()
    if left is not None and left <= 0:
        raise FSTimeoutError("the upload deadline passed without an answer")
    try:
        return future.result(timeout=left)
    except concurrent.futures.TimeoutError:
        if future.done():  # the request itself timed out
            raise
        raise FSTimeoutError("the upload deadline passed without an answer") from None


def _s3_request(fs, deadline: float | None, method: str, **kwargs):
    future = _s3_submit(fs, method, **kwargs)
    try:
        return _s3_wait(future, deadline)
    except BaseException:
        future.cancel()
        raise


def _abort_deadline() -> float:
    cfg = current_config()
    return time.monotonic() + cfg.max_attempts * (cfg.connect_timeout + cfg.read_timeout + 2.0)


def _abort_upload(fs, bucket: str, key: str, upload_id: str) -> bool:
    """Abort one multipart upload; False (logged) when the store could not be told."""
    try:
        _s3_request(fs, _abort_deadline(), "abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
        return True
    except FileNotFoundError:  # NoSuchUpload: already aborted or completed
        return True
    except Exception as exc:
        _log.warning("could not abort multipart upload %s of s3://%s/%s (%s: %s); abort_multipart_uploads on the "
                     "prefix removes it later", upload_id, bucket, key, type(exc).__name__, exc)
        return False


def _multipart_upload(fs, path: str, chunks: Iterator[bytes | memoryview], deadline: float,
                      progress: Callable[[int], None] | None = None) -> None:
    """Upload ``chunks`` as the parts of one multipart upload of ``path`` (``bucket/key``), at most
    ``fs.max_concurrency`` parts in flight. Whatever interrupts it (an error, a timeout, a
    KeyboardInterrupt or CancelledError, a ``progress`` callback that raises) aborts the upload."""
    bucket, key, _ = fs.split_path(path)
    upload_id = _s3_request(fs, deadline, "create_multipart_upload", Bucket=bucket, Key=key)["UploadId"]
    in_flight: list[tuple[int, int, concurrent.futures.Future]] = []
    done: list[dict] = []
    sent = 0
    concurrency = max(1, int(getattr(fs, "max_concurrency", 1) or 1))

    def finish_oldest() -> None:
        nonlocal sent
        number, size, future = in_flight[0]
        etag = _s3_wait(future, deadline)["ETag"]
        in_flight.pop(0)
        done.append({"PartNumber": number, "ETag": etag})
        sent += size
        if progress is not None:
            progress(sent)

    try:
        for number, chunk in enumerate(chunks, start=1):
            in_flight.append((number, len(chunk), _s3_submit(
                fs, "upload_part", Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=bytes(chunk))))
            while len(in_flight) >= concurrency:
                finish_oldest()
        while in_flight:
            finish_oldest()
        _s3_request(fs, deadline, "complete_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id,
                    MultipartUpload={"Parts": done})
    except BaseException:
        for _, _, future in in_flight:
            future.cancel()
        _abort_upload(fs, bucket, key, upload_id)
        raise
    fs.invalidate_cache(path)


def _part_size(total: int, chunksize: int) -> int:
    return max(chunksize, math.ceil(total / MAX_UPLOAD_PARTS))


def _goes_multipart(total: int, chunksize: int) -> bool:
    # as s3fs decides: one PUT below two parts' worth (and below S3's 5 GiB PUT limit)
    return total >= min(5 * 2**30, 2 * chunksize)


def abort_multipart_uploads(uri: str) -> list[str]:
    """Abort every open multipart upload of a key under the prefix ``uri`` (S3 only; elsewhere a no-op).

    Uploads whose writer was killed before it could abort them stay open, with their parts stored,
    until someone aborts them; a stage calls this when it begins, before any of its writers start.
    Returns the keys whose uploads were aborted.
    """
    if scheme_of(uri) != "s3":
        return []
    fs, path = open_fs(uri)
    bucket, _, prefix = path.partition("/")
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    aborted = []
    with guard(uri, "aborting unfinished uploads under"):
        markers: dict = {}
        while True:
            page = fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix, **markers)
            for upload in page.get("Uploads") or []:
                key = upload["Key"]
                if not key.startswith(prefix):  # a store that ignores Prefix
                    continue
                if _abort_upload(fs, bucket, key, upload["UploadId"]):
                    aborted.append(key)
            if not page.get("IsTruncated"):
                break
            markers = {"KeyMarker": page.get("NextKeyMarker", ""),
                       "UploadIdMarker": page.get("NextUploadIdMarker", "")}
            if not markers["KeyMarker"] and not markers["UploadIdMarker"]:
                break
    return aborted


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write ``data`` so readers see either the old object or the whole new one."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"write_bytes_atomic({uri!r}) needs bytes, got {type(data).__name__}")
    fs, path = open_fs(uri)
    if scheme_of(uri) == "file":
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = _local_temp_name(path)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return
    with guard(uri, "writing"):
        cfg = current_config()
        deadline = S3FS_ATTEMPTS * cfg.upload_deadline(len(data))
        if not _goes_multipart(len(data), cfg.multipart_chunksize):
            fs.pipe_file(path, bytes(data), chunksize=cfg.multipart_chunksize, timeout=deadline)
            return
        view = memoryview(data).cast("B")
        step = _part_size(len(view), cfg.multipart_chunksize)
        _multipart_upload(fs, path, (view[i:i + step] for i in range(0, len(view), step)),
                          time.monotonic() + deadline)


def put_file_atomic(local_path: str, uri: str, progress: Callable[[int], None] | None = None) -> None:
    """Publish a finished local file at ``uri`` (rename locally, single PUT or multipart on S3).

    A local copy is fsynced before its rename, so a crash never leaves an empty file under the final
    name. On S3 a multipart upload that fails or is interrupted in any way is aborted. ``progress``
    is called with the bytes uploaded so far after each multipart part.
    """
    fs, path = open_fs(uri)
    if scheme_of(uri) == "file":
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.abspath(local_path) == path:
            return
        tmp = _local_temp_name(path)
        try:
            with open(local_path, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 8 * 2**20)
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(tmp, path)
            _fsync_dir(os.path.dirname(path))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return
    with guard(uri, "uploading"):
        cfg = current_config()
        size = os.path.getsize(local_path)
        deadline = S3FS_ATTEMPTS * cfg.upload_deadline(size)
        if not _goes_multipart(size, cfg.multipart_chunksize):
            fs.put_file(local_path, path, chunksize=cfg.multipart_chunksize, timeout=deadline)
            return
        step = _part_size(size, cfg.multipart_chunksize)
        with open(local_path, "rb") as f:
            _multipart_upload(fs, path, iter(lambda: f.read(step), b""), time.monotonic() + deadline, progress)


def exists(uri: str) -> bool:
    """Whether an object (or a non-empty prefix / directory) exists at ``uri``."""
    fs, path = open_fs(uri)
    with guard(uri, "checking"):
        return fs.exists(path)


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def list_files(uri: str, suffix: str = "") -> list[str]:
    """Sorted URIs of the files directly under ``uri`` whose names end in ``suffix``.

    Hidden names (temp files of unfinished writes) are left out; a missing directory is empty.
    """
    fs, path = open_fs(uri)
    with guard(uri, "listing"):
        try:
            entries = fs.ls(path, detail=True)
        except FileNotFoundError:
            return []
    names = []
    for entry in entries:
        if entry.get("type") != "file":
            continue
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if name and not _is_hidden(name) and name.endswith(suffix):
            names.append(name)
    return [join(uri, name) for name in sorted(names)]


GLOB_CHARS = "*?["


def is_glob(uri: str) -> bool:
    return any(c in uri for c in GLOB_CHARS)


def glob_files(pattern: str) -> list[str]:
    """Sorted URIs of the files matching ``pattern`` (``*``, ``?``, ``[...]``; ``**`` spans folders),
    in the pattern's own spelling (``s3://``, ``file://`` or a plain path). Hidden names are left out."""
    fs, path = open_fs(pattern)
    scheme = scheme_of(pattern)
    with guard(pattern, "listing"):
        found = fs.glob(path, detail=True)
    out = []
    for name, entry in sorted(found.items()):
        if entry.get("type") != "file" or _is_hidden(name.rstrip("/").rsplit("/", 1)[-1]):
            continue
        if scheme != "file":
            out.append(f"{scheme}://{name}")
        elif pattern.startswith("file://"):
            out.append(f"file://{name}")
        else:
            out.append(name)
    return out


def walk_files(uri: str) -> dict[str, int]:
    """Every non-hidden file under ``uri`` (recursively), as relative path -> size in bytes."""
    fs, path = open_fs(uri)
    with guard(uri, "listing"):
        try:
            found = fs.find(path, detail=True)
        except FileNotFoundError:
            return {}
    root = path.rstrip("/") + "/"
    out = {}
    for name, info in found.items():
        if info.get("type", "file") != "file" or not name.startswith(root):
            continue
        rel = name[len(root):]
        if any(_is_hidden(p) for p in rel.split("/")):
            continue
        out[rel] = int(info.get("size") or 0)
    return dict(sorted(out.items()))


def file_size(uri: str) -> int:
    """Size of one object in bytes."""
    fs, path = open_fs(uri)
    with guard(uri, "checking"):
        try:
            return int(fs.size(path))
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{uri} does not exist") from exc


def remove(uri: str, recursive: bool = False) -> None:
    """Delete an object (or, with ``recursive``, everything under a prefix); absent is fine."""
    fs, path = open_fs(uri)
    with guard(uri, "deleting"):
        try:
            fs.rm(path, recursive=recursive)
        except FileNotFoundError:
            pass


@contextlib.contextmanager
def open_input(uri: str) -> Iterator[BinaryIO]:
    """Binary read stream over ``uri`` (streamed from S3 in blocks, not loaded whole)."""
    fs, path = open_fs(uri)
    with guard(uri, "opening"):
        try:
            f = fs.open(path, "rb")
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{uri} does not exist") from exc
    with f:
        yield f


def check_root_writable(root: str) -> None:
    """Fail fast, naming ``root`` and the reason, unless a probe can be written under it and removed.

    Local roots are created first (with their parents); an S3 root gets a hidden probe object.
    Raises :class:`RootNotWritable` (or :class:`StorageUnavailable` when S3 cannot be reached).
    """
    probe_name = f".lvd-probe-{uuid.uuid4().hex[:12]}"
    if scheme_of(root) == "file":
        _, path = open_fs(root)
        step = "creating the directory"
        try:
            os.makedirs(path, exist_ok=True)
            if not os.path.isdir(path):
                raise NotADirectoryError(f"{path} exists and is not a directory")
            step = "writing a probe file in"
            probe = os.path.join(path, probe_name)
            with open(probe, "wb") as f:
                f.write(b"ok")
            step = "removing the probe file from"
            os.remove(probe)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
            raise RootNotWritable(
                f"storage root {root} is not writable: {step} {path} failed: {reason}{where} "
                f"[{type(exc).__name__}]; set storage.root (or LVD_ROOT) to a writable directory"
            ) from exc
        return
    probe = join(root, probe_name)
    try:
        write_bytes_atomic(probe, b"ok")
        remove(probe)
    except StorageUnavailable:
        raise
    except (OSError, StorageError) as exc:
        raise RootNotWritable(
            f"storage root {root} at {endpoint_of(root)} is not writable: {type(exc).__name__}: {exc}; "
            "check the bucket, the credentials and storage.root (or LVD_ROOT)"
        ) from exc
