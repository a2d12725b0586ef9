"""The safety stage's record of every decision: one row per crawl-pool image (decisions.parquet)."""

from __future__ import annotations

import pyarrow as pa

BOX_TYPE = pa.struct([pa.field("x", pa.int32()), pa.field("y", pa.int32()), pa.field("w", pa.int32()),
                      pa.field("h", pa.int32())])

DECISIONS_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),  # crawl shard the image came from
        pa.field("output_shard", pa.string()),  # safety shard holding the kept image; null when removed
        pa.field("nsfw_score", pa.float32()),  # null when the classifier is off or the image undecodable
        pa.field("removed", pa.bool_(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),  # "" kept | nsfw | undecodable
        pa.field("n_faces", pa.int32()),  # null when face blurring is off or the image was removed
        pa.field("boxes", pa.list_(BOX_TYPE)),  # blurred regions (face box plus margin), stored-image pixels
        pa.field("blurred", pa.bool_(), nullable=False),
        pa.field("error", pa.string()),
    ]
)


def decision_row(key: str, shard: str, output_shard: str | None, result) -> dict:
    """One row from an ImageResult."""
    boxes = None if result.boxes is None else [dict(zip("xywh", map(int, b))) for b in result.boxes]
    return {
        "key": key,
        "shard": shard,
        "output_shard": output_shard,
        "nsfw_score": result.nsfw_score,
        "removed": bool(result.removed),
        "reason": result.reason,
        "n_faces": None if result.boxes is None else len(result.boxes),
        "boxes": boxes,
        "blurred": result.jpg is not None,
        "error": result.error,
    }
