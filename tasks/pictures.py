"""Text on the report pictures (Pillow's default font): labels are wrapped to fit, never cut."""
from __future__ import annotations

import re

from PIL import ImageDraw

LINE_HEIGHT = 12


def wrap_label(draw: ImageDraw.ImageDraw, text: str, width: float) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels, broken after spaces, `/`, `-`, `_` or `.` where it can
    be and inside a word only where one word is wider than a line; every character is kept."""
    lines: list[str] = []
    line = ""
    for token in re.findall(r"[^\s/_.\-]*[\s/_.\-]?", text):
        if not token:
            continue
        if draw.textlength(line + token) <= width:
            line += token
            continue
        if line:
            lines.append(line.rstrip())
            line = ""
        while draw.textlength(token) > width and len(token) > 1:
            cut = 1
            while cut < len(token) and draw.textlength(token[:cut + 1]) <= width:
                cut += 1
            lines.append(token[:cut])
            token = token[cut:]
        line = token
    if line.strip() or not lines:
        lines.append(line.rstrip())
    return lines


def label_column_width(draw: ImageDraw.ImageDraw, labels: list[str], least: int = 60, most: int = 240) -> int:
    """A label column as wide as the longest label needs, within [least, most] pixels (longer ones wrap)."""
    need = max((draw.textlength(t) for t in labels), default=0) + 8
    return int(min(most, max(least, need)))
