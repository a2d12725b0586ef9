"""What the safety stage shows a person: counts removed and blurred, and a contact sheet.

``counts_markdown`` and ``contact_sheet_png`` are pure (counts and images in, markdown and PNG
bytes out). ``blurred_examples`` gathers stored, already blurred images from a committed stage,
so the sheet shows nothing identifiable; removed (NSFW) images are never read back or shown.
Thumbnails are small (96 px) so the PNG can be embedded inline in a Prefect artifact.
"""

from __future__ import annotations

import base64
import io

import pyarrow.compute as pc
from PIL import Image, ImageDraw

from storage.shards import iter_samples
from storage.tables import read_table
from storage.uri import join
from tasks.safety.decisions import DECISIONS_SCHEMA
from tasks.safety.faces import Box

_LABELS = {
    "samples": "crawl images screened",
    "kept": "kept",
    "removed": "removed",
    "removed_nsfw": "removed: NSFW score above threshold",
    "removed_undecodable": "removed: undecodable",
    "blurred": "kept images with faces blurred",
    "faces": "face regions blurred",
}


def counts_markdown(counts: dict, threshold: float | None = None) -> str:
    """Markdown table of the commit's counts with each as a share of the screened images."""
    total = max(1, int(counts.get("samples", 0)))
    lines = ["| | images | share |", "|---|---:|---:|"]
    for name, label in _LABELS.items():
        if name not in counts:
            continue
        share = "" if name == "faces" else f"{100 * counts[name] / total:.1f}%"
        lines.append(f"| {label} | {counts[name]:,} | {share} |")
    if threshold is not None:
        lines.append(f"\nNSFW threshold: {threshold:g} (every removal is listed with its score in decisions.parquet)")
    return "\n".join(lines)


def contact_sheet_png(examples: list[tuple[str, bytes, list[Box]]], thumb: int = 96, per_row: int = 6) -> bytes:
    """PNG bytes: the blurred images as ``thumb``-pixel tiles, blurred regions outlined, keys below."""
    label_h = 14
    n = max(1, len(examples))
    cols = min(per_row, n)
    rows = (n + per_row - 1) // per_row
    sheet = Image.new("RGB", (cols * (thumb + 6) + 6, rows * (thumb + label_h + 6) + 6), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    if not examples:
        draw.text((8, thumb // 2), "no faces blurred", fill=(80, 80, 80))
    for i, (key, jpg, boxes) in enumerate(examples):
        img = Image.open(io.BytesIO(jpg)).convert("RGB")
        scale = thumb / max(img.size)
        small = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                           Image.Resampling.BILINEAR)
        x0 = 6 + (i % per_row) * (thumb + 6)
        y0 = 6 + (i // per_row) * (thumb + label_h + 6)
        ox, oy = x0 + (thumb - small.width) // 2, y0 + (thumb - small.height) // 2
        sheet.paste(small, (ox, oy))
        for x, y, w, h in boxes:
            draw.rectangle([ox + x * scale, oy + y * scale, ox + (x + w) * scale - 1, oy + (y + h) * scale - 1],
                           outline=(230, 40, 40))
        draw.text((x0, y0 + thumb + 1), key[-14:], fill=(40, 40, 40))
    buf = io.BytesIO()
    sheet.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def report_markdown(counts: dict, threshold: float | None, sheet_png: bytes | None) -> str:
    """The counts table and, when given, the contact sheet inline as a data URI (renders in Prefect artifacts)."""
    text = "## Safety: NSFW removal and face blurring\n\n" + counts_markdown(counts, threshold)
    if sheet_png:
        text += ("\n\n### Examples of blurred faces\n\n"
                 f"![blurred faces](data:image/png;base64,{base64.b64encode(sheet_png).decode()})")
    return text + "\n"


def blurred_examples(stage_uri: str, limit: int = 12) -> list[tuple[str, bytes, list[Box]]]:
    """Up to ``limit`` stored images whose faces were blurred, with their regions, from a committed stage."""
    table = read_table(join(stage_uri, "decisions.parquet"), schema=DECISIONS_SCHEMA)
    table = table.filter(pc.field("blurred")).slice(0, limit)
    wanted: dict[str, dict[str, list[Box]]] = {}
    for row in table.to_pylist():
        boxes = [(b["x"], b["y"], b["w"], b["h"]) for b in row["boxes"] or []]
        wanted.setdefault(row["output_shard"], {})[row["key"]] = boxes
    out = []
    for shard, keys in wanted.items():
        for key, fields in iter_samples(shard):
            if key in keys:
                out.append((key, fields["jpg"], keys[key]))
    return out
