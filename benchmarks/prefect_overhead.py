"""Prefect overhead of one `lvd` run: a temporary server per run against a reused local server.

Runs the same `lvd` command twice, each in a fresh dataset root: once with no server (Prefect
starts and stops a temporary one inside the run) and once after `lvd server start` (the run
finds it and reports there). Wall seconds and CPU seconds of the run and its children
(RUSAGE_CHILDREN, so the temporary server counts) are measured; for the reused server its own
CPU during the run is read from /proc and added, so both rows include every server cost.

Usage: python benchmarks/prefect_overhead.py [-- lvd args]   (default: train --config cpu-tiny
       train.optim.total_steps=5). Prints a markdown table for benchmarks/RESULTS.md.
"""
from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LVD = [sys.executable, "-m", "lvd.cli"]
DEFAULT_ARGS = ["train", "--config", "cpu-tiny", "train.optim.total_steps=5"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tree_cpu_s(pid: int) -> float:
    """utime + stime of pid and its descendants, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += cpu.get(p, 0.0)
        todo.extend(children.get(p, []))
    return total


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(args: list[str], env: dict, workdir: Path, server_pid: int | None) -> dict:
    before_cpu, before_server = _children_cpu_s(), _tree_cpu_s(server_pid) if server_pid else 0.0
    started = time.monotonic()
    proc = subprocess.run([*LVD, *args, f"storage.root=file://{workdir}/data"], cwd=workdir, env=env,
                          capture_output=True, text=True)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"lvd {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    run_cpu = _children_cpu_s() - before_cpu
    server_cpu = _tree_cpu_s(server_pid) - before_server if server_pid else 0.0
    temporary = "Starting temporary server" in proc.stderr + proc.stdout
    return {"wall": wall, "run_cpu": run_cpu, "server_cpu": server_cpu, "temporary": temporary}


def main(argv: list[str]) -> None:
    args = argv[argv.index("--") + 1:] if "--" in argv else DEFAULT_ARGS
    with tempfile.TemporaryDirectory(prefix="lvd-prefect-overhead-") as tmp:
        tmp = Path(tmp)
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        env.update(LVD_HOME=str(tmp / "home"), PYTHONPATH=str(REPO), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                   LVD_PREFECT_LOCAL_URL="http://127.0.0.1:9/api")  # never a stray server on 4200
        rows = {}
        (tmp / "temporary").mkdir()
        rows["temporary server per run"] = run_once(args, env, tmp / "temporary", None)
        port = _free_port()
        started = time.monotonic()
        cpu0 = _children_cpu_s()
        subprocess.run([*LVD, "server", "start", "--port", str(port)], env=env, check=True, capture_output=True)
        from lvd.prefect_server import read_state  # noqa: E402  (same LVD_HOME as the runs)

        os.environ["LVD_HOME"] = env["LVD_HOME"]
        pid = read_state()["pid"]
        start_wall, start_cpu = time.monotonic() - started, _children_cpu_s() - cpu0 + _tree_cpu_s(pid)
        try:
            (tmp / "reused").mkdir()
            rows["reused server (`lvd server start`)"] = run_once(args, env, tmp / "reused", pid)
        finally:
            subprocess.run([*LVD, "server", "stop"], env=env, check=False, capture_output=True)
    print(f"`lvd {' '.join(args)}`, one run each\n")
    print("| server | temporary server started | wall s | CPU s (run + children) | CPU s (reused server) | CPU s total |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {'yes' if r['temporary'] else 'no'} | {r['wall']:.1f} | {r['run_cpu']:.1f} | "
              f"{r['server_cpu']:.1f} | {r['run_cpu'] + r['server_cpu']:.1f} |")
    print(f"\none-time `lvd server start`: {start_wall:.1f} s wall, {start_cpu:.1f} CPU s (not in the rows)")


if __name__ == "__main__":
    main(sys.argv[1:])
