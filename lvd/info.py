"""`lvd info URI`: a committed stage's summary in a few readable lines."""
from __future__ import annotations

import json

from storage.commit import CONFIG_FILE, read_commit
from storage.uri import join, read_bytes


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def describe_stage(uri: str) -> str:
    """Counts, config, input digest and bytes of the stage committed at `uri`."""
    commit = read_commit(uri)
    lines = [f"stage        {commit.get('stage')}", f"uri          {uri}"]
    for key in ("committed_at", "code_version", "config_digest", "input_digest"):
        if key in commit:
            lines.append(f"{key:<12} {commit[key]}")
    if "total_bytes" in commit:
        lines.append(f"bytes        {_human_bytes(commit['total_bytes'])} in {commit.get('files', '?')} files")
    counts = commit.get("counts") or {}
    if counts:
        lines.append("counts")
        width = max(len(k) for k in counts)
        lines += [f"  {k:<{width}}  {v}" for k, v in counts.items()]
    for key, value in {**(commit.get("extra") or {}), **(commit.get("timings") or {})}.items():
        lines.append(key)
        if isinstance(value, dict):
            width = max((len(str(k)) for k in value), default=0)
            lines += [f"  {k:<{width}}  {v}" for k, v in value.items()]
        elif isinstance(value, list):
            lines += [f"  {row}" for row in value]
        else:
            lines.append(f"  {value}")
    try:
        config = json.loads(read_bytes(join(uri, CONFIG_FILE)))
    except FileNotFoundError:
        config = None
    if config is not None:
        lines.append("config")
        lines += ["  " + line for line in json.dumps(config, indent=2, sort_keys=True).splitlines()]
    return "\n".join(lines)
