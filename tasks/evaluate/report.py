"""The comparison report: one row per model, one column per (set, metric), in Markdown."""

from __future__ import annotations

PERCENT = ("knn_top1", "linear_top1", "linear_heldout_top1", "copy_", "patch_match_")


def comparison_table(rows: list[dict], models) -> list[dict]:
    """Rows of the results pivoted to ``{"model": ..., "params": ..., "<set>/<metric>": value}``."""
    table = []
    for model in models:
        entry = {"model": model.name, "params": model.params}
        for r in rows:
            if r["model"] == model.name:
                entry[f"{r['dataset']}/{r['metric']}"] = round(float(r["value"]), 5)
        table.append(entry)
    return table


def _cell(key: str, value) -> str:
    if isinstance(value, float) and any(p in key for p in PERCENT):
        return f"{100 * value:.1f}"
    if key == "params":
        return f"{value / 1e6:.2f}M" if value else "-"
    return str(value)


def comparison_markdown(table: list[dict], cfg, pictures: dict[str, str],
                        match_pictures: dict[str, str] | None = None,
                        training_flags: dict[str, list[dict]] | None = None) -> str:
    """The report: settings, the comparison table (percent), the flags each trained model's run
    recorded, the PCA and patch-matching pictures."""
    columns = [c for c in dict.fromkeys(k for row in table for k in row) if c not in ("model",)]
    head = "| model | " + " | ".join(columns) + " |"
    lines = [
        "# evaluate-dinov2",
        "",
        f"Image size {cfg.image_size}; k-NN: CLS after the final norm, cosine, T={cfg.knn.temperature}; linear: "
        f"CLS of the last 1/4 blocks +- mean patch, {len(cfg.linear.lrs)} learning rates, chosen on "
        f"{cfg.linear.heldout_fraction:.0%} of train held out, reported on test; copy detection: DISC21 micro-AP and "
        "recall at precision 0.9 on the planted set; patch matching: mutual nearest neighbours of foreground "
        f"patches between a photo and its planted copy, share within {cfg.patch_match.radius:g} patch of the true "
        "location (patch_match_*) and matches per pair (patch_matches_*). Accuracies and AP in percent.",
        "",
        head,
        "|---" * (len(columns) + 1) + "|",
    ]
    for row in table:
        lines.append(f"| {row['model']} | " + " | ".join(_cell(c, row.get(c, "")) if c in row else "" for c in columns) + " |")
    if training_flags:
        lines += ["", "## Training flags", ""]
        for name, flags in training_flags.items():
            if not flags:
                lines.append(f"- {name}: none raised")
            for f in flags:
                lines.append(f"- {name}: **{f['flag']}**: {f['message']}")
    if pictures:
        lines += ["", "## Patch-feature PCA", ""]
        lines += [f"- {name}: ![{name}]({file})" for name, file in pictures.items()]
    if match_pictures:
        lines += ["", "## Patch matching (green: within the radius of the true location, red: not)", ""]
        lines += [f"- {name}: ![{name} matches]({file})" for name, file in match_pictures.items()]
    return "\n".join(lines) + "\n"
