"""Prefect artifacts a user reads after a run: stage counts and links to committed URIs."""
from __future__ import annotations

import base64

from prefect.artifacts import create_markdown_artifact, create_table_artifact


def _artifact_key(text: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")[:100]


def publish_stage_summary(flow_name: str, dataset: str, version: str, stages: dict[str, dict]) -> None:
    rows = []
    for stage, info in stages.items():
        for name, value in (info.get("counts") or {}).items():
            rows.append({"stage": stage, "count": name, "value": value})
    create_table_artifact(
        key=_artifact_key(f"{flow_name}-{dataset}-counts"),
        table=rows,
        description=f"{flow_name} {dataset}/{version}: counts per stage",
    )
    links = "\n".join(f"- **{stage}**: `{info['uri']}`" for stage, info in stages.items())
    create_markdown_artifact(
        key=_artifact_key(f"{flow_name}-{dataset}-uris"),
        markdown=f"# {dataset} / {version}\n\nCommitted stages:\n\n{links}\n",
        description=f"{flow_name}: committed stage URIs",
    )


def png_markdown(title: str, png: bytes, caption: str = "") -> str:
    """A picture inline as a data URI: the Prefect UI renders it without any link to storage."""
    encoded = base64.b64encode(png).decode()
    return f"### {title}\n\n![{title}](data:image/png;base64,{encoded})\n\n{caption}\n"


def publish_picture(key: str, title: str, png: bytes, description: str, caption: str = "") -> None:
    create_markdown_artifact(key=_artifact_key(key), markdown=png_markdown(title, png, caption),
                             description=description)


def publish_crawl_reasons(name: str, crawl_uri: str) -> list[dict]:
    """A table of why URLs did not become samples: each reason, its kind, count and meaning (from the crawl
    commit, so a crawl skipped as already committed is reported too)."""
    from storage.commit import read_commit
    from tasks.crawl.report import reasons_table

    commit = read_commit(crawl_uri)
    rows = reasons_table((commit.get("extra") or {}).get("reasons") or {})
    counts = commit.get("counts") or {}
    create_table_artifact(
        key=_artifact_key(f"crawl-reasons-{name}"),
        table=rows or [{"reason": "", "kind": "", "count": 0, "description": "every URL became a sample"}],
        description=f"crawl: why URLs did not become samples ({counts.get('rejected', 0):,} rejected, "
        f"{counts.get('failed', 0):,} failed of {counts.get('images', 0):,} image URLs; rows in records.parquet)",
    )
    return rows


def publish_curation_report(dataset: str, version: str, stages: dict[str, dict], cfg) -> None:
    """What was removed, how the pool clusters, what queries retrieved and what the dataset holds.

    Each picture is a thumbnail sheet (tens of KB), small enough for the artifact database.
    """
    import numpy as np

    from storage.tables import read_table
    from storage.uri import join
    from tasks.dedup.report import dedup_report
    from tasks.retrieve.report import cluster_contact_sheet, cluster_size_histogram_png, neighbour_contact_sheet
    from tasks.shard.report import composition_markdown
    from tasks.shard.write import composition_table

    name = f"{dataset}-{version}"
    pool_uri = stages.get("safety", stages["crawl"])["uri"]
    if "crawl" in stages:
        publish_crawl_reasons(name, stages["crawl"]["uri"])
    if "safety" in stages:
        from tasks.safety.report import blurred_examples, contact_sheet_png, counts_markdown

        examples = blurred_examples(stages["safety"]["uri"])
        sheet = png_markdown("Blurred faces", contact_sheet_png(examples)) if examples else "No face was blurred.\n"
        create_markdown_artifact(key=_artifact_key(f"safety-{name}"), description="safety: removed and blurred",
                                 markdown=counts_markdown(stages["safety"]["counts"], cfg.safety.nsfw.threshold)
                                 + "\n" + sheet)
    if "dedup" in stages:
        markdown, png = dedup_report(pool_uri, stages["dedup"]["uri"], cfg.dedup.eval_sets)
        create_markdown_artifact(key=_artifact_key(f"dedup-{name}"), description="dedup: removals per reason",
                                 markdown=markdown + "\n" + png_markdown("Example duplicate groups", png))
    if "retrieve" in stages:
        uri = stages["retrieve"]["uri"]
        clusters = read_table(join(uri, "assignments.parquet")).column("cluster").to_numpy()
        sizes = np.bincount(clusters[clusters >= 0])
        publish_picture(f"clusters-{name}", "Cluster sizes", cluster_size_histogram_png(sizes),
                        "retrieve: k-means cluster-size histogram", f"{len(sizes)} clusters over {len(clusters)} images")
        publish_picture(f"cluster-samples-{name}", "Sample clusters", cluster_contact_sheet(uri, pool_uri),
                        "retrieve: images of a few clusters")
        for qs in cfg.retrieve.queries:
            if qs.rule == "sample":
                publish_picture(f"neighbours-{qs.name}-{name}", f"Retrieved for {qs.name}",
                                neighbour_contact_sheet(uri, pool_uri, qs),
                                f"retrieve: queries of {qs.name} (first column) and their neighbours")
    if "shards" in stages:
        rows = composition_table(stages["shards"]["uri"])
        create_table_artifact(key=_artifact_key(f"composition-{name}"), table=rows,
                              description="shards: composition per source (cf. DINOv2 Table 15)")
        create_markdown_artifact(key=_artifact_key(f"composition-md-{name}"), markdown=composition_markdown(rows),
                                 description="shards: composition per source")
