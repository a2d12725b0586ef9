"""`lvd doctor`: check a deployment target before work starts, and say on one screen what is wrong.

A flow that starts against a missing pool, a refused S3 key or an absent GPU fails minutes (or
a queue wait) later, far from the cause. Each check here names the thing that is missing and the
setting or command that fixes it. Network checks use short timeouts, so a dead host costs seconds.
"""
from __future__ import annotations

import base64
import os
import uuid
from dataclasses import dataclass
from urllib.parse import urlparse

import httpx

from storage.config import StorageConfig


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


# --- Prefect API, database, work pools ---------------------------------------------------------
def _api_client(api_url: str, timeout: float) -> httpx.Client:
    headers = {}
    auth = os.environ.get("PREFECT_API_AUTH_STRING")
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    if os.environ.get("PREFECT_API_KEY"):
        headers["Authorization"] = f"Bearer {os.environ['PREFECT_API_KEY']}"
    return httpx.Client(base_url=api_url.rstrip("/"), timeout=timeout, headers=headers)


def check_api(api_url: str | None, timeout: float = 5.0) -> list[Check]:
    """The API answers (/health) and its database is reachable (/ready is 503 while Postgres is down)."""
    if not api_url:
        return [Check("Prefect API", False, "PREFECT_API_URL is not set, so runs would go to a temporary local server",
                      "export PREFECT_API_URL=http://HOST:4200/api (or pass --api-url)")]
    try:
        with _api_client(api_url, timeout) as client:
            health = client.get("/health")
            if health.status_code in (401, 403):
                return [Check("Prefect API", False, f"{api_url} refused the credentials ({health.status_code})",
                              "set PREFECT_API_AUTH_STRING / PREFECT_API_KEY to the server's")]
            health.raise_for_status()
            version = client.get("/admin/version").json()
            ready = client.get("/ready")
    except httpx.HTTPError as err:
        return [Check("Prefect API", False, f"{api_url} unreachable: {type(err).__name__}: {err}",
                      "start the server (docker compose -f deploy/compose.yaml up -d) or fix PREFECT_API_URL")]
    checks = [Check("Prefect API", True, f"{api_url} (server {version})")]
    if ready.status_code != 200:
        message = ready.json().get("message", ready.text) if ready.headers.get("content-type", "").startswith(
            "application/json") else ready.text
        checks.append(Check("Prefect database", False, f"server is up but not ready ({ready.status_code}): {message}",
                            "check PostgreSQL and the server's PREFECT_API_DATABASE_CONNECTION_URL"))
    else:
        checks.append(Check("Prefect database", True, "reachable"))
    return checks


def check_pools(api_url: str, pools: list[str], need_workers: bool = True, timeout: float = 5.0) -> list[Check]:
    """Each pool exists, is not paused and (unless told otherwise) has a worker polling it."""
    checks = []
    with _api_client(api_url, timeout) as client:
        for pool in pools:
            name = f"work pool {pool}"
            resp = client.get(f"/work_pools/{pool}")
            if resp.status_code == 404:
                checks.append(Check(name, False, "missing",
                                    f"prefect work-pool create {pool} --type process (deploy/init.sh does it)"))
                continue
            resp.raise_for_status()
            info = resp.json()
            if info.get("is_paused") or info.get("status") == "PAUSED":
                checks.append(Check(name, False, "paused: runs wait in the queue", f"prefect work-pool resume {pool}"))
                continue
            if not need_workers:
                checks.append(Check(name, True, f"exists ({info.get('type')})"))
                continue
            workers = client.post(f"/work_pools/{pool}/workers/filter", json={}).json()
            online = [w["name"] for w in workers if w.get("status") == "ONLINE"]
            if online:
                checks.append(Check(name, True, f"{info.get('type')}, workers online: {', '.join(online)}"))
            else:
                checks.append(Check(name, False, "no worker online: runs would wait forever in SCHEDULED",
                                    f"prefect worker start --pool {pool} (compose service worker-*)"))
    return checks


