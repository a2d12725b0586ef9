"""deploy/k8s/train-multinode.yaml holds together: the Job's size, the GPUs per pod, the rendezvous
host and port all agree with the torchrun command its pods run, and that command is what the
launcher itself would run on such a machine, with a config that loads."""
from __future__ import annotations

import re

import yaml

from tasks.train.config import LaunchConfig
from tasks.train.entry import build_parser, read_config
from tasks.train.launch import plan_launch, torchrun_arguments
from tasks.train.world import check_world
from tests.deploy.test_deploy_files import DOCKERFILE, K8S, check_names, known_vars  # noqa: F401 (fixture)
from tests.support.prefect_stack import REPO

DOCS = list(yaml.safe_load_all((REPO / "deploy" / "k8s" / "train-multinode.yaml").read_text()))
SERVICE = next(d for d in DOCS if d["kind"] == "Service")
JOB = next(d for d in DOCS if d["kind"] == "Job")
POD = JOB["spec"]["template"]["spec"]
CONTAINER = POD["containers"][0]
ENV = {e["name"]: e["value"] for e in CONTAINER["env"]}


def torchrun_parts(args: list[str]) -> tuple[list[str], str, list[str]]:
    """(torchrun options as separate words, module, the module's arguments)."""
    i = args.index("-m")
    options = []
    for arg in args[:i]:
        options += arg.split("=", 1) if arg.startswith("--") and "=" in arg else [arg]
    return options, args[i + 1], args[i + 2 :]


def expand(text: str) -> str:
    """Kubernetes' $(VAR) expansion from the container's env."""
    return re.sub(r"\$\((\w+)\)", lambda m: ENV[m.group(1)], text)


OPTIONS, MODULE, MODULE_ARGS = torchrun_parts(CONTAINER["args"])
FLAGS = dict(zip(OPTIONS[::2], OPTIONS[1::2]))
NODES = JOB["spec"]["completions"]
GPUS = CONTAINER["resources"]["requests"]["nvidia.com/gpu"]


def test_job_size_gpus_and_rendezvous_agree_with_torchrun():
    assert len(DOCS) == 2 and SERVICE["metadata"]["namespace"] == JOB["metadata"]["namespace"]
    assert JOB["spec"]["completionMode"] == "Indexed"
    assert NODES == JOB["spec"]["parallelism"] == int(FLAGS["--nnodes"]) > 1
    assert GPUS == CONTAINER["resources"]["limits"]["nvidia.com/gpu"] == int(FLAGS["--nproc-per-node"])
    host, port = FLAGS["--rdzv-endpoint"].rsplit(":", 1)
    name = SERVICE["metadata"]["name"]
    assert host == f"{JOB['metadata']['name']}-0.{name}", "pod 0 of the Indexed Job, under the headless Service"
    assert POD["subdomain"] == name and SERVICE["spec"]["clusterIP"] == "None"
    assert SERVICE["spec"]["selector"].items() <= JOB["spec"]["template"]["metadata"]["labels"].items()
    assert int(port) in [p["port"] for p in SERVICE["spec"]["ports"]]
    assert int(port) in [p["containerPort"] for p in CONTAINER["ports"]]
    assert FLAGS["--rdzv-backend"] == "c10d" and CONTAINER["command"] == ["torchrun"]
    assert any(t["key"] == "nvidia.com/gpu" for t in POD["tolerations"])


def test_pods_run_what_the_launcher_runs_with_a_config_that_loads():
    assert MODULE == "tasks.train.entry"
    args = build_parser().parse_args([expand(a) for a in MODULE_ARGS])
    workdir = re.search(r"^WORKDIR (\S+)", DOCKERFILE, re.M).group(1)
    assert args.config.startswith(workdir + "/")
    cfg = read_config(str(REPO / args.config.removeprefix(workdir + "/")), args.overrides)
    assert cfg.data.source == ENV["LVD_DATA_URI"] and args.run_uri == ENV["LVD_RUN_URI"]
    assert args.run_uri.startswith("s3://") and cfg.data.source.startswith("s3://") and cfg.device == "cuda"

    world = NODES * GPUS
    base, high = check_world(cfg, world)
    assert (base.batch_size_per_rank * world, high.batch_size_per_rank * world) == (3072, 768), "the vitl14 recipe"
    assert cfg.data.streams % world == 0 and cfg.global_batch(world) % cfg.data.streams == 0
    assert cfg.data.streams == world * cfg.data.num_workers, "every DataLoader worker reads its own stream"

    host, port = FLAGS["--rdzv-endpoint"].rsplit(":", 1)
    pod_env = {"NNODES": str(NODES), "JOB_COMPLETION_INDEX": "3", "MASTER_ADDR": host, "MASTER_PORT": port}
    as_launched = cfg.model_copy(update={"nproc": GPUS, "launch": LaunchConfig(rdzv_id=FLAGS["--rdzv-id"])})
    plan = plan_launch(as_launched, env=pod_env, gpus=GPUS)
    assert torchrun_arguments(plan) == OPTIONS and plan.node_rank == 3


def test_pod_env_names_are_read(known_vars):  # noqa: F811 (fixture)
    expanded = set(re.findall(r"\$\((\w+)\)", " ".join(CONTAINER["args"])))
    check_names([n for n in ENV if n not in expanded], known_vars, "multi-node job env")
    assert expanded <= set(ENV)
    secret = K8S["variables"]["properties"]["s3_secret"]["default"]
    assert CONTAINER["envFrom"] == [{"secretRef": {"name": secret}}]
