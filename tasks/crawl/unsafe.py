"""Unsafe-site refusal that needs no network: UT1-style category lists and banned words in the URL.

The lists are large (the UT1 adult category alone holds ~4.6M domains), so they are kept as sorted arrays of
64-bit digests rather than Python sets: 8 bytes a name, memory-mapped from a cache file that every crawl
process shares, built once per list version. A digest collision would refuse one innocent host in ~1e11
lookups, which is acceptable for a refusal list.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote, urlsplit

import numpy as np

from storage.uri import open_fs, read_bytes
from tasks.crawl import reasons
from tasks.crawl.config import UnsafeFilterConfig
from lvd.errors import LvdError

_WORD_SPLIT = re.compile(r"[^a-z0-9]+")
_BUILTIN_ARCHIVE = "url_filterblacklistsv0_3_0.tar.gz"  # UT1 adult category, as packaged by datatrove
_BUILTIN_LIST = "datatrove-ut1"


class UnsafeListError(LvdError, ValueError):
    """A configured category list cannot be read or has no usable category."""


def _digest(name: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(name, digest_size=8).digest(), "little")


def _cache_dir() -> str:
    path = os.environ.get("LVD_LIST_CACHE") or os.path.join(tempfile.gettempdir(), "lvd-lists")
    os.makedirs(path, exist_ok=True)
    return path


@dataclass(frozen=True)
class DigestSet:
    """Membership over a sorted uint64 array of name digests."""

    digests: np.ndarray

    @classmethod
    def build(cls, names: list[bytes], cache_key: str) -> "DigestSet":
        path = os.path.join(_cache_dir(), f"{cache_key}.npy")
        if os.path.isfile(path):
            return cls(np.load(path, mmap_mode="r"))
        arr = np.fromiter((_digest(n) for n in names if n), dtype=np.uint64)
        arr = np.unique(arr)
        tmp = f"{path}.{os.getpid()}.tmp.npy"
        np.save(tmp, arr)
        os.replace(tmp, path)
        return cls(np.load(path, mmap_mode="r"))

    def __contains__(self, name: str) -> bool:
        if not len(self.digests):
            return False
        d = np.uint64(_digest(name.encode()))
        i = int(np.searchsorted(self.digests, d))
        return i < len(self.digests) and self.digests[i] == d

    def __len__(self) -> int:
        return len(self.digests)


@dataclass(frozen=True)
class CategoryList:
    """One category of one list: its domains and its URLs (scheme-less, as UT1 writes them)."""

    source: str
    category: str
    domains: DigestSet
    urls: DigestSet


def _lines(data: bytes) -> list[bytes]:
    out = []
    for line in data.splitlines():
        line = line.split(b"#", 1)[0].strip().lower()
        if line:
            out.append(line)
    return out


def _category_files(uri: str) -> dict[tuple[str, str], bytes]:
    """(category, 'domains' | 'urls') -> file bytes, from a .tar.gz or a folder of a UT1-format list."""
    files: dict[tuple[str, str], bytes] = {}
    try:
        if uri.endswith((".tar.gz", ".tgz", ".tar")):
            with tarfile.open(fileobj=io.BytesIO(read_bytes(uri))) as tar:
                for member in tar.getmembers():
                    parts = member.name.strip("./").split("/")
                    if member.isfile() and parts[-1] in ("domains", "urls"):
                        category = parts[-2] if len(parts) >= 2 else "adult"
                        files[(category, parts[-1])] = tar.extractfile(member).read()
        else:
            fs, path = open_fs(uri)
            for name in fs.find(path):
                parts = name.rstrip("/").split("/")
                if parts[-1] in ("domains", "urls") and len(parts) >= 2:
                    with fs.open(name, "rb") as f:
                        files[(parts[-2], parts[-1])] = f.read()
    except (OSError, tarfile.TarError) as exc:
        raise UnsafeListError(f"crawl.unsafe.list_uris: {uri} cannot be read: {type(exc).__name__}: {exc}") from exc
    if not files:
        raise UnsafeListError(f"crawl.unsafe.list_uris: {uri} holds no <category>/domains or <category>/urls file")
    return files


@lru_cache(maxsize=16)
def load_category_lists(uri: str, categories: tuple[str, ...] | None, source: str) -> tuple[CategoryList, ...]:
    """The wanted categories of one list, cached per process (each crawl part reuses them)."""
    files = _category_files(uri)
    found = sorted({c for c, _ in files})
    wanted = found if categories is None else [c for c in found if c in categories]
    out = []
    for category in wanted:
        lists = {}
        for kind in ("domains", "urls"):
            data = files.get((category, kind), b"")
            key = f"{source}-{category}-{kind}-{hashlib.sha256(data).hexdigest()[:16]}"
            lists[kind] = DigestSet.build(_lines(data), key)
        out.append(CategoryList(source, category, lists["domains"], lists["urls"]))
    return tuple(out)


def _datatrove_assets() -> str:
    import importlib.util

    spec = importlib.util.find_spec("datatrove")
    if spec is None or not spec.submodule_search_locations:
        raise UnsafeListError("crawl.unsafe.builtin_lists needs the Python package 'datatrove' (its word and "
                              "domain lists); install it or set crawl.unsafe.builtin_lists=false")
    return os.path.join(list(spec.submodule_search_locations)[0], "assets")


def _word_list(name: str) -> frozenset[str]:
    with open(os.path.join(_datatrove_assets(), name), encoding="utf-8") as f:
        # Multi-word entries ("baby batter") are matched with their separators removed, like the URL's letters.
        return frozenset(_WORD_SPLIT.sub("", w.lower()) for w in f if w.strip() and not w.startswith("#"))


@lru_cache(maxsize=1)
def banned_word_lists() -> tuple[frozenset[str], frozenset[str], re.Pattern]:
    """(banned words, soft-banned words, a pattern of banned sub-words) from datatrove's assets."""
    subwords = sorted(_word_list("banned_subwords.txt"), key=len, reverse=True)
    return (_word_list("banned_words.txt"), _word_list("soft_banned_words.txt"),
            re.compile("|".join(re.escape(w) for w in subwords if w)))


