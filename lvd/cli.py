"""`lvd`: run the Prefect flows without a server, inspect committed stages, run the demo.

    lvd curate   --config cpu-tiny [key.path=value ...]
    lvd train    --config cpu-tiny [overrides]
    lvd distill | evaluate | pipeline  (same shape)
    lvd info URI                        summary of a committed stage, or a dataset's versions ({root}/{dataset})
    lvd diff A B | DATASET A B          shards and samples added, reused and removed between two versions
    lvd export URI OUT.safetensors      a trained model (backbone + SSL heads) as one safetensors file
    lvd demo                            serve the demo web on 127.0.0.1 and curate it end to end
    lvd doctor [--config P] [--pool P]  check the Prefect API, work pools, S3 and GPUs before runs start
    lvd server start|stop|status        a local Prefect server that every later run reuses

Flow commands report to PREFECT_API_URL; when it is unset they reuse a local server that answers
(see lvd/prefect_server.py) and only otherwise let Prefect start a temporary one.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from lvd.config import ConfigError

# An override each command's help shows (keys of flows.config.PipelineConfig; a test checks they exist).
OVERRIDE_EXAMPLES = {
    "curate": "crawl.max_concurrency=64 dedup.hash_method=phash",
    "train": "train.optim.total_steps=400",
    "distill": "distill.optim.total_steps=100",
    "evaluate": "evaluate.knn.enabled=false",
    "pipeline": "crawl.max_concurrency=64 train.optim.total_steps=400",
    "demo": "crawl.max_per_host=8",
    "doctor": "storage.root=s3://bucket/lvd",
}

# Subcommand -> (module with the flow, function that runs it from a loaded config).
FLOW_COMMANDS = {
    "curate": ("flows.curate_lvd", "run_from_cli"),
    "train": ("flows.train_dinov2", "run_from_cli"),
    "distill": ("flows.distill_dinov2", "run_from_cli"),
    "evaluate": ("flows.evaluate_dinov2", "run_from_cli"),
    "pipeline": ("flows.pipeline", "run_from_cli"),
}


def _quiet_prefect_defaults() -> None:
    """Embedded runs stay on this machine: no analytics, no update checks."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # The embedded server needs more than the default 20 s on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def _load_runner(command: str):
    module_name, attr = FLOW_COMMANDS[command]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            raise SystemExit(f"lvd {command}: this stage is not available in this version of lvd yet") from None
        raise
    return getattr(module, attr)


def _choose_prefect_server() -> None:
    from lvd.prefect_server import choose_server

    try:
        choose_server(log=lambda line: print(line, file=sys.stderr))
    except ValueError as err:
        raise ConfigError(str(err)) from None


