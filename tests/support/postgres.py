"""A throwaway PostgreSQL cluster on 127.0.0.1 (Debian's `postgresql`), as a Prefect server database.

initdb runs in a temporary directory owned by the `postgres` user (Postgres refuses to run as
root); the socket lives in the data directory and TCP listens on loopback only. The cluster can be
stopped and started again over the same data, which is how tests take the database down.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

from tests.support.prefect_stack import free_port

USER = "prefect"
PASSWORD = "prefect-test-pw"
DATABASE = "prefect"


def pg_bin_dir() -> str:
    """The newest installed server binaries (/usr/lib/postgresql/NN/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found: apt-get install postgresql (deploy/apt-packages.sh)")
    return os.path.dirname(found[-1])


def _as_postgres(args: list[str], **kw) -> subprocess.CompletedProcess:
    """Run a Postgres binary as the `postgres` user when we are root, as ourselves otherwise."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run(prefix + args, capture_output=True, text=True, check=False, **kw)


@dataclass
class PostgresServer:
    """One cluster: `start()` creates it on first use, `stop()` keeps its data, `destroy()` removes it."""

    base: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="lvd-pg-"))
    port: int = 0
    initialised: bool = False

    @property
    def data_dir(self) -> str:
        return os.path.join(self.base, "data")

    @property
    def url(self) -> str:
        """The SQLAlchemy URL Prefect reads from PREFECT_API_DATABASE_CONNECTION_URL."""
        return f"postgresql+asyncpg://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{DATABASE}"

    def _check(self, result: subprocess.CompletedProcess, what: str) -> None:
        if result.returncode != 0:
            raise RuntimeError(f"postgres {what} failed ({result.returncode}): {result.stdout}\n{result.stderr}")

    def _init(self) -> None:
        bin_dir = pg_bin_dir()
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chmod(self.base, 0o755)
            os.makedirs(self.data_dir, exist_ok=True)
            os.chown(self.data_dir, pw.pw_uid, pw.pw_gid)
        self._check(_as_postgres([f"{bin_dir}/initdb", "-D", self.data_dir, "-U", "postgres", "--auth=trust",
                                  "-E", "UTF8", "--no-sync"]), "initdb")
        self.initialised = True

    def start(self, timeout: float = 60.0) -> "PostgresServer":
        if not self.initialised:
            self._init()
        self.port = self.port or free_port()
        opts = f"-k {self.data_dir} -h 127.0.0.1 -p {self.port} -c fsync=off -c max_connections=200"
        result = _as_postgres([f"{pg_bin_dir()}/pg_ctl", "-D", self.data_dir, "-o", opts, "-l",
                               os.path.join(self.data_dir, "server.log"), "-w", "-t", str(int(timeout)), "start"])
        self._check(result, "start")
        if not getattr(self, "_db_created", False):
            self.psql(f"CREATE USER {USER} WITH PASSWORD '{PASSWORD}'")
            self.psql(f"CREATE DATABASE {DATABASE} OWNER {USER}")
            self._db_created = True
        return self

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = _as_postgres([f"{pg_bin_dir()}/psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                               "-d", database, "-v", "ON_ERROR_STOP=1", "-tAc", sql])
        self._check(result, f"psql {sql!r}")
        return result.stdout

    def running(self) -> bool:
        return _as_postgres([f"{pg_bin_dir()}/pg_ctl", "-D", self.data_dir, "status"]).returncode == 0

    def stop(self) -> None:
        """Fast shutdown: open connections are cut, as when a database host goes away."""
        if self.initialised and self.running():
            self._check(_as_postgres([f"{pg_bin_dir()}/pg_ctl", "-D", self.data_dir, "-m", "fast", "-w", "stop"]),
                        "stop")

    def destroy(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _as_postgres([f"{pg_bin_dir()}/pg_isready", "-h", "127.0.0.1", "-p", str(self.port)]).returncode == 0:
                return
            time.sleep(0.2)
        raise TimeoutError(f"postgres on port {self.port} not ready after {timeout:.0f}s")