class UnsafeFilter:
    """`check(url)` -> (reason, detail) for a URL of an unsafe site, None otherwise."""

    def __init__(self, cfg: UnsafeFilterConfig) -> None:
        self.lists: list[CategoryList] = []
        self.words = None
        if not cfg.enabled:
            return
        if cfg.builtin_lists:
            archive = os.path.join(_datatrove_assets(), _BUILTIN_ARCHIVE)
            self.lists += load_category_lists("file://" + archive, None, _BUILTIN_LIST)
        for uri in cfg.list_uris:
            self.lists += load_category_lists(uri, tuple(cfg.categories), _source_name(uri))
        if cfg.banned_words:
            self.words = banned_word_lists()

    def check(self, url: str) -> tuple[str, str] | None:
        if not self.lists and self.words is None:
            return None
        parts = urlsplit(url)
        host = (parts.hostname or "").lower().rstrip(".")
        labels = host.split(".")
        suffixes = [".".join(labels[i:]) for i in range(len(labels) - 1)]  # host and every parent domain
        bare = host + (parts.path or "") + (f"?{parts.query}" if parts.query else "")
        for lst in self.lists:
            if any(s in lst.domains for s in suffixes):
                return reasons.UNSAFE_DOMAIN, f"{lst.source}:{lst.category}"
            if len(lst.urls) and any(u in lst.urls for u in {bare.rstrip("/"), bare.rstrip("/").removeprefix("www.")}):
                return reasons.UNSAFE_URL, f"{lst.source}:{lst.category}"
        if self.words is not None:
            banned, soft, subwords = self.words
            text = unquote(host + " " + (parts.path or "") + " " + (parts.query or "")).lower()
            words = set(_WORD_SPLIT.split(text))
            hit = next((w for w in sorted(words) if w in banned), None)
            if hit:
                return reasons.BANNED_WORD, hit
            soft_hits = sorted(words & soft)
            if len(soft_hits) >= 2:
                return reasons.BANNED_WORD, "+".join(soft_hits[:3])
            match = subwords.search(_WORD_SPLIT.sub("", text))
            if match:
                return reasons.BANNED_WORD, match.group(0)
        return None


def _source_name(uri: str) -> str:
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    for ext in (".tar.gz", ".tgz", ".tar"):
        name = name.removesuffix(ext)
    return name or "list"