def cmd_flow(args: argparse.Namespace) -> int:
    _choose_prefect_server()
    runner = _load_runner(args.command)
    summary = runner(args.config, args.overrides)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from lvd.info import describe_stage
    from storage.versions import is_dataset_uri

    if is_dataset_uri(args.uri):
        from lvd.history import dataset_history, format_history

        print(format_history(args.uri, *dataset_history(args.uri)))
    else:
        print(describe_stage(args.uri))
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from lvd.history import diff_arguments, diff_versions, format_diff

    try:
        a, b = diff_arguments(args.versions)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    print(format_diff(diff_versions(a, b)))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from lvd import export

    print(json.dumps(export(args.uri, args.out), indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from lvd.demo import run_demo

    _choose_prefect_server()
    run_demo(args.data_dir, args.config, args.overrides)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from flows.config import PipelineConfig
    from flows.deployments import DEPLOYMENTS
    from lvd.config import load_config
    from lvd.doctor import render, run_checks
    from storage.config import StorageConfig

    config = load_config(PipelineConfig, args.config, args.overrides) if args.config else None
    given = config.storage.model_dump(exclude_defaults=True) if config else {}
    if args.root:
        given["root"] = args.root
    if args.api_url is None:
        from prefect.settings import PREFECT_API_URL

        args.api_url = PREFECT_API_URL.value()
    pools = args.pool or sorted({d.pool for d in DEPLOYMENTS})
    checks = run_checks(args.api_url, pools, StorageConfig.from_env(**given),
                        config.model_dump(mode="json") if config else None,
                        need_workers=not args.no_workers, timeout=args.timeout)
    print(render(checks))
    return 0 if all(c.ok for c in checks) else 1


def cmd_server(args: argparse.Namespace) -> int:
    from lvd import prefect_server

    if args.action == "start":
        try:
            state = prefect_server.start_server(args.host, args.port, args.timeout)
        except RuntimeError as err:
            print(f"lvd: {err}", file=sys.stderr)
            return 1
        verb = "started" if state["started"] else "already running"
        print(f"Prefect server {verb} at {state['api_url']} (pid {state['pid']}, log {state['log']})\n"
              f"lvd runs use it; for the prefect CLI: export PREFECT_API_URL={state['api_url']}")
        return 0
    if args.action == "stop":
        state = prefect_server.stop_server()
        print(f"stopped {state['api_url']}" if state else "no server recorded by `lvd server start`")
        return 0
    status = prefect_server.server_status()
    print(json.dumps(status, indent=2))
    return 0 if status["answers"] else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lvd", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in FLOW_COMMANDS:
        p = sub.add_parser(name, help=f"run the {name} flow (on a reused or temporary Prefect server)")
        p.add_argument("--config", default="cpu-tiny", help="preset name (configs/NAME.yaml) or YAML path")
        p.add_argument("overrides", nargs="*",
                       help=f"dotted key=value overrides of the preset, such as {OVERRIDE_EXAMPLES[name]}")
        p.set_defaults(func=cmd_flow)
    p = sub.add_parser("info", help="print the summary of a committed stage, or the versions of a dataset")
    p.add_argument("uri", help="stage URI, e.g. file://./lvd-data/lvd-demo/v1/crawl or s3://bucket/lvd/v1/shards, "
                   "or a dataset URI such as file://./lvd-data/lvd-demo")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("diff", help="what changed between two versions of a dataset")
    p.add_argument("versions", nargs="+", metavar="URI",
                   help="two version URIs, or a dataset URI and two version names")
    p.set_defaults(func=cmd_diff)
    p = sub.add_parser("export", help="write a trained model (backbone and heads) to a .safetensors file")
    p.add_argument("uri", help="run URI, checkpoint directory, backbone.pt, .safetensors or official/timm .pth")
    p.add_argument("out", help="output file (path, file:// or s3://), e.g. model.safetensors")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("demo", help="serve the demo web on 127.0.0.1 and run the main job on it")
    p.add_argument("--data-dir", default="lvd-data", help="where the demo web and the dataset go")
    p.add_argument("--config", default="cpu-tiny")
    p.add_argument("overrides", nargs="*", help=f"dotted overrides, such as {OVERRIDE_EXAMPLES['demo']}")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("doctor", help="check a deployment target (API, work pools, S3, GPUs) before work starts")
    p.add_argument("--config", default=None, help="preset or YAML whose storage and devices to check")
    p.add_argument("--api-url", default=None, help="Prefect API (default: PREFECT_API_URL)")
    p.add_argument("--pool", action="append", help="work pool to check (repeatable; default: the deployments' pools)")
    p.add_argument("--root", default=None, help="dataset root to probe (default: the config's, then LVD_ROOT)")
    p.add_argument("--no-workers", action="store_true", help="do not require a worker online (first setup)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per network check")
    p.add_argument("overrides", nargs="*", help=f"dotted overrides, such as {OVERRIDE_EXAMPLES['doctor']}")
    p.set_defaults(func=cmd_doctor)
    p = sub.add_parser("server", help="start, stop or show the local Prefect server that lvd runs reuse")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=4200)
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the server to answer")
    p.set_defaults(func=cmd_server)
    return parser


def main(argv: list[str] | None = None) -> int:
    _quiet_prefect_defaults()
    args = build_parser().parse_args(argv)
    from lvd.errors import LvdError

    try:
        return args.func(args)
    except (LvdError, FileNotFoundError) as err:  # what the user can fix: the message, no traceback
        print(f"lvd: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
