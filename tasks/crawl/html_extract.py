"""Image references from HTML: <img src|srcset|data-src|data-srcset> and <picture><source srcset>, plus the
page's <meta name=... content=...> pairs, which may carry robots opt-outs (see robots.meta_robots_opt_out).

Built on the stdlib tolerant parser: unclosed tags, junk bytes and absurd attributes never raise; attribute
values longer than the URL limit are kept so the caller can record them as too long.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Literal

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]{1,40})""", re.I)
_WS = " \t\n\r\f"


@dataclass(frozen=True)
class SrcsetCandidate:
    url: str
    width: float | None  # from a "w" descriptor
    density: float  # from an "x" descriptor (1.0 if none)


def parse_srcset(value: str) -> list[SrcsetCandidate]:
    """Split a srcset into candidates the way browsers do (URLs may contain commas; descriptors may not)."""
    out: list[SrcsetCandidate] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and (value[i] in _WS or value[i] == ","):
            i += 1
        if i >= n:
            break
        start = i
        while i < n and value[i] not in _WS:
            i += 1
        url = value[start:i]
        descriptors: list[str] = []
        if url.endswith(","):
            url = url.rstrip(",")
        else:
            start = i
            depth = 0
            while i < n and (value[i] != "," or depth):
                depth += value[i] == "("
                depth -= value[i] == ")" and depth > 0
                i += 1
            descriptors = value[start:i].split()
        if not url:
            continue
        width, density = None, 1.0
        for desc in descriptors:
            try:
                if desc.endswith("w"):
                    width = float(desc[:-1])
                elif desc.endswith("x"):
                    density = float(desc[:-1])
            except ValueError:
                continue
        out.append(SrcsetCandidate(url, width, density))
    return out


def largest_candidate(candidates: list[SrcsetCandidate]) -> SrcsetCandidate | None:
    """The candidate a browser would pick on the biggest screen: widest by w, else densest by x."""
    if not candidates:
        return None
    return max(candidates, key=lambda c: (c.width is not None, c.width or 0.0, c.density))


@dataclass
class ExtractedPage:
    base_url: str
    refs: list[str] = field(default_factory=list)  # raw references in document order, duplicates kept
    meta_directives: list[tuple[str, str]] = field(default_factory=list)  # (<meta name>, content), lowercase name


class _ImageRefParser(HTMLParser):
    def __init__(self, srcset_mode: Literal["largest", "all"]) -> None:
        super().__init__(convert_charrefs=True)
        self.srcset_mode = srcset_mode
        self.base_href: str | None = None
        self.canonical: str | None = None
        self.picture_depth = 0
        self.refs: list[str] = []
        self.meta_directives: list[tuple[str, str]] = []

    def _srcset_refs(self, value: str | None) -> list[str]:
        if not value:
            return []
        cands = parse_srcset(value)
        if self.srcset_mode == "all":
            return [c.url for c in cands]
        best = largest_candidate(cands)
        return [best.url] if best else []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ("img", "source", "picture", "base", "link", "meta"):
            return
        a: dict[str, str] = {}
        for k, v in attrs:
            if v is not None and k not in a:
                a[k] = v
        if tag == "picture":
            self.picture_depth += 1
        elif tag == "meta":
            name = a.get("name", "").strip(_WS).lower()
            if not name and a.get("http-equiv", "").strip(_WS).lower() == "x-robots-tag":
                name = "x-robots-tag"  # the header written in the page
            if name and a.get("content", "").strip(_WS):
                self.meta_directives.append((name, a["content"].strip(_WS)))
        elif tag == "base":
            if self.base_href is None and a.get("href", "").strip(_WS):
                self.base_href = a["href"].strip(_WS)
        elif tag == "link":
            if self.canonical is None and "canonical" in a.get("rel", "").lower().split() and a.get("href"):
                self.canonical = a["href"].strip(_WS)
        elif tag == "source":
            if self.picture_depth:
                self.refs.extend(self._srcset_refs(a.get("srcset")))
                self.refs.extend(self._srcset_refs(a.get("data-srcset")))
        elif tag == "img":
            self.refs.extend(self._img_refs(a))

    def _img_refs(self, a: dict[str, str]) -> list[str]:
        plain = [a[k] for k in ("data-src", "src") if a.get(k, "").strip(_WS)]
        if self.srcset_mode == "all":
            return plain + self._srcset_refs(a.get("data-srcset")) + self._srcset_refs(a.get("srcset"))
        # largest: one URL per element; srcset candidates supersede the src fallback, data-* (lazy loading)
        # supersedes placeholders.
        for key in ("data-srcset", "srcset"):
            chosen = self._srcset_refs(a.get(key))
            if chosen:
                return chosen
        real = [p for p in plain if not p.strip(_WS).lower().startswith("data:")]
        return real[:1] or plain[:1]

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag == "picture":
            self.picture_depth = max(0, self.picture_depth - 1)

    def handle_endtag(self, tag: str) -> None:
        if tag == "picture":
            self.picture_depth = max(0, self.picture_depth - 1)


def decode_html(body: bytes, content_type: str | None = None) -> str:
    """Bytes to text: charset from the Content-Type header, else a <meta charset>, else UTF-8; junk is replaced."""
    charset = None
    if content_type:
        m = re.search(r"charset\s*=\s*[\"']?([A-Za-z0-9_.:-]+)", content_type, re.I)
        charset = m.group(1) if m else None
    if charset is None:
        m = _META_CHARSET.search(body[:4096])
        charset = m.group(1).decode("ascii") if m else None
    try:
        return body.decode(charset or "utf-8", errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")


def extract_image_refs(html: str, page_url: str, srcset_mode: Literal["largest", "all"] = "largest") -> ExtractedPage:
    """Raw image references of a page and the base they resolve against (<base href>, honoured per the spec)."""
    parser = _ImageRefParser(srcset_mode)
    try:
        parser.feed(html)
        parser.close()
    except (AssertionError, ValueError, IndexError):
        # The stdlib parser is tolerant, but a few malformed declarations still raise; keep what was found.
        pass
    base = page_url
    if parser.base_href:
        from urllib.parse import urljoin

        try:
            base = urljoin(page_url, parser.base_href)
        except ValueError:
            base = page_url
    elif page_url.startswith("file:") and parser.canonical and parser.canonical.startswith(("http://", "https://")):
        base = parser.canonical
    return ExtractedPage(base_url=base, refs=parser.refs, meta_directives=parser.meta_directives)
