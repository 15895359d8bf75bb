"""A real single-node Apache Kafka broker that ledgerflow assembles and starts itself.

No Docker engine is needed: the broker, its operator tools and a logging backend are
resolved from Maven Central with ``deploy/kafka/pom.xml`` into a cache directory that
is reused across runs, KRaft storage is formatted once (standalone controller), and
``kafka.Kafka`` runs as one combined broker+controller on loopback with transactions
enabled on a single node (replication factor 1 for the offsets and transaction state
topics, ``transaction.state.log.min.isr=1``).

State of a running broker is kept in ``<data_dir>/broker.json`` (pid, ports, version),
so ``up`` is idempotent and ``down`` stops exactly the process it started
(SIGTERM, then SIGKILL after a timeout).

When the port is already held, ``up`` finds the holder (``/proc/net/tcp`` + the
process's open sockets): a ledgerflow broker or cluster started from another data
dir that answers metadata is reused (its state is returned, nothing is started);
anything else is an error naming the port and the process holding it. The
replicated three-node cluster lives in ``app/kafka/local_cluster.py``.

``secure=True`` (``ledgerflow kafka up --secure``) adds a ``SASL_SSL`` listener on
``port+2`` (advertised as ``localhost``): SCRAM-SHA-512 users, a TLS certificate from
a throwaway CA generated into ``<data_dir>/secure`` (``app.security.certs``), and
Kafka's ``StandardAuthorizer`` with ``allow.everyone.if.no.acl.found=false``. The
plaintext client listener and the controller listener stay on loopback; their
principal ``User:ANONYMOUS`` is a super user together with the SCRAM user ``admin``
(created at format time), so the controller, inter-broker traffic and the local demo
keep working while every SCRAM principal gets exactly its ACLs (docs/security.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient

REPO_ROOT = Path(__file__).resolve().parents[2]
POM = REPO_ROOT / "deploy" / "kafka" / "pom.xml"
DEFAULT_VERSION = "4.3.1"  # newest 4.x with both kafka_2.13 and kafka-tools on Maven Central
DEFAULT_PORT = 19092
DEFAULT_HEAP_MB = 512
SECURE_HOST = "localhost"  # the SASL_SSL listener's advertised host and the name in its certificate
AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
SCRAM_LOGIN = "org.apache.kafka.common.security.scram.ScramLoginModule"
REAUTH_MS = 10_000  # SASL sessions re-authenticate this often: a deleted user is out within 10 s

TOOLS = {
    "topics": "org.apache.kafka.tools.TopicCommand",
    "consumer-groups": "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
    "transactions": "org.apache.kafka.tools.TransactionsCommand",
    "console-consumer": "org.apache.kafka.tools.consumer.ConsoleConsumer",
    "console-producer": "org.apache.kafka.tools.ConsoleProducer",
    "producer-perf": "org.apache.kafka.tools.ProducerPerformance",
    "consumer-perf": "org.apache.kafka.tools.ConsumerPerformance",
    "copier": "org.apache.kafka.tools.TransactionalMessageCopier",
    "get-offsets": "org.apache.kafka.tools.GetOffsetShell",
    "metadata-quorum": "org.apache.kafka.tools.MetadataQuorumCommand",
}

_LOG4J2 = """status = warn
appender.out.type = {kind}
appender.out.name = OUT
{target}appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.out.ref = OUT
logger.kafka.name = kafka
logger.kafka.level = {level}
logger.state.name = state.change.logger
logger.state.level = WARN
"""


class BrokerError(RuntimeError):
    """A local broker operation failed; the message says what to do about it."""


@dataclass(frozen=True)
class BrokerState:
    pid: int
    port: int
    controller_port: int
    version: str
    data_dir: str
    log_file: str
    started_at: float
    servers: str = ""  # a reused cluster's full bootstrap list
    sasl_port: int = 0  # the SASL_SSL listener of a secured broker (0: none)

    @property
    def secure_bootstrap(self) -> str:
        """The ``SASL_SSL`` listener (the name its certificate carries), or '' when not secured."""
        return f"{SECURE_HOST}:{self.sasl_port}" if self.sasl_port else ""

    @property
    def bootstrap(self) -> str:
        return self.servers or f"127.0.0.1:{self.port}"


def cache_dir() -> Path:
    """Where resolved jars live (``LEDGERFLOW_CACHE`` or ``~/.cache/ledgerflow``)."""
    env = os.environ.get("LEDGERFLOW_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "ledgerflow"


def kafka_version() -> str:
    return os.environ.get("LEDGERFLOW_KAFKA_VERSION", DEFAULT_VERSION)


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        hint = "a Java 17+ runtime" if tool == "java" else "Apache Maven"
        raise BrokerError(f"`{tool}` is not on PATH: the local Kafka broker needs {hint}")
    return path


def resolve_jars(version: str | None = None, *, quiet: bool = False) -> Path:
    """Return the directory holding the broker + tools jars, resolving them if needed.

    Resolution runs Maven once per version; a ``.complete`` marker makes later calls
    free. A partial download (interrupted run) is redone.
    """
    version = version or kafka_version()
    libs = cache_dir() / f"kafka-{version}" / "libs"
    marker = libs.parent / ".complete"
    if marker.exists():
        return libs
    mvn = _require("mvn")
    if libs.exists():
        shutil.rmtree(libs)
    libs.mkdir(parents=True)
    if not quiet:
        print(
            f"ledgerflow: resolving Apache Kafka {version} jars from Maven Central ...",
            file=sys.stderr,
        )
    started = time.monotonic()
    cmd = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(POM),
        "dependency:copy-dependencies",
        f"-Dkafka.version={version}",
        f"-DoutputDirectory={libs}",
        "-DincludeScope=runtime",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BrokerError(
            f"Maven could not resolve Apache Kafka {version}:\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}"
        )
    if not any(libs.glob("kafka_2.13-*.jar")) or not any(libs.glob("kafka-tools-*.jar")):
        raise BrokerError(f"Maven finished but {libs} lacks kafka_2.13 or kafka-tools jars")
    marker.write_text(f"{version}\n{time.monotonic() - started:.1f}s\n")
    if not quiet:
        print(
            f"ledgerflow: resolved in {time.monotonic() - started:.1f}s into {libs}",
            file=sys.stderr,
        )
    return libs


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_ports_free(ports: Sequence[int], timeout: float = 15.0) -> list[int]:
    """Wait until ``ports`` can be bound; the ones still taken after ``timeout``.

    Only ports nobody LISTENs on are waited for: those are held by the closing
    connections (FIN_WAIT) of a broker that was just killed, and come free by themselves."""
    deadline = time.monotonic() + timeout
    while True:
        busy = [p for p in ports if not port_free(p)]
        if not busy or time.monotonic() > deadline or any(port_holder(p) for p in busy):
            return busy
        time.sleep(0.25)


def parse_proc_net_tcp(text: str, port: int) -> set[int]:
    """Socket inodes LISTENing on ``port`` in a ``/proc/net/tcp`` (or tcp6) table."""
    inodes: set[int] = set()
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 10 or cols[3] != "0A":  # 0A = TCP_LISTEN
            continue
        if int(cols[1].rsplit(":", 1)[1], 16) == port:
            inodes.add(int(cols[9]))
    return inodes


def port_holder(port: int) -> tuple[int, list[str]] | None:
    """(pid, argv) of a process of this user listening on ``port``, when it can be found."""
    inodes: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            inodes |= parse_proc_net_tcp(Path(table).read_text(), port)
    if not inodes:
        return None
    wanted = {f"socket:[{i}]" for i in inodes}
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            fds = list((proc_dir / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target in wanted:
                try:
                    argv = (proc_dir / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
                except OSError:
                    argv = []
                return int(proc_dir.name), [a.decode(errors="replace") for a in argv]
    return None


def describe_holder(port: int) -> str:
    """Human words for what holds ``port``: 'pid 123 (java ... kafka.Kafka ...)' or a hint."""
    holder = port_holder(port)
    if holder is None:
        return "a process this user cannot inspect (another user's, or outside this namespace)"
    pid, argv = holder
    cmd = " ".join(argv)
    return f"pid {pid} ({cmd[:160]}{'...' if len(cmd) > 160 else ''})"


def ledgerflow_state_dir(port: int) -> Path | None:
    """The data dir of the ledgerflow broker (``broker.json``) or cluster (``cluster.json``)
    whose process listens on ``port``, or None when the holder is not one of ours."""
    holder = port_holder(port)
    if holder is None:
        return None
    _pid, argv = holder
    if "kafka.Kafka" in argv and argv[-1].endswith("server.properties"):
        d = Path(argv[-1]).parent
        if (d / "broker.json").exists():
            return d
        if (d.parent / "cluster.json").exists():
            return d.parent
    if "app.faults.proxy" in argv and "--cluster-dir" in argv:
        d = Path(argv[argv.index("--cluster-dir") + 1])
        if (d / "cluster.json").exists():
            return d
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child we started is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def answers_metadata(bootstrap: str, timeout: float = 2.0) -> bool:
    """True when a broker at ``bootstrap`` answers a metadata request."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0, "logger": _quiet_logger()})
    try:
        meta = admin.list_topics(timeout=timeout)
    except Exception:
        return False
    return bool(meta.brokers)


