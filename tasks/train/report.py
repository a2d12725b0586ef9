"""Human-readable views of a run: k-NN curve and training phases as markdown tables, a small PNG line chart."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw


def knn_curve(summary: dict, k: int = 20) -> list[tuple[int, float]]:
    """(step, top-1 at ``k``) pairs from a run summary, in step order."""
    key = f"knn_top1_k{k}"
    return sorted((int(s), float(r[key])) for s, r in summary.get("knn", {}).items() if key in r)


def phase_of_step(summary: dict, step: int) -> str:
    """Name of the phase that trained up to ``step`` (steps done; step 0 is the first phase)."""
    phases = summary.get("phases") or []
    for p in phases:
        if step <= p["end_step"]:
            return p["name"]
    return phases[-1]["name"] if phases else ""


def knn_markdown(summary: dict) -> str:
    """k-NN per evaluated step; a phase column when the run has a high-resolution phase."""
    rows = sorted(summary.get("knn", {}).items(), key=lambda kv: int(kv[0]))
    if not rows:
        return "_no k-NN evaluation in this run_"
    with_phase = len(summary.get("phases") or []) > 1
    ks = sorted({int(c.rsplit("k", 1)[1]) for _, r in rows for c in r if c.startswith("knn_top1_k")})
    head = "| step | " + ("phase | " if with_phase else "") + " | ".join(f"top-1 k={k}" for k in ks) + " | eff. rank |"
    sep = "|" + "---|" * (len(ks) + 2 + with_phase)
    lines = [head, sep]
    for step, r in rows:
        cells = [f"{100 * r[f'knn_top1_k{k}']:.1f}%" if f"knn_top1_k{k}" in r else "" for k in ks]
        if with_phase:
            cells.insert(0, phase_of_step(summary, int(step)))
        rank = r.get("feature_effective_rank")
        rank_cell = f"{rank:.1f}" if rank is not None else ""
        lines.append(f"| {step} | " + " | ".join(cells) + f" | {rank_cell} |")
    return "\n".join(lines)


def phases_markdown(summary: dict) -> str:
    """One row per training phase: its steps and sizes, and what it measured."""
    phases = summary.get("phases") or []
    if not phases:
        return "_no phases recorded in this run_"
    lines = [
        "| phase | steps | global crops | local crops | batch per process | images/s | peak memory | total loss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in phases:
        ips, mem, loss = p.get("images_per_s"), p.get("peak_memory_mb"), (p.get("final") or {}).get("total_loss")
        lines.append(
            f"| {p['name']} | {p['start_step'] + 1}-{p['end_step']} | {p['global_crops_size']} px "
            f"| {p['local_crops_size']} px | {p['batch_size_per_rank']} "
            f"| {f'{ips:.1f}' if ips is not None else ''} | {f'{mem:.0f} MB' if mem is not None else ''} "
            f"| {f'{loss:.4f}' if loss is not None else ''} |"
        )
    return "\n".join(lines)


def line_chart_png(points: list[tuple[float, float]], width: int = 360, height: int = 200, title: str = "") -> bytes:
    """A minimal line chart (axes, min/max labels, polyline) as PNG bytes."""
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 44, width - 12, 22, height - 24
    draw.rectangle([left, top, right, bottom], outline=(160, 160, 160))
    if title:
        draw.text((left, 4), title, fill=(0, 0, 0))
    if points:
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
        y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1e-6
        pad = 0.05 * (y1 - y0)
        y0, y1 = y0 - pad, y1 + pad

        def to_px(x, y):
            return (left + (x - x0) / (x1 - x0) * (right - left), bottom - (y - y0) / (y1 - y0) * (bottom - top))

        pts = [to_px(x, y) for x, y in points]
        if len(pts) > 1:
            draw.line(pts, fill=(31, 119, 180), width=2)
        for px, py in pts:
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=(31, 119, 180))
        draw.text((2, top - 4), f"{y1:.3g}", fill=(0, 0, 0))
        draw.text((2, bottom - 8), f"{y0:.3g}", fill=(0, 0, 0))
        draw.text((left, bottom + 6), f"{x0:g}", fill=(0, 0, 0))
        draw.text((right - 30, bottom + 6), f"{x1:g}", fill=(0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()
