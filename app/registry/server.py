"""A real Apicurio Registry that ledgerflow fetches and starts itself (demo and tests).

The runnable distribution (``io.apicurio:apicurio-registry-app:<v>:tar.gz:all``, a
Quarkus runner jar plus ``lib/``) is resolved from Maven Central with ``mvn
dependency:copy`` and unpacked once into ``<cache>/apicurio-registry-<v>/``. 3.0.x runs
on Java 17. The server listens on loopback with the global compatibility rule
``BACKWARD`` (Confluent's default; Apicurio's own default is none) and serves the
Confluent-compatible API at ``/apis/ccompat/v7``.

Storage: ``mem`` (an in-memory H2 database: subjects are gone when it stops) or
``kafkasql`` (its journal in a topic of a Kafka cluster: subjects and ids survive a
restart). State of a running server is kept in ``<data_dir>/registry.json`` (pid,
port, storage), so ``up`` is idempotent and ``down`` stops exactly what it started.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from app.kafka.local_broker import (
    _pid_alive,
    _require,
    _terminate,
    cache_dir,
    describe_holder,
    kill_hard,
    log_tail,
    port_free,
)

DEFAULT_VERSION = "3.0.9"  # 3.0.x runs on Java 17; 3.1+ needs Java 21
DEFAULT_PORT = 8081
DEFAULT_HEAP_MB = 512
CCOMPAT = "/apis/ccompat/v7"


class RegistryServerError(RuntimeError):
    """The local registry could not be resolved or started (the message says what to do)."""


def registry_version() -> str:
    return os.environ.get("LEDGERFLOW_REGISTRY_VERSION", DEFAULT_VERSION)


def resolve_registry(version: str | None = None, *, quiet: bool = False) -> Path:
    """The unpacked distribution directory (holding the runner jar), resolved if needed.

    Maven copies the tarball from Maven Central (through the local repository) once;
    a ``.complete`` marker makes later calls free, a partial unpack is redone."""
    version = version or registry_version()
    home = cache_dir() / f"apicurio-registry-{version}"
    marker = home / ".complete"
    if marker.exists():
        return home
    mvn = _require("mvn")
    started = time.monotonic()
    if not quiet:
        print(f"ledgerflow: resolving Apicurio Registry {version} from Maven Central ...", file=sys.stderr)
    dl = home.with_name(home.name + ".download")
    dl.mkdir(parents=True, exist_ok=True)
    artifact = f"io.apicurio:apicurio-registry-app:{version}:tar.gz:all"
    proc = subprocess.run(
        [mvn, "-q", "-B", "dependency:copy", f"-Dartifact={artifact}", f"-DoutputDirectory={dl}"],
        capture_output=True,
        text=True,
        check=False,
        cwd=dl,
    )
    tarball = dl / f"apicurio-registry-app-{version}-all.tar.gz"
    if proc.returncode != 0 or not tarball.exists():
        raise RegistryServerError(f"Maven could not resolve {artifact}:\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
    if home.exists():
        import shutil

        shutil.rmtree(home)
    home.mkdir(parents=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(home, filter="data")
    if not runner_jar(home, version).exists():
        raise RegistryServerError(f"{tarball} unpacked, but {runner_jar(home, version).name} is not in {home}")
    tarball.unlink()
    marker.write_text(f"{version}\n{time.monotonic() - started:.1f}s\n")
    if not quiet:
        print(f"ledgerflow: resolved in {time.monotonic() - started:.1f}s into {home}", file=sys.stderr)
    return home


def runner_jar(home: Path, version: str) -> Path:
    return home / f"apicurio-registry-app-{version}-runner.jar"


@dataclass(frozen=True)
class RegistryState:
    pid: int
    port: int
    storage: str
    version: str
    data_dir: str
    log_file: str
    started_at: float

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{CCOMPAT}"


def answers(port: int, timeout: float = 2.0) -> bool:
    """True when a registry on ``port`` lists its subjects (storage ready, API up)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{CCOMPAT}/subjects", timeout=timeout) as resp:
            return int(resp.status) == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


