"""URL resolution and normalisation, so that one image reached by different spellings is fetched once."""

from __future__ import annotations

from urllib.parse import urljoin, urlsplit, urlunsplit
from lvd.errors import LvdError

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_SUB_DELIMS = frozenset("!$&'()*+,;=")
_PATH_SAFE = _UNRESERVED | _SUB_DELIMS | frozenset(":@/")
_QUERY_SAFE = _PATH_SAFE | frozenset("?")
_HEX = frozenset("0123456789abcdefABCDEF")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_STRIP = "\t\n\r\f "


class InvalidURL(LvdError, ValueError):
    """A reference that cannot be turned into a fetchable URL."""


def _normalise_percent(text: str, safe: frozenset[str]) -> str:
    """Decode escapes of unreserved characters, upper-case the rest, escape what is not allowed raw."""
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "%" and i + 2 < n and text[i + 1] in _HEX and text[i + 2] in _HEX:
            decoded = chr(int(text[i + 1 : i + 3], 16))
            out.append(decoded if decoded in _UNRESERVED else "%" + text[i + 1 : i + 3].upper())
            i += 3
            continue
        if ch in safe:
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
        i += 1
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4."""
    out: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if len(out) > 1:
                out.pop()
        elif segment != ".":
            out.append(segment)
    result = "/".join(out)
    if path.endswith(("/.", "/..")):
        result += "/"
    return result if result.startswith("/") else "/" + result


def _normalise_host(host: str) -> str:
    host = host.rstrip(".").lower()
    if not host:
        raise InvalidURL("empty host")
    if host.startswith("["):
        return host
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise InvalidURL(f"bad host {host[:80]!r}") from exc
    if any(c in ascii_host for c in " %<>\"\\^`{|}"):
        raise InvalidURL(f"bad host {host[:80]!r}")
    return ascii_host


def normalise_url(url: str) -> str:
    """Canonical form: lower-case scheme and host, no default port, no fragment, normalised escapes and dots.

    Non-http(s) URLs come back with only the scheme lower-cased, so filters can record why they were refused.
    """
    url = url.strip(_STRIP).replace("\t", "").replace("\n", "").replace("\r", "")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise InvalidURL(str(exc)) from exc
    scheme = parts.scheme.lower()
    if not scheme:
        raise InvalidURL("relative URL without a base")
    if scheme not in _DEFAULT_PORTS:
        return scheme + url[len(parts.scheme) :]
    try:
        port = parts.port
        hostname = parts.hostname
    except ValueError as exc:
        raise InvalidURL(str(exc)) from exc
    if hostname is None:
        raise InvalidURL("missing host")
    host = _normalise_host(hostname)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    if parts.username is not None:
        userinfo = _normalise_percent(parts.username, _UNRESERVED | _SUB_DELIMS)
        if parts.password is not None:
            userinfo += ":" + _normalise_percent(parts.password, _UNRESERVED | _SUB_DELIMS)
        netloc = f"{userinfo}@{netloc}"
    path = _remove_dot_segments(_normalise_percent(parts.path or "/", _PATH_SAFE))
    query = _normalise_percent(parts.query, _QUERY_SAFE)
    return urlunsplit((scheme, netloc, path, query, ""))


def resolve_url(base: str, ref: str) -> str:
    """Resolve an HTML reference against the page's base URL and normalise it."""
    ref = ref.strip(_STRIP)
    if not ref:
        raise InvalidURL("empty reference")
    try:
        joined = urljoin(base, ref)
    except ValueError as exc:
        raise InvalidURL(str(exc)) from exc
    return normalise_url(joined)


def origin(url: str) -> str:
    """scheme://host[:port] of a normalised http(s) URL: the unit robots.txt and per-host limits apply to."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def host_of(url: str) -> str:
    """Lower-case host name (IPv6 without brackets) of a normalised URL."""
    return (urlsplit(url).hostname or "").lower()