# --- object store ------------------------------------------------------------------------------
def check_storage(storage: StorageConfig, timeout: float = 5.0) -> Check:
    """Credentials are accepted and the dataset root is writable (a probe object is written and removed)."""
    root = storage.root
    if not root.startswith("s3://"):
        from storage.uri import RootNotWritable, check_root_writable

        try:
            check_root_writable(root)  # the check every flow runs first
        except (RootNotWritable, ValueError) as err:
            return Check("storage", False, str(err), "fix the path or set LVD_ROOT")
        return Check("storage", True, f"{root} writable")
    import boto3
    import botocore.exceptions as bex
    from botocore.config import Config

    parsed = urlparse(root)
    bucket, prefix = parsed.netloc, parsed.path.strip("/")
    where = f"{root} at {storage.endpoint_url or 'AWS'}"
    try:
        session = boto3.Session(profile_name=storage.profile) if storage.profile else boto3.Session()
        s3 = session.client("s3", endpoint_url=storage.endpoint_url, region_name=storage.region,
                            config=Config(s3={"addressing_style": "path"}, connect_timeout=timeout,
                                          read_timeout=timeout, retries={"max_attempts": 1}))
        s3.head_bucket(Bucket=bucket)  # some stores create a missing bucket on the first PUT
        key = f"{prefix}/_doctor/{uuid.uuid4().hex}".lstrip("/")
        s3.put_object(Bucket=bucket, Key=key, Body=b"ok")
        s3.delete_object(Bucket=bucket, Key=key)
    except bex.NoCredentialsError:
        return Check("storage", False, f"{where}: no S3 credentials found",
                     "set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE")
    except bex.ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        if code in {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "Forbidden"}:
            return Check("storage", False, f"{where}: S3 refused the credentials ({code})",
                         "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY against the store's identities")
        if code in {"NoSuchBucket", "404", "NotFound"}:
            return Check("storage", False, f"{where}: bucket {bucket!r} does not exist",
                         f"create it (deploy/init.sh creates the bucket of LVD_ROOT)")
        return Check("storage", False, f"{where}: {code}: {err}", "")
    except (bex.EndpointConnectionError, bex.ConnectTimeoutError, bex.ReadTimeoutError) as err:
        return Check("storage", False, f"{where}: endpoint unreachable: {err}",
                     "start the store or fix LVD_S3_ENDPOINT_URL")
    return Check("storage", True, f"{where}: credentials accepted, writable")


# --- accelerators ------------------------------------------------------------------------------
def gpu_requirements(config: dict) -> tuple[bool, bool]:
    """(needs CUDA, needs faiss-gpu) from a config tree: any `device: cuda` asks for a GPU, and then
    any `use_gpu` that is on asks for faiss-gpu too."""
    devices, faiss_flags = [], []

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "device":
                    devices.append(value)
                elif key == "use_gpu":
                    faiss_flags.append(value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(config)
    cuda = "cuda" in devices
    return cuda, cuda and any(flag not in (False, "never") for flag in faiss_flags)


def faiss_distributions() -> list[str]:
    """Installed faiss wheels: faiss-cpu and faiss-gpu* all write the same faiss/ package, so two of them
    overwrite each other's files and the import that results is whichever unpacked last."""
    from importlib.metadata import distributions

    names = {(d.metadata["Name"] or "").lower().replace("_", "-") for d in distributions()}
    return sorted(n for n in names if n == "faiss" or n.startswith("faiss-"))


def check_faiss_install(installed: list[str] | None = None) -> Check | None:
    """A mixed CPU + GPU faiss install, with the commands that leave exactly one build (None when fine)."""
    installed = faiss_distributions() if installed is None else installed
    cpu = [n for n in installed if n == "faiss-cpu"]
    gpu = [n for n in installed if n.startswith("faiss-gpu")]
    if not (cpu and gpu):
        return None
    both = " ".join(cpu + gpu)
    return Check("faiss install", False, f"mixed install: {', '.join(cpu + gpu)} share one faiss/ package",
                 f"pip uninstall -y {both} && pip install {gpu[0]}   (or pip install faiss-cpu on a CPU host)")


def check_gpu(need_cuda: bool, need_faiss_gpu: bool) -> list[Check]:
    checks = []
    mixed = check_faiss_install()
    if mixed is not None:
        checks.append(mixed)
    if need_cuda:
        import torch

        if torch.cuda.is_available():
            names = {torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())}
            checks.append(Check("GPU", True, f"{torch.cuda.device_count()} x {', '.join(sorted(names))}"))
        else:
            build = "CPU-only torch build" if torch.version.cuda is None else f"CUDA {torch.version.cuda} build, no device"
            checks.append(Check("GPU", False, f"config asks for device=cuda but torch sees no GPU ({build})",
                                "run on the lvd-gpu pool (image lvd:cuda) or set device: cpu"))
    if need_faiss_gpu:
        try:
            import faiss

            n = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        except ImportError:
            n = -1
        if n > 0:
            checks.append(Check("faiss-gpu", True, f"{n} GPU(s) visible to faiss"))
        else:
            checks.append(Check("faiss-gpu", False, "faiss is not installed" if n < 0 else "faiss sees no GPU "
                                "(faiss-cpu build or no device)", "install the gpu extra: pip install -e '.[gpu]'"))
    return checks


# --- all together ------------------------------------------------------------------------------
def run_checks(api_url: str | None, pools: list[str], storage: StorageConfig | None, config: dict | None = None,
               need_workers: bool = True, timeout: float = 5.0) -> list[Check]:
    checks = check_api(api_url, timeout)
    api_ok = all(c.ok for c in checks)
    if pools:
        if api_ok:
            checks += check_pools(api_url, pools, need_workers, timeout)
        else:
            checks.append(Check("work pools", False, f"not checked ({', '.join(pools)}): the API is not usable"))
    if storage is not None:
        checks.append(check_storage(storage, timeout))
    checks += check_gpu(*gpu_requirements(config or {}))
    return checks


def render(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{'ok  ' if c.ok else 'FAIL'}  {c.name:<{width}}  {c.detail}")
        if not c.ok and c.fix:
            lines.append(f"      {'':<{width}}  -> {c.fix}")
    bad = sum(not c.ok for c in checks)
    lines.append("ready" if not bad else f"{bad} problem(s): fix them before starting runs")
    return "\n".join(lines)
