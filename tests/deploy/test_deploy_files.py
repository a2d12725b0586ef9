"""deploy/ checked statically (no image can be built or pulled here): every environment variable,
port, pool and path that the Dockerfile, compose file, init script and Kubernetes template name is
one the code reads or the repository has."""
from __future__ import annotations

import asyncio
import json
import os
import re
from urllib.parse import urlparse

import pytest
import yaml

from flows.deployments import CPU_POOL, DEPLOYMENTS, GPU_POOL
from storage.config import StorageConfig
from tests.support.prefect_stack import REPO

DEPLOY = REPO / "deploy"
COMPOSE = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
DOCKERFILE = (DEPLOY / "Dockerfile").read_text()
K8S = json.loads((DEPLOY / "k8s" / "lvd-gpu-job-template.json").read_text())
# Read by the Python interpreter, pip or the shell rather than by any module.
RUNTIME_VARS = {"PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "PIP_DISABLE_PIP_VERSION_CHECK", "PIP_NO_CACHE_DIR",
                "HOME"}


class _Recorder(dict):
    def __init__(self):
        super().__init__()
        self.read: set[str] = set()

    def get(self, key, default=None):
        self.read.add(key)
        return default

    def __getitem__(self, key):
        self.read.add(key)
        raise KeyError(key)

    def __contains__(self, key):
        self.read.add(key)
        return False


def storage_env_vars(monkeypatch) -> set[str]:
    """The variables StorageConfig.from_env looks up (recorded, not listed by hand) and to_env sets."""
    recorder = _Recorder()
    monkeypatch.setattr(os, "environ", recorder)
    StorageConfig.from_env()
    monkeypatch.undo()
    return recorder.read | set(StorageConfig(endpoint_url="http://x", profile="p", region="r").to_env())


def is_prefect_setting(name: str) -> bool:
    """A name Prefect's settings model accepts (aliases such as PREFECT_API_DATABASE_CONNECTION_URL too)."""
    from prefect.settings import Settings
    from prefect.settings.legacy import _get_valid_setting_names

    return name in _get_valid_setting_names(Settings)


def read_by_libraries(name: str) -> bool:
    """botocore reads the AWS credential chain; Prefect's analytics reads DO_NOT_TRACK."""
    import botocore.credentials as creds
    import prefect._internal.analytics.enabled as analytics

    return any(name in open(mod.__file__).read() for mod in (creds, analytics))


@pytest.fixture(scope="module")
def known_vars():
    mp = pytest.MonkeyPatch()
    try:
        names = storage_env_vars(mp)
    finally:
        mp.undo()
    names.add("LVD_PROJECT_DIR") if "$LVD_PROJECT_DIR" in (REPO / "prefect.yaml").read_text() else None
    return names


def check_names(names, known_vars, where):
    unknown = [n for n in names if n not in known_vars and n not in RUNTIME_VARS
               and not (n.startswith("PREFECT_") and is_prefect_setting(n)) and not read_by_libraries(n)]
    assert not unknown, f"{where} names variables nothing reads: {unknown}"


def lvd_services():
    return {name: s for name, s in SERVICES.items() if str(s.get("image", "")).startswith("lvd:")}


def test_compose_env_names_are_read_by_the_code(known_vars):
    for name, service in lvd_services().items():
        check_names(service.get("environment", {}), known_vars, f"compose service {name}")
    assert {"LVD_S3_ENDPOINT_URL", "LVD_ROOT"} <= known_vars


def test_dockerfile_env_and_copies(known_vars):
    env_names = re.findall(r"^\s*(?:ENV\s+)?([A-Z][A-Z0-9_]+)=", DOCKERFILE, re.M)
    check_names(env_names, known_vars, "Dockerfile")
    copies = re.findall(r"^COPY\s+(.+?)\s+\S+$", DOCKERFILE, re.M)
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    for line in copies:
        for src in line.split():
            assert (REPO / src).exists(), f"Dockerfile copies {src}, which the repository lacks"
            assert f"!{src.rstrip('/')}" in [i.rstrip("/") for i in ignore], f"{src} is excluded from the build context"
    assert re.search(r"^FROM .* AS cpu$", DOCKERFILE, re.M) and re.search(r"^FROM .* AS cuda$", DOCKERFILE, re.M)
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    gpu = " ".join(project["optional-dependencies"]["gpu"])
    assert "faiss-gpu" in gpu and "xformers" in gpu and '".[gpu]"' in DOCKERFILE
    torch_pin = next(l for l in (REPO / "constraints.txt").read_text().splitlines() if l.startswith("torch=="))
    assert DOCKERFILE.count(f'"{torch_pin}"') == 2, "both targets install the pinned torch"
    workdir = re.search(r"^WORKDIR (\S+)", DOCKERFILE, re.M).group(1)
    assert f"LVD_PROJECT_DIR={workdir}" in DOCKERFILE.replace(" ", "")
    for service in lvd_services().values():
        if "LVD_PROJECT_DIR" in service.get("environment", {}):
            assert service["environment"]["LVD_PROJECT_DIR"] == workdir


