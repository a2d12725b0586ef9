"""Markdown for the curated dataset's composition (the lead publishes it as a Prefect artifact)."""

from __future__ import annotations

COLUMNS = ("dataset", "rule", "queries", "candidates", "collisions", "capped", "final")


def composition_markdown(rows: list[dict], title: str = "Curated dataset composition") -> str:
    """A table in the spirit of DINOv2's Table 15: per query set, what was asked, found, lost and kept."""
    total = sum(int(r["final"]) for r in rows)
    lines = [f"### {title}", "", "| " + " | ".join(COLUMNS) + " | share |", "|" + "---|" * (len(COLUMNS) + 1)]
    for r in rows:
        share = f"{100 * int(r['final']) / total:.1f}%" if total else "-"
        cells = [str(r[c]) if c in ("dataset", "rule") else f"{int(r[c]):,}" for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + f" | {share} |")
    lines.append(f"| **total** | | | | | | **{total:,}** | 100% |" if total else "| **total** | | | | | | **0** | - |")
    return "\n".join(lines) + "\n"
