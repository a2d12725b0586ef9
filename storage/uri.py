"""One way to reach every store: plain paths, ``file://`` URIs and ``s3://bucket/prefix``.

Writers never leave a half-written object under its final name: local files are
written to a hidden temp name in the same directory and renamed; S3 objects go up in
one PUT, or as a multipart upload that S3 only makes visible when it completes (and
that is aborted on failure). S3 requests have connect/read timeouts and a bounded
number of attempts, and uploads a deadline derived from their size, so an unreachable
or stalled endpoint becomes a :class:`StorageUnavailable` naming the endpoint, never a hang.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import BinaryIO

import fsspec
from fsspec.implementations.local import LocalFileSystem

from storage.config import StorageConfig

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


class StorageError(RuntimeError):
    """A store refused or failed a request after the bounded retries."""


class StorageUnavailable(StorageError):
    """The store could not be reached at all (connection refused, timed out, dropped)."""


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
        fs.pipe_file(path, bytes(data), chunksize=cfg.multipart_chunksize, timeout=deadline)


def put_file_atomic(local_path: str, uri: str) -> None:
    """Publish a finished local file at ``uri`` (rename locally, single PUT or multipart on S3)."""
    fs, path = open_fs(uri)
    if scheme_of(uri) == "file":
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.abspath(local_path) == path:
            return
        tmp = _local_temp_name(path)
        try:
            shutil.copyfile(local_path, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return
    with guard(uri, "uploading"):
        cfg = current_config()
        deadline = S3FS_ATTEMPTS * cfg.upload_deadline(os.path.getsize(local_path))
        fs.put_file(local_path, path, chunksize=cfg.multipart_chunksize, timeout=deadline)


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
