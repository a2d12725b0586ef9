"""What the dedup stage shows a person: counts per reason and a contact sheet of examples.

``reason_counts_markdown`` and ``contact_sheet_png`` are pure functions (tables and images in,
markdown and PNG bytes out); ``dedup_report`` gathers the example thumbnails from a committed
stage, reading only the crawl shards that hold them. The PNG stays small (64-px thumbnails, a few
rows) so it can be embedded inline in a Prefect artifact.
"""

from __future__ import annotations

import io

from PIL import Image, ImageDraw

from storage.commit import read_commit
from storage.shards import iter_samples, manifest_shards
from storage.tables import SCHEMAS, read_table
from storage.uri import join
from tasks.dedup.decode import decode_rgb
from tasks.dedup.evalsets import iter_eval_images
from tasks.dedup.parts import part_name
from tasks.pictures import LINE_HEIGHT, label_column_width, wrap_label


def reason_counts_markdown(counts: dict) -> str:
    """Markdown table of the commit's counts: pool, kept and removed images per reason."""
    pool = max(1, int(counts.get("pool", 0)))
    rows = ["| | images | share of pool |", "|---|---:|---:|"]
    for name, value in counts.items():
        label = name.replace("removed_", "removed: ")
        share = f"{100 * value / pool:.1f}%" if name != "groups" else ""
        rows.append(f"| {label} | {value:,} | {share} |")
    return "\n".join(rows)


def contact_sheet_png(rows: list[tuple[str, list[Image.Image]]], thumb: int = 64, max_per_row: int = 8) -> bytes:
    """PNG bytes: one labelled row per example, its images as ``thumb``-pixel squares (letterboxed).

    Labels are shown whole: the label column fits the longest (up to 240 px) and longer ones wrap."""
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = label_column_width(measure, [label for label, _ in rows], least=150)
    wrapped = [wrap_label(measure, label, label_w - 8) for label, _ in rows]
    heights = [max(thumb, len(lines) * LINE_HEIGHT) for lines in wrapped]
    height = sum(h + 6 for h in heights) + 6
    width = label_w + max_per_row * (thumb + 4) + 4
    sheet = Image.new("RGB", (width, height), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    y = 6
    for (label, images), lines, h in zip(rows, wrapped, heights):
        ty = y + (h - len(lines) * LINE_HEIGHT) // 2
        for n, line in enumerate(lines):
            draw.text((4, ty + n * LINE_HEIGHT), line, fill=(20, 20, 20))
        for c, img in enumerate(images[:max_per_row]):
            tile = img.convert("RGB").copy()
            tile.thumbnail((thumb, thumb))
            x = label_w + c * (thumb + 4)
            sheet.paste(tile, (x + (thumb - tile.width) // 2, y + (h - tile.height) // 2))
        y += h + 6
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _fetch_images(crawl_stage_uri: str, wanted: dict[str, set[str]]) -> dict[str, Image.Image]:
    out: dict[str, Image.Image] = {}
    for info in manifest_shards(crawl_stage_uri):
        keys = wanted.get(part_name(info.url))
        if not keys:
            continue
        for key, fields in iter_samples(info.url):
            if key in keys and "jpg" in fields:
                img, _ = decode_rgb(fields["jpg"], 64)
                if img is not None:
                    out[key] = img
    return out


def dedup_report(crawl_stage_uri: str, stage_uri: str, eval_sets: list[str] | None = None,
                 max_groups: int = 6) -> tuple[str, bytes]:
    """``(markdown, png)`` for a committed dedup stage: counts per reason and example groups.

    Examples are the largest groups of each reason (``max_groups`` in all); an eval-set row starts
    with the evaluation image that condemned the group, when ``eval_sets`` can be read.
    """
    commit = read_commit(stage_uri)
    groups = read_table(join(stage_uri, "groups.parquet"), SCHEMAS["dedup.groups"]).to_pylist()
    keep = read_table(join(stage_uri, "keep.parquet"), SCHEMAS["dedup.keep"])
    shard_of = dict(zip(keep.column("key").to_pylist(), keep.column("shard").to_pylist()))
    by_reason: dict[str, list[dict]] = {}
    for g in sorted(groups, key=lambda g: (-g["size"], g["group_id"])):
        by_reason.setdefault(g["reason"], []).append(g)
    chosen: list[dict] = []
    while len(chosen) < max_groups and any(by_reason.values()):
        for reason in sorted(by_reason):
            if by_reason[reason] and len(chosen) < max_groups:
                chosen.append(by_reason[reason].pop(0))
    wanted: dict[str, set[str]] = {}
    for g in chosen:
        for key in g["members"][:8]:
            wanted.setdefault(shard_of[key], set()).add(key)
    images = _fetch_images(crawl_stage_uri, wanted)
    eval_images: dict[str, Image.Image] = {}
    needed = {g["eval_image"] for g in chosen if g["eval_image"]}
    for uri in eval_sets or []:
        if not needed - set(eval_images):
            break
        for image_id, data in iter_eval_images(uri):
            if image_id in needed:
                img, _ = decode_rgb(data, 64)
                if img is not None:
                    eval_images[image_id] = img
    rows = []
    for g in chosen:
        members = [images[k] for k in g["members"][:8] if k in images]
        if g["eval_image"] in eval_images:
            members = [eval_images[g["eval_image"]]] + members
        rows.append((f"{g['reason']} (n={g['size']})", members))
    md = "### Dedup\n\n" + reason_counts_markdown(commit["counts"])
    if rows:
        md += "\n\nExample groups, one per row (eval-set rows start with the evaluation image):"
    return md, contact_sheet_png(rows)
