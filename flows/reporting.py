"""Prefect artifacts a user reads after a run: stage counts and links to committed URIs."""
from __future__ import annotations

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
