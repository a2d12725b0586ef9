"""Typed storage settings: where the dataset root lives and how S3 is reached.

Every value can also come from the environment, so that Prefect workers in other
processes (Dask, Ray, Kubernetes pods) find the same store without extra wiring:
``LVD_S3_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``),
``LVD_S3_CONNECT_TIMEOUT``, ``LVD_S3_READ_TIMEOUT``, ``LVD_S3_MAX_ATTEMPTS``,
``LVD_S3_MULTIPART_CHUNKSIZE``, ``LVD_S3_MIN_TRANSFER_RATE``. Credentials and region always come from the
standard AWS chain (env vars, ``AWS_PROFILE``, shared config files).
"""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field

ENDPOINT_ENV_VARS = ("LVD_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
# The fields a variable of their own sets (endpoint, profile and region follow the AWS chain).
FIELD_ENV_VARS = {
    "root": "LVD_ROOT",
    "connect_timeout": "LVD_S3_CONNECT_TIMEOUT",
    "read_timeout": "LVD_S3_READ_TIMEOUT",
    "max_attempts": "LVD_S3_MAX_ATTEMPTS",
    "multipart_chunksize": "LVD_S3_MULTIPART_CHUNKSIZE",
    "min_transfer_rate": "LVD_S3_MIN_TRANSFER_RATE",
}


def _no_schema_defaults(schema: dict) -> None:
    """Every field here can come from the worker's environment, and a value a run names wins over it. A
    form fills each default its schema shows into the run's parameters (the Prefect UI does), so a
    default in the schema would name `file://./lvd-data` and hide the worker's LVD_ROOT: the schema
    shows none (the fields keep their defaults; each description says what an empty field means)."""
    for name, prop in (schema.get("properties") or {}).items():
        default = prop.pop("default", None)
        if name in FIELD_ENV_VARS:
            prop["description"] = (f"{prop.get('description', '')} Empty: the worker's {FIELD_ENV_VARS[name]}, "
                                   f"else {default}.").strip()


class StorageConfig(BaseModel):
    """Where datasets and runs are stored, and the S3 client's patience."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_no_schema_defaults)

    root: str = Field(
        "file://./lvd-data",
        description="Dataset root: a plain path, file:// URI or s3://bucket/prefix.",
        min_length=1,
    )
    endpoint_url: str | None = Field(
        None,
        description="S3 endpoint for S3-compatible stores (MinIO, SeaweedFS, Ceph); None uses AWS.",
    )
    profile: str | None = Field(None, description="AWS shared-config profile; None uses the default chain.")
    region: str | None = Field(None, description="AWS region; None uses the default chain.")
    connect_timeout: float = Field(5.0, gt=0, le=300, description="Seconds to wait for a TCP connection to S3.")
    read_timeout: float = Field(60.0, gt=0, le=3600, description="Seconds to wait for S3 to answer a request.")
    max_attempts: int = Field(
        4, ge=1, le=20, description="Attempts per S3 request (first try included) before a clear failure."
    )
    multipart_chunksize: int = Field(
        64 * 2**20,
        ge=5 * 2**20,
        le=5 * 2**30,
        description="Part size in bytes for multipart uploads; objects under twice this go up in one PUT.",
    )

    min_transfer_rate: float = Field(
        1 * 2**20,
        gt=0,
        description="Bytes/s an upload must sustain; slower uploads fail (a stalled endpoint never hangs).",
    )

    def upload_deadline(self, nbytes: int) -> float:
        """Seconds after which an upload of ``nbytes`` is abandoned, retries included."""
        # each try may wait out both timeouts; retries back off for up to ~2 s each
        per_try = self.connect_timeout + self.read_timeout + 2.0 + nbytes / self.min_transfer_rate
        return self.max_attempts * per_try

    @classmethod
    def from_env(cls, **overrides: object) -> "StorageConfig":
        """Settings from LVD_S3_* / AWS_* environment variables, then explicit overrides."""
        values: dict[str, object] = {}
        endpoint = next((os.environ[v] for v in ENDPOINT_ENV_VARS if os.environ.get(v)), None)
        if endpoint:
            values["endpoint_url"] = endpoint
        if os.environ.get("AWS_PROFILE"):
            values["profile"] = os.environ["AWS_PROFILE"]
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            values["region"] = region
        for field, var in FIELD_ENV_VARS.items():
            if os.environ.get(var):
                values[field] = os.environ[var]
        values.update(overrides)
        return cls.model_validate(values)

    def to_env(self) -> dict[str, str]:
        """Environment variables that make another process resolve the same store."""
        env = {
            "LVD_ROOT": self.root,
            "LVD_S3_CONNECT_TIMEOUT": str(self.connect_timeout),
            "LVD_S3_READ_TIMEOUT": str(self.read_timeout),
            "LVD_S3_MAX_ATTEMPTS": str(self.max_attempts),
            "LVD_S3_MULTIPART_CHUNKSIZE": str(self.multipart_chunksize),
            "LVD_S3_MIN_TRANSFER_RATE": str(self.min_transfer_rate),
        }
        if self.endpoint_url:
            env["LVD_S3_ENDPOINT_URL"] = self.endpoint_url
        if self.profile:
            env["AWS_PROFILE"] = self.profile
        if self.region:
            env["AWS_DEFAULT_REGION"] = self.region
        return env
