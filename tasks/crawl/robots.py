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


def x_robots_opt_out(values: list[str], agent: str, blocked: list[str]) -> str | None:
    """The first blocked directive that applies to `agent` in X-Robots-Tag header values, else None."""
    blocked_set = {b.lower() for b in blocked}
    agent = agent.lower()
    for value in values:
        scope = None
        for token in value.split(","):
            token = token.strip().lower()
            if ":" in token:
                head, tail = token.split(":", 1)
                if head.strip() not in _VALUED_DIRECTIVES:
                    scope, token = head.strip(), tail.strip()
            if scope in (None, "*", agent) and token in blocked_set:
                return token
    return None


def meta_robots_opt_out(metas: list[tuple[str, str]], agent: str, blocked: list[str]) -> str | None:
    """The first blocked directive in <meta name="robots"|"{agent}" content=...> tags, else None.

    A meta tag named after an agent is the page's form of an agent-scoped header ("agent: directives").
    """
    agent = agent.lower()
    values = [content if name == "robots" else f"{name}: {content}"
              for name, content in metas if name in ("robots", agent)]
    return x_robots_opt_out(values, agent, blocked)