def _quiet_logger() -> object:
    import logging

    logger = logging.getLogger("ledgerflow.kafka.probe")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger


class LocalBroker:
    """One local broker bound to a data directory and a pair of loopback ports."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = DEFAULT_PORT,
        controller_port: int | None = None,
        heap_mb: int = DEFAULT_HEAP_MB,
        version: str | None = None,
        secure: bool = False,
        sasl_port: int | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port
        self.controller_port = controller_port or port + 1
        self.secure = secure
        self.sasl_port = (sasl_port or port + 2) if secure else 0
        self.heap_mb = heap_mb
        self.version = version or kafka_version()
        self.state_file = self.data_dir / "broker.json"
        self.log_file = self.data_dir / "broker.log"

    # -- state -----------------------------------------------------------------
    def state(self) -> BrokerState | None:
        """The recorded state if its process is still alive, else None."""
        try:
            raw = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None
        state = BrokerState(**raw)
        return state if _pid_alive(state.pid) else None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def secure_dir(self) -> Path:
        """TLS material and SCRAM passwords of a secured broker (mode 0700)."""
        return self.data_dir / "secure"

    @property
    def secure_bootstrap(self) -> str:
        return f"{SECURE_HOST}:{self.sasl_port}" if self.sasl_port else ""

    def admin_settings(self) -> dict[str, Any]:
        """librdkafka settings of the super user ``admin`` on the ``SASL_SSL`` listener."""
        from app.security.certs import TlsMaterial
        from app.security.scram import ADMIN_USER, client_settings, ensure_password

        if not self.secure:
            raise BrokerError(f"the broker in {self.data_dir} is not secured; start it with `kafka up --secure`")
        return client_settings(
            ADMIN_USER, ensure_password(self.secure_dir, ADMIN_USER), TlsMaterial(self.secure_dir).ca_cert
        )

    # -- lifecycle -------------------------------------------------------------
    def up(self, *, timeout: float = 90.0) -> tuple[BrokerState, bool]:
        """Start the broker unless it already runs; returns (state, started_now)."""
        running = self.state()
        if running is not None and self.secure and not running.sasl_port:
            raise BrokerError(
                f"the broker pid {running.pid} in {self.data_dir} runs without --secure; "
                "`ledgerflow kafka down` it first, or use another --data-dir"
            )
        if running is not None and answers_metadata(running.bootstrap):
            return running, False
        if running is not None:  # alive but not answering: still starting, or wedged
            if self._wait_ready(running, timeout):
                return running, False
            raise BrokerError(
                f"broker pid {running.pid} is running but not answering on {running.bootstrap}; "
                f"see {self.log_file} or run `ledgerflow kafka down`"
            )
        java = _require("java")
        if not port_free(self.port):
            reused = self._reuse_other()
            if reused is not None:
                return reused, False
        ports = (self.port, self.controller_port, *((self.sasl_port,) if self.secure else ()))
        for p in wait_ports_free(ports):
            if not port_free(p):
                raise BrokerError(
                    f"port {p} on 127.0.0.1 is already taken by {describe_holder(p)}; "
                    "choose other ports with --port (LEDGERFLOW_KAFKA_PORT) or stop that process"
                )
        libs = resolve_jars(self.version)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        formatted = (self.data_dir / "logs" / "meta.properties").exists()
        self._check_formatted_alike(formatted)
        props = self._write_config()
        if not formatted:
            self._format(java, libs, props)
        cmd = server_command(java, libs, self.heap_mb, self.data_dir, props)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        state = BrokerState(
            pid=proc.pid,
            port=self.port,
            controller_port=self.controller_port,
            version=self.version,
            data_dir=str(self.data_dir),
            log_file=str(self.log_file),
            started_at=time.time(),
            sasl_port=self.sasl_port,
        )
        self.state_file.write_text(json.dumps(asdict(state)))
        if not self._wait_ready(state, timeout, proc):
            self.down()
            raise BrokerError(f"broker did not answer within {timeout:.0f}s; last log lines:\n{self.tail(30)}")
        return state, True

    def _reuse_other(self) -> BrokerState | None:
        """A ledgerflow broker started from another data dir already answers on our port:
        use it (its recorded state) instead of failing on the taken port."""
        other = ledgerflow_state_dir(self.port)
        if other is None or other == self.data_dir or not answers_metadata(self.bootstrap):
            return None
        if (other / "broker.json").exists():
            state = LocalBroker(other, port=self.port).state()
            if state is not None:
                return state
            return None
        from app.kafka.local_cluster import LocalCluster

        cluster = LocalCluster.from_state(other)
        if cluster is None:
            return None
        return BrokerState(
            pid=cluster.proxy_pid() or 0,
            port=self.port,
            controller_port=0,
            version=cluster.version,
            data_dir=str(other),
            log_file=str(other / "node-1" / "broker.log"),
            started_at=cluster.started_at(),
            servers=cluster.bootstrap,
        )

    def _wait_ready(self, state: BrokerState, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise BrokerError(f"broker exited with status {proc.returncode}; last log lines:\n{self.tail(30)}")
            if answers_metadata(state.bootstrap, timeout=1.0):
                return True
            time.sleep(0.3)
        return False

    def down(self, *, timeout: float = 30.0) -> bool:
        """Stop the broker (SIGTERM, then SIGKILL after ``timeout``); True if one was running."""
        state = self.state()
        if state is None:
            self.state_file.unlink(missing_ok=True)
            return False
        _terminate(state.pid, timeout)
        self.state_file.unlink(missing_ok=True)
        return True

    def kill(self) -> None:
        """SIGKILL the broker (fault injection: a hard broker bounce)."""
        state = self.state()
        if state is not None:
            kill_hard(state.pid)

    def tail(self, lines: int = 50) -> str:
        return log_tail(self.log_file, lines)

    # -- tools -----------------------------------------------------------------
    def tool_command(self, tool: str, args: Sequence[str], bootstrap: str | None = None) -> list[str]:
        """The java command line running one of Kafka's operator tools against a broker."""
        if tool not in TOOLS:
            raise BrokerError(f"unknown tool {tool!r}; choose one of {', '.join(sorted(TOOLS))}")
        java = _require("java")
        libs = resolve_jars(self.version)
        quiet = cache_dir() / "tools-log4j2.properties"
        if not quiet.exists():
            quiet.parent.mkdir(parents=True, exist_ok=True)
            quiet.write_text(_LOG4J2.format(kind="Console", target="appender.out.target = SYSTEM_ERR\n", level="WARN"))
        argv = list(args)
        if not any(a in ("--bootstrap-server", "--broker-list", "-h", "--help") for a in argv):
            flag = "--broker-list" if tool == "copier" else "--bootstrap-server"  # the copier's own name for it
            argv = [flag, bootstrap or self.bootstrap, *argv]
        return [
            java,
            "-Xmx256m",
            f"-Dlog4j2.configurationFile={quiet}",
            "-cp",
            f"{libs}/*",
            TOOLS[tool],
            *argv,
        ]

    # -- internals -------------------------------------------------------------
    def _check_formatted_alike(self, formatted: bool) -> None:
        """A data dir formatted without the admin user cannot be secured later (SCRAM users
        of the bootstrap are written at format time), nor can a secured one drop it."""
        marker = self.secure_dir / "formatted"
        if formatted and self.secure != marker.exists():
            was = "with" if marker.exists() else "without"
            raise BrokerError(
                f"{self.data_dir} was formatted {was} --secure; start it the same way or use another --data-dir"
            )

    def _listeners(self) -> list[str]:
        plain = [
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        ]
        if not self.secure:
            return plain
        from app.security.certs import ensure_tls
        from app.security.scram import ADMIN_USER, MECHANISM

        tls = ensure_tls(self.secure_dir, [SECURE_HOST])
        ln = "listener.name.sasl_ssl"
        return [
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port},"
            f"SASL_SSL://127.0.0.1:{self.sasl_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port},SASL_SSL://{SECURE_HOST}:{self.sasl_port}",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL",
            f"{ln}.sasl.enabled.mechanisms={MECHANISM}",
            f"{ln}.{MECHANISM.lower()}.sasl.jaas.config={SCRAM_LOGIN} required;",
            f"{ln}.ssl.keystore.type=PKCS12",
            f"{ln}.ssl.keystore.location={tls.keystore}",
            f"{ln}.ssl.keystore.password={tls.keystore_password()}",
            f"{ln}.ssl.key.password={tls.keystore_password()}",
            f"{ln}.ssl.client.auth=none",
            f"{ln}.connections.max.reauth.ms={REAUTH_MS}",
            f"authorizer.class.name={AUTHORIZER}",
            "allow.everyone.if.no.acl.found=false",
            f"super.users=User:ANONYMOUS;User:{ADMIN_USER}",
        ]

    def _write_config(self) -> Path:
        props = self.data_dir / "server.properties"
        fd = os.open(props, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds the keystore password
        with os.fdopen(fd, "w") as fh:
            fh.write(self._properties())
        (self.data_dir / "log4j2.properties").write_text(
            _LOG4J2.format(kind="Console", target="appender.out.target = SYSTEM_OUT\n", level="INFO")
        )
        return props

    def _properties(self) -> str:
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                *self._listeners(),
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                f"controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}",
                f"log.dirs={self.data_dir / 'logs'}",
                "num.partitions=1",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=10",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "transaction.state.log.num.partitions=10",
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=false",
                "log.cleaner.backoff.ms=5000",
                "transaction.remove.expired.transaction.cleanup.interval.ms=60000",
                "transaction.abort.timed.out.transaction.cleanup.interval.ms=5000",
                "",
            ]
        )

    def _format(self, java: str, libs: Path, props: Path) -> None:
        base = [
            java,
            "-Xmx256m",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
        ]
        cp = ["-cp", f"{libs}/*", "kafka.tools.StorageTool"]
        uuid = subprocess.run([*base, *cp, "random-uuid"], capture_output=True, text=True, check=True)
        cluster_id = uuid.stdout.strip().splitlines()[-1]
        scram: list[str] = []
        if self.secure:
            from app.security.scram import ADMIN_USER, ensure_password, format_argument

            scram = ["--add-scram", format_argument(ADMIN_USER, ensure_password(self.secure_dir, ADMIN_USER))]
        fmt = subprocess.run(
            [*base, *cp, "format", "-t", cluster_id, "-c", str(props), "--standalone", *scram],
            capture_output=True,
            text=True,
            check=False,
        )
        if fmt.returncode != 0:
            raise BrokerError(f"formatting KRaft storage failed:\n{fmt.stdout[-2000:]}{fmt.stderr[-2000:]}")
        if self.secure:
            (self.secure_dir / "formatted").write_text(f"{ADMIN_USER}\n")


