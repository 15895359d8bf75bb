"""A real PostgreSQL server on a throwaway data directory and port, for tests.

PostgreSQL refuses to run as root, so as root the server runs as the ``postgres``
system user (created by the Debian package). Authentication is ``trust`` on
loopback only; the data directory is deleted at the end.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name) or ""]
    if not found[-1]:
        raise RuntimeError(f"PostgreSQL server binary {name!r} not found (install the 'postgresql' package)")
    return found[-1]


class PgServer:
    def __init__(self, port: int) -> None:
        self.port = port
        self.root = Path(tempfile.mkdtemp(prefix="ledgerflow-pg-"))
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        self.as_root = os.geteuid() == 0

    def _run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = ["runuser", "-u", "postgres", "--", *cmd] if self.as_root else list(cmd)
        return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=120)

    @property
    def dsn(self) -> str:
        return f"postgresql://ledgerflow@127.0.0.1:{self.port}/ledgerflow"

    def init(self) -> None:
        self.sock.mkdir(parents=True)
        if self.as_root:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.sock, "postgres")
        self._run(_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "ledgerflow", "-E", "UTF8")
        self.start()
        with psycopg.connect(f"postgresql://ledgerflow@127.0.0.1:{self.port}/postgres", autocommit=True) as c:
            c.execute("CREATE DATABASE ledgerflow")

    def start(self) -> None:
        """Start the server; a failure names the server's own last log lines."""
        log = self.root / "pg.log"
        opts = f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c max_connections=50"
        try:
            self._run(_bin("pg_ctl"), "-D", str(self.data), "-l", str(log), "-o", opts, "-w", "start")
        except subprocess.CalledProcessError as exc:
            tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
            raise RuntimeError(
                f"PostgreSQL on port {self.port} did not start (pg_ctl exit {exc.returncode}): "
                f"{exc.stderr.strip()} | pg.log: " + " / ".join(tail)
            ) from exc

    def stop(self, mode: str = "fast") -> None:
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def restart_after(self, seconds: float) -> None:
        self.stop("immediate")
        time.sleep(seconds)
        self.start()

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
