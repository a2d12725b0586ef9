"""robots.txt (RFC 9309 via urllib.robotparser) and robots opt-outs, sent as X-Robots-Tag headers or written in
the page as <meta name="robots"> or <meta name="{agent}"> (one parser for both)."""

from __future__ import annotations

from urllib.robotparser import RobotFileParser

# Directives whose value itself contains a colon; any other "name:" prefix scopes the rest to a user agent.
_VALUED_DIRECTIVES = {"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"}


def parse_robots(status: int | None, body: bytes) -> RobotFileParser:
    """Rules from a robots.txt response: 2xx parsed; 401/403 disallow everything; other 4xx allow everything."""
    rp = RobotFileParser()
    if status is not None and 200 <= status < 300:
        rp.parse(body.decode("utf-8", errors="replace").splitlines())
    elif status in (401, 403):
        rp.disallow_all = True
    else:
        rp.allow_all = True
    rp.modified()
    return rp


# Directives that contain others: `none` is `noindex, nofollow`; `noai` (no AI use of anything on the page)
# covers `noimageai`. A page that writes the wider one opts out of whatever the narrower one would.
_IMPLIES = {"none": ("noindex", "nofollow"), "noai": ("noimageai",)}


def _opts_out(token: str, blocked: set[str]) -> bool:
    return token in blocked or any(t in blocked for t in _IMPLIES.get(token, ()))


def x_robots_opt_out(values: list[str], agent: str, blocked: list[str]) -> str | None:
    """The first blocked directive that applies to `agent` in X-Robots-Tag header values, else None."""
    blocked_set = {b.strip().lower() for b in blocked}
    agent = agent.lower()
    for value in values:
        scope = None
        for token in value.split(","):
            token = token.strip().lower()
            if ":" in token:
                head, tail = token.split(":", 1)
                if head.strip() not in _VALUED_DIRECTIVES:
                    scope, token = head.strip(), tail.strip()
            if scope in (None, "*", agent) and _opts_out(token, blocked_set):
                return token
    return None


def meta_robots_opt_out(metas: list[tuple[str, str]], agent: str, blocked: list[str]) -> str | None:
    """"<meta name>: directive" of the first tag that opts the page out, else None.

    Tags read: <meta name="robots">, <meta name="{agent}"> (the page's form of an agent-scoped header,
    "agent: directives") and <meta http-equiv="X-Robots-Tag"> (a header written in the page; its content
    may scope itself to agents as the header does). Names match case-insensitively.
    """
    agent = agent.lower()
    for name, content in metas:
        if name in ("robots", "x-robots-tag"):
            token = x_robots_opt_out([content], agent, blocked)
        elif name == agent:
            token = x_robots_opt_out([f"{name}: {content}"], agent, blocked)
        else:
            continue
        if token:
            return f"{name}: {token}"
    return None