class RegistryServer:
    """One local Apicurio Registry bound to a data directory and a loopback port.

    ``storage="kafkasql"`` keeps its journal in ``<topic_prefix>-journal`` on
    ``bootstrap`` (created by the registry itself), so a restarted server has every
    subject and id again."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = DEFAULT_PORT,
        storage: str = "mem",
        bootstrap: str | None = None,
        topic_prefix: str = "ledgerflow-registry",
        heap_mb: int = DEFAULT_HEAP_MB,
        version: str | None = None,
    ) -> None:
        if storage not in ("mem", "kafkasql"):
            raise ValueError(f"storage must be mem or kafkasql, not {storage!r}")
        if storage == "kafkasql" and not bootstrap:
            raise ValueError("kafkasql storage needs the bootstrap servers of a Kafka cluster")
        self.data_dir = data_dir.resolve()
        self.port = port
        self.storage = storage
        self.bootstrap = bootstrap
        self.topic_prefix = topic_prefix
        self.heap_mb = heap_mb
        self.version = version or registry_version()
        self.state_file = self.data_dir / "registry.json"
        self.log_file = self.data_dir / "registry.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{CCOMPAT}"

    def state(self) -> RegistryState | None:
        try:
            raw = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None
        state = RegistryState(**raw)
        return state if _pid_alive(state.pid) else None

    def command(self, java: str, home: Path) -> list[str]:
        props = [
            f"-Dquarkus.http.port={self.port}",
            "-Dquarkus.http.host=127.0.0.1",
            "-Dquarkus.log.console.color=false",
            "-Dapicurio.rules.global.compatibility=BACKWARD",
        ]
        if self.storage == "kafkasql":
            p = self.topic_prefix
            props += [
                "-Dapicurio.storage.kind=kafkasql",
                f"-Dapicurio.kafkasql.bootstrap.servers={self.bootstrap}",
                f"-Dapicurio.kafkasql.topic={p}-journal",
                f"-Dapicurio.kafkasql.snapshots.topic={p}-snapshots",
                f"-Dapicurio.events.kafka.topic={p}-events",
            ]
        return [java, f"-Xmx{self.heap_mb}m", "-XX:+UseSerialGC", *props, "-jar", str(runner_jar(home, self.version))]

    def up(self, *, timeout: float = 120.0) -> tuple[RegistryState, bool]:
        """Start the server unless it already runs; returns (state, started_now)."""
        running = self.state()
        if running is not None:
            if self._wait_ready(running, timeout):
                return running, False
            raise RegistryServerError(
                f"registry pid {running.pid} is running but not answering on port {running.port}; "
                f"see {self.log_file} or run `ledgerflow registry down`"
            )
        java = _require("java")
        if not port_free(self.port):
            raise RegistryServerError(
                f"port {self.port} on 127.0.0.1 is already taken by {describe_holder(self.port)}; "
                "choose another with --port (LEDGERFLOW_REGISTRY_PORT) or stop that process"
            )
        home = resolve_registry(self.version)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                self.command(java, home),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.data_dir,
                start_new_session=True,
            )
        state = RegistryState(
            pid=proc.pid,
            port=self.port,
            storage=self.storage,
            version=self.version,
            data_dir=str(self.data_dir),
            log_file=str(self.log_file),
            started_at=time.time(),
        )
        self.state_file.write_text(json.dumps(asdict(state)))
        if not self._wait_ready(state, timeout, proc):
            self.down()
            raise RegistryServerError(
                f"registry did not answer on {state.url} within {timeout:.0f}s; last log lines:\n{self.tail(30)}"
            )
        return state, True

    def _wait_ready(self, state: RegistryState, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RegistryServerError(
                    f"registry exited with status {proc.returncode}; last log lines:\n{self.tail(30)}"
                )
            if answers(state.port, timeout=1.0):
                return True
            time.sleep(0.25)
        return False

    def down(self, *, timeout: float = 20.0) -> bool:
        """Stop the server (SIGTERM, then SIGKILL); True if one was running."""
        state = self.state()
        self.state_file.unlink(missing_ok=True)
        if state is None:
            return False
        _terminate(state.pid, timeout)
        return True

    def kill(self) -> None:
        """SIGKILL the server (fault injection: a registry crash)."""
        state = self.state()
        if state is not None:
            kill_hard(state.pid)

    def tail(self, lines: int = 50) -> str:
        return log_tail(self.log_file, lines)


def default_registry(bootstrap: str | None = None) -> RegistryServer:
    """The registry of ``ledgerflow registry up`` (``LEDGERFLOW_REGISTRY_*`` env)."""
    data_dir = Path(os.environ.get("LEDGERFLOW_REGISTRY_DATA", ".ledgerflow/registry"))
    port = int(os.environ.get("LEDGERFLOW_REGISTRY_PORT", DEFAULT_PORT))
    storage = os.environ.get("LEDGERFLOW_REGISTRY_STORAGE", "kafkasql" if bootstrap else "mem")
    return RegistryServer(data_dir, port=port, storage=storage, bootstrap=bootstrap)
