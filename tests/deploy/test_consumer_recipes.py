"""docs/consuming.md's recipe, run as written against a real S3 server: `latest`, the Parquet manifests
with plain pyarrow, the shards with plain webdataset through `pipe:aws s3 cp` and presigned URLs, in a
child process that never imports lvd (so no s3 handler of ours is registered)."""
from __future__ import annotations

import hashlib
import os
import io
import json
import shutil
import subprocess
import sys
import textwrap

import pytest
from PIL import Image

from storage.commit import commit_stage, publish_latest, stage_uri
from storage.shards import ShardWriter, write_manifest
from storage.tables import SCHEMAS, write_table
from storage.uri import join


def _jpeg(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (10 * i, 200 - 10 * i, 90)).save(buf, "JPEG")
    return buf.getvalue()


def _publish(root: str, dataset: str, version: str, n_shards: int = 2, per_shard: int = 3) -> list[str]:
    out = stage_uri(root, dataset, version, "shards")
    infos, rows, digests = [], [], []
    for k in range(n_shards):
        w = ShardWriter(join(out, f"lvd-{k:06d}.tar"))
        for j in range(per_shard):
            key, image = f"{k:06d}_{j:06d}", _jpeg(k * per_shard + j)
            digest = hashlib.sha256(image).hexdigest()
            w.write(key, {"jpg": image, "json": {"sha256": digest, "url": f"http://example.com/{key}.jpg"}})
            rows.append({"key": key, "shard": f"lvd-{k:06d}.tar", "source": "pool", "query_dataset": None,
                         "query_id": None, "rule": "sample", "pool_key": None, "pool_shard": None,
                         "similarity": 0.9, "cluster": None, "url": f"http://example.com/{key}.jpg",
                         "sha256": digest})
            digests.append(digest)
        infos.append(w.close())
    write_manifest(out, infos)
    write_table(join(out, "samples.parquet"), rows, SCHEMAS["shards.samples"])
    commit_stage(out, stage="shards", config_digest="c", input_digest="i",
                 counts={"shards": len(infos), "samples": len(rows)})
    publish_latest(root, dataset, version, ["shards"])
    return digests


RECIPE = textwrap.dedent('''
    import json, os, sys
    import boto3, pyarrow.fs, pyarrow.parquet as pq, webdataset as wds
    assert "storage" not in sys.modules and "lvd" not in sys.modules
    bucket, prefix, dataset, endpoint = sys.argv[1:5]
    host = endpoint.removeprefix("http://")
    s3 = boto3.client("s3", endpoint_url=endpoint)
    latest = json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}/{dataset}/latest")["Body"].read())
    version = latest["version"]
    shards = f"{prefix}/{dataset}/{version}/shards"
    fs = pyarrow.fs.S3FileSystem(endpoint_override=host, scheme="http", region=os.environ["AWS_REGION"])
    manifest = pq.read_table(f"{bucket}/{shards}/manifest.parquet", filesystem=fs)
    samples = pq.read_table(f"{bucket}/{shards}/samples.parquet", filesystem=fs, columns=["key", "sha256", "url"])
    urls = manifest.column("url").to_pylist()
    pipes = [f"pipe:aws s3 cp --endpoint-url {endpoint} {u} -" for u in urls]
    def presign(u):
        b, k = u.removeprefix("s3://").split("/", 1)
        return s3.generate_presigned_url("get_object", Params={"Bucket": b, "Key": k}, ExpiresIn=3600)
    https = [presign(u) for u in urls]
    out = {"latest": latest, "nsamples": manifest.column("nsamples").to_pylist(),
           "table": samples.column("sha256").to_pylist()}
    for name, sources in (("pipe", pipes), ("presigned", https)):
        ds = wds.WebDataset(sources, shardshuffle=False).decode("pil").to_tuple("jpg", "json")
        out[name] = [(img.size, meta["sha256"]) for img, meta in ds]
    print(json.dumps(out))
''')


def test_docs_recipe_reads_latest_manifests_and_shards_from_s3(s3_env, s3_bucket, tmp_path):
    if not shutil.which("aws") or not shutil.which("curl"):
        pytest.skip("the recipe's pipe: and presigned readers need the aws CLI and curl")
    root = f"s3://{s3_bucket}/lvd"
    digests = _publish(root, "ds", "v7")
    script = tmp_path / "recipe.py"
    script.write_text(RECIPE)
    proc = subprocess.run([sys.executable, str(script), s3_bucket, "lvd", "ds", s3_env.endpoint],
                          capture_output=True, text=True, timeout=180, env={**os.environ,
                                                                          **s3_env.env()})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["latest"]["version"] == "v7" and set(out["latest"]) == {"version", "stages", "published_at"}
    assert set(out["latest"]["stages"]) == {"shards"} and len(out["latest"]["stages"]["shards"]) == 64
    assert out["nsamples"] == [3, 3] and out["table"] == digests
    for name in ("pipe", "presigned"):
        assert [d for _, d in out[name]] == digests and all(tuple(s) == (32, 24) for s, _ in out[name]), name