def _port(command: list[str], flag: str) -> int:
    for i, part in enumerate(command):
        if part == flag:
            return int(command[i + 1])
        if part.startswith(flag + "="):
            return int(part.split("=", 1)[1])
    raise AssertionError(f"{flag} not in {command}")


def test_compose_ports_hosts_and_pools_agree():
    server = SERVICES["prefect-server"]
    port = _port(server["command"], "--port")
    assert f"127.0.0.1:{port}:{port}" in server["ports"]
    assert f":{port}/api/ready" in " ".join(server["healthcheck"]["test"])
    db = urlparse(server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"].replace("${POSTGRES_PASSWORD}", "pw"))
    pg = SERVICES["postgres"]
    assert db.scheme == "postgresql+asyncpg" and db.hostname == "postgres" and db.port == 5432
    assert db.username == pg["environment"]["POSTGRES_USER"] and db.path == "/" + pg["environment"]["POSTGRES_DB"]
    assert str(db.port) in pg["healthcheck"]["test"]
    s3_port = _port(SERVICES["s3"]["command"], "-s3.port")
    pools = set()
    for name, service in lvd_services().items():
        env = service.get("environment", {})
        if "PREFECT_API_URL" in env:
            api = urlparse(env["PREFECT_API_URL"])
            assert (api.hostname, api.port, api.path) == ("prefect-server", port, "/api"), name
        if "LVD_S3_ENDPOINT_URL" in env:
            s3 = urlparse(env["LVD_S3_ENDPOINT_URL"])
            assert (s3.hostname, s3.port) == ("s3", s3_port), name
        if name.startswith("worker"):
            pools.add(service["command"][service["command"].index("--pool") + 1])
            assert f":{env['PREFECT_WORKER_WEBSERVER_PORT']}/health" in " ".join(service["healthcheck"]["test"])
            assert service["restart"] == "unless-stopped"
            assert service["depends_on"]["init"]["condition"] == "service_completed_successfully"
    assert pools == {CPU_POOL, GPU_POOL} >= {d.pool for d in DEPLOYMENTS}
    init = (DEPLOY / "init.sh").read_text()
    for pool in pools:
        assert f"work-pool create {pool} " in init
    gpu = SERVICES["worker-gpu"]
    assert gpu["image"] == "lvd:cuda" and gpu["build"]["target"] == "cuda"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    for service in SERVICES.values():
        for mapping in service.get("ports", []):
            assert mapping.startswith("127.0.0.1:"), "published ports stay on the host's loopback"


def test_compose_volumes_healthchecks_and_bucket():
    named = set(COMPOSE["volumes"])
    used = {v.split(":")[0] for s in SERVICES.values() for v in s.get("volumes", [])}
    assert used == named and {"pgdata", "s3data"} <= named
    for name, service in SERVICES.items():
        assert name == "init" or "healthcheck" in service, f"{name} has no health check"
    identities = json.loads(COMPOSE["configs"]["s3-identities"]["content"])
    creds = identities["identities"][0]["credentials"][0]
    assert creds == {"accessKey": "${AWS_ACCESS_KEY_ID}", "secretKey": "${AWS_SECRET_ACCESS_KEY}"}
    root = urlparse(SERVICES["worker-cpu"]["environment"]["LVD_ROOT"])
    production = next(d for d in DEPLOYMENTS if d.name == "lvd-142m")
    from flows.deployments import parameters_for

    assert urlparse(parameters_for(production)["cfg"]["storage"]["root"]).netloc == root.netloc
    example = dict(l.split("=", 1) for l in (DEPLOY / "env.example").read_text().splitlines() if "=" in l)
    needed = set(re.findall(r"\$\{([A-Z_]+)", (DEPLOY / "compose.yaml").read_text()))
    assert needed == set(example), "env.example lists exactly the variables compose.yaml needs"


def test_k8s_gpu_template_renders_with_gpu_requests(known_vars):
    from prefect.client.orchestration import PrefectClient
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    props = K8S["variables"]["properties"]
    placeholders = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", json.dumps(K8S["job_configuration"])))
    assert placeholders <= set(props), placeholders - set(props)
    check_names(props["env"]["default"], known_vars, "k8s template env")
    assert props["image"]["default"] == SERVICES["worker-gpu"]["image"]

    async def render(values):
        client = PrefectClient("http://127.0.0.1:9/api")  # no block references: never contacted
        return await KubernetesWorkerJobConfiguration.from_template_and_values(K8S, values, client=client)

    config = asyncio.run(render({"gpus": 8}))
    pod = config.job_manifest["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == 8 == resources["limits"]["nvidia.com/gpu"]
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert config.env["LVD_PROJECT_DIR"] == re.search(r"^WORKDIR (\S+)", DOCKERFILE, re.M).group(1)
    gpu_flows = {d.flow for d in DEPLOYMENTS if d.pool == GPU_POOL}
    assert gpu_flows and gpu_flows <= {"train-dinov2", "distill-dinov2"}