def server_command(
    java: str, libs: Path, heap_mb: int, data_dir: Path, props: Path, extra_jvm: Sequence[str] = ()
) -> list[str]:
    """The ``kafka.Kafka`` command line for one node whose config and log4j2 file live in ``data_dir``."""
    return [
        java,
        f"-Xms{heap_mb}m",
        f"-Xmx{heap_mb}m",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        *extra_jvm,
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={data_dir / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={data_dir}",
        "-cp",
        f"{libs}/*",
        "kafka.Kafka",
        str(props),
    ]


def _terminate(pid: int, timeout: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if not _wait_gone(pid, timeout):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        _wait_gone(pid, 10)


def kill_hard(pid: int) -> None:
    """SIGKILL ``pid`` and wait until it is gone (fault injection)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _wait_gone(pid, 30)


def log_tail(path: Path, lines: int = 50) -> str:
    """The last ``lines`` lines of a server's log file ("" if it cannot be read)."""
    try:
        data = path.read_bytes()[-200_000:]
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):  # reap it if it is our child
            os.waitpid(pid, os.WNOHANG)
        if not _pid_alive(pid):
            return True
        time.sleep(0.1)
    return not _pid_alive(pid)


def default_broker() -> LocalBroker:
    """The broker the main job uses when ``KAFKA_BOOTSTRAP_SERVERS`` is not set."""
    data_dir = Path(os.environ.get("LEDGERFLOW_KAFKA_DATA", ".ledgerflow/kafka"))
    port = int(os.environ.get("LEDGERFLOW_KAFKA_PORT", DEFAULT_PORT))
    return LocalBroker(data_dir, port=port)


def ensure_bootstrap(explicit: str | None = None) -> str:
    """Bootstrap servers to use: ``explicit``, else ``KAFKA_BOOTSTRAP_SERVERS``,
    else the local broker (started now if it is not running)."""
    if explicit:
        return explicit
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env:
        return env
    broker = default_broker()
    from app.kafka.local_cluster import LocalCluster

    cluster = LocalCluster.from_state(broker.data_dir)
    if cluster is not None and cluster.answers():  # `kafka up --brokers 3` ran in this data dir
        return cluster.bootstrap
    state, started = broker.up()
    if started:
        print(f"ledgerflow: started local Kafka {state.version} on {state.bootstrap}", file=sys.stderr)
    elif Path(state.data_dir) != broker.data_dir:
        print(
            f"ledgerflow: reusing the local Kafka already running on {state.bootstrap} (data dir {state.data_dir})",
            file=sys.stderr,
        )
    return state.bootstrap
