#!/bin/sh
# One-shot setup of a fresh stack (compose service `init`; safe to run again):
# work pools, the dataset bucket, every deployment of prefect.yaml, then `lvd doctor`.
set -eu
cd "${LVD_PROJECT_DIR:-/opt/lvd}"
prefect --no-prompt work-pool create lvd-cpu --type process --overwrite
prefect --no-prompt work-pool create lvd-gpu --type process --overwrite
python - <<'PY'
from urllib.parse import urlparse

import boto3
from botocore.config import Config
from storage.config import StorageConfig

cfg = StorageConfig.from_env()
bucket = urlparse(cfg.root).netloc  # LVD_ROOT=s3://BUCKET/prefix
s3 = boto3.client("s3", endpoint_url=cfg.endpoint_url, region_name=cfg.region,
                  config=Config(s3={"addressing_style": "path"}))
if bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
    s3.create_bucket(Bucket=bucket)
print(f"bucket s3://{bucket} ready")
PY
prefect --no-prompt deploy --all
lvd doctor --no-workers
