"""A replicated local Apache Kafka cluster: N combined broker+controller KRaft nodes.

``ledgerflow kafka up --brokers 3`` starts three JVMs, each both a broker and a
KRaft controller (``process.roles=broker,controller``). Combined nodes, not three
controllers plus three brokers: on a 2-core machine six JVMs (each with its own
JIT, GC and metadata log) would eat the CPU a pipeline needs, and three combined
nodes still give what the fault suite exercises: a three-voter quorum that
survives one node down, an active controller that can be killed, leaders,
followers and coordinators that move. The cost is that a node's death hits broker
and controller at once (the harsher case, so tests cover it anyway).

Layout for a base port ``P`` (default 19092) and node ``k = 1..N``:

- ``P+k-1``: the client port clients bootstrap from and brokers advertise
  (``advertised.listeners=CLIENT://127.0.0.1:P+k-1``). With the proxy (default) it
  is held by ``app.faults.proxy``, which forwards to the broker's own client
  listener on ``P+100+k-1``; without the proxy the broker listens there itself.
- ``P+200+k-1``: the INTERNAL listener (inter-broker replication), never proxied.
- ``P+300+k-1``: the CONTROLLER listener (Raft), never proxied.
- ``P+400``: the proxy's control port (loopback, one JSON line per request).

The quorum is static: ``controller.quorum.voters=1@...,2@...,3@...`` and storage is
formatted without ``--standalone``/``--initial-controllers`` (Kafka 4.3.1's
StorageTool accepts that for a static quorum: ``kraft.version`` 0). Settings: RF 3
and ``min.insync.replicas=2`` for ``__consumer_offsets`` and ``__transaction_state``
and as broker defaults (``default.replication.factor``, ``min.insync.replicas``),
clipped to N for smaller clusters. Both internal topics are created at ``up``
while every node is alive (a FindCoordinator and one ``init_transactions``), so a
later fault can never leave them created with fewer replicas.

State: ``<data_dir>/cluster.json`` (layout, proxy pid) and ``<data_dir>/node-K/node.json``
(that node's pid). ``down`` stops every node and the proxy it recorded; a node that
was SIGSTOPped is resumed first so SIGTERM can act. Per-node logs are
``<data_dir>/node-K/broker.log``; the proxy logs to ``<data_dir>/proxy.log``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from app.kafka.local_broker import (
    _LOG4J2,
    DEFAULT_PORT,
    BrokerError,
    _pid_alive,
    _quiet_logger,
    _require,
    _terminate,
    _wait_gone,
    describe_holder,
    kafka_version,
    log_tail,
    port_free,
    resolve_jars,
    server_command,
    wait_ports_free,
)

DEFAULT_CLUSTER_HEAP_MB = 448
NODE_ACTIONS = ("kill", "term", "stop", "cont", "restart")
PROXY_ACTIONS = ("cut", "blackhole", "slow", "heal")
# 1 GC thread each: three JVMs share 2 cores with the pipeline
_JVM_EXTRA = ("-XX:ParallelGCThreads=1", "-XX:ConcGCThreads=1", "-XX:CICompilerCount=2")


@dataclass(frozen=True)
class ClusterLayout:
    """Every port of a cluster, derived from the base port and node count (pure)."""

    base_port: int
    brokers: int
    proxy: bool

    def client_port(self, node: int) -> int:
        """The advertised port clients use (held by the proxy when there is one)."""
        return self.base_port + node - 1

    def broker_client_port(self, node: int) -> int:
        """Where the broker's CLIENT listener binds (behind the proxy, or advertised itself)."""
        return self.base_port + 100 + node - 1 if self.proxy else self.client_port(node)

    def internal_port(self, node: int) -> int:
        return self.base_port + 200 + node - 1

    def controller_port(self, node: int) -> int:
        return self.base_port + 300 + node - 1

    @property
    def control_port(self) -> int:
        return self.base_port + 400

    @property
    def nodes(self) -> range:
        return range(1, self.brokers + 1)

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{self.client_port(n)}" for n in self.nodes)

    def all_ports(self) -> list[int]:
        ports = []
        for n in self.nodes:
            ports += [self.client_port(n), self.internal_port(n), self.controller_port(n)]
            if self.proxy:
                ports.append(self.broker_client_port(n))
        if self.proxy:
            ports.append(self.control_port)
        return ports

    def voters(self) -> str:
        return ",".join(f"{n}@127.0.0.1:{self.controller_port(n)}" for n in self.nodes)

    def server_properties(self, node: int, log_dir: Path) -> str:
        """``server.properties`` of one node."""
        rf = min(3, self.brokers)
        isr = min(2, rf)
        return "\n".join(
            [
                "process.roles=broker,controller",
                f"node.id={node}",
                f"listeners=CLIENT://127.0.0.1:{self.broker_client_port(node)},"
                f"INTERNAL://127.0.0.1:{self.internal_port(node)},"
                f"CONTROLLER://127.0.0.1:{self.controller_port(node)}",
                f"advertised.listeners=CLIENT://127.0.0.1:{self.client_port(node)},"
                f"INTERNAL://127.0.0.1:{self.internal_port(node)}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=INTERNAL",
                "listener.security.protocol.map=CLIENT:PLAINTEXT,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT",
                f"controller.quorum.voters={self.voters()}",
                f"log.dirs={log_dir}",
                "num.partitions=1",
                f"default.replication.factor={rf}",
                f"min.insync.replicas={isr}",
                f"offsets.topic.replication.factor={rf}",
                "offsets.topic.num.partitions=10",
                f"transaction.state.log.replication.factor={rf}",
                f"transaction.state.log.min.isr={isr}",
                "transaction.state.log.num.partitions=10",
                "unclean.leader.election.enable=false",
                "replica.lag.time.max.ms=8000",
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=false",
                "num.network.threads=2",
                "num.io.threads=4",
                "background.threads=4",
                "log.cleaner.threads=1",
                "log.cleaner.backoff.ms=5000",
                "transaction.remove.expired.transaction.cleanup.interval.ms=60000",
                "transaction.abort.timed.out.transaction.cleanup.interval.ms=5000",
                "",
            ]
        )


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


def _proc_state(pid: int) -> str:
    """One-letter kernel state of ``pid`` (R, S, T = stopped, Z ...), '' when gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0]
    except OSError:
        return ""


class LocalCluster:
    """N local combined broker+controller nodes (and their fault proxy) in one data dir."""

    def __init__(
        self,
        data_dir: Path,
        *,
        brokers: int = 3,
        port: int = DEFAULT_PORT,
        heap_mb: int = DEFAULT_CLUSTER_HEAP_MB,
        proxy: bool = True,
        version: str | None = None,
    ) -> None:
        if brokers < 1:
            raise BrokerError(f"--brokers must be at least 1, not {brokers}")
        self.data_dir = data_dir.resolve()
        self.layout = ClusterLayout(port, brokers, proxy)
        self.heap_mb = heap_mb
        self.version = version or kafka_version()
        self.state_file = self.data_dir / "cluster.json"

    @classmethod
    def from_state(cls, data_dir: Path) -> LocalCluster | None:
        """The cluster recorded in ``data_dir/cluster.json`` (running or not), else None."""
        raw = _read_json(data_dir.resolve() / "cluster.json")
        if raw is None:
            return None
        return cls(
            data_dir,
            brokers=int(raw["brokers"]),
            port=int(raw["base_port"]),
            heap_mb=int(raw["heap_mb"]),
            proxy=bool(raw["proxy"]),
            version=str(raw["version"]),
        )

    # -- paths and state -------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        return self.layout.bootstrap

    def node_dir(self, node: int) -> Path:
        return self.data_dir / f"node-{node}"

    def log_file(self, node: int) -> Path:
        return self.node_dir(node) / "broker.log"

    @property
    def proxy_log(self) -> Path:
        return self.data_dir / "proxy.log"

    def node_pid(self, node: int) -> int | None:
        """pid of node ``node`` if its process is alive (running or SIGSTOPped)."""
        raw = _read_json(self.node_dir(node) / "node.json")
        if raw is None:
            return None
        pid = int(raw["pid"])
        return pid if _pid_alive(pid) else None

    def node_paused(self, node: int) -> bool:
        pid = self.node_pid(node)
        return pid is not None and _proc_state(pid) == "T"

    def proxy_pid(self) -> int | None:
        raw = _read_json(self.state_file)
        pid = int(raw.get("proxy_pid") or 0) if raw else 0
        return pid if pid and _pid_alive(pid) else None

    def started_at(self) -> float:
        raw = _read_json(self.state_file)
        return float(raw["started_at"]) if raw else 0.0

    def running(self) -> bool:
        return self.state_file.exists() and any(self.node_pid(n) for n in self.layout.nodes)

    def _check(self, node: int) -> None:
        if node not in self.layout.nodes:
            raise BrokerError(f"node {node} is not in this cluster (nodes 1..{self.layout.brokers})")

    # -- readiness --------------------------------------------------------------
    def live_brokers(self, timeout: float = 2.0) -> set[int]:
        """Node ids the cluster reports as live (registered, unfenced brokers), asked
        of the nodes' own client listeners so a proxy fault does not hide them."""
        from confluent_kafka.admin import AdminClient

        direct = ",".join(f"127.0.0.1:{self.layout.broker_client_port(n)}" for n in self.layout.nodes)
        admin = AdminClient({"bootstrap.servers": direct, "log_level": 0, "logger": _quiet_logger()})
        try:
            meta = admin.list_topics(timeout=timeout)
        except Exception:
            return set()
        return {int(b) for b in meta.brokers}

    def answers(self) -> bool:
        return bool(self.live_brokers())

    def node_answers(self, node: int, timeout: float = 5.0) -> bool:
        """True when node ``node`` itself answers metadata on its own client listener
        and lists itself as a live broker (registered and unfenced)."""
        from confluent_kafka.admin import AdminClient

        direct = f"127.0.0.1:{self.layout.broker_client_port(node)}"
        admin = AdminClient({"bootstrap.servers": direct, "log_level": 0, "logger": _quiet_logger()})
        try:
            meta = admin.list_topics(timeout=timeout)
        except Exception:
            return False
        return int(meta.orig_broker_id) == node and node in {int(b) for b in meta.brokers}

    def wait_live(self, nodes: set[int], timeout: float) -> None:
        """Wait until every node in ``nodes`` answers for itself and is a live broker;
        BrokerError with the log tail of the missing ones if not."""
        deadline = time.monotonic() + timeout
        live: set[int] = set()
        while time.monotonic() < deadline:
            for n in nodes:
                if self.node_pid(n) is None:
                    raise BrokerError(f"node {n} exited while starting; last log lines:\n{self.tail(n, 30)}")
            live = {n for n in nodes if n in live or self.node_answers(n)}
            if nodes <= live:
                return
            time.sleep(0.3)
        missing = sorted(nodes - live)
        tails = "\n".join(f"--- node {n} ---\n{self.tail(n, 15)}" for n in missing)
        raise BrokerError(f"node(s) {missing} not live after {timeout:.0f}s (live: {sorted(live)}):\n{tails}")

    # -- lifecycle --------------------------------------------------------------
    def up(self, *, timeout: float = 120.0) -> bool:
        """Start every node and the proxy unless the cluster already runs; True if started now.

        Returns only when every node is a live broker and both internal topics exist
        with all replicas in sync."""
        if self.running():
            self.wait_live(set(self.layout.nodes), timeout)
            return False
        single = self.data_dir / "broker.json"
        if single.exists() and _read_json(single) and _pid_alive(int((_read_json(single) or {})["pid"])):
            raise BrokerError(
                f"a single-node broker runs from {self.data_dir}; stop it (`ledgerflow kafka down`) "
                "or give the cluster another --data-dir"
            )
        java = _require("java")
        busy = [p for p in self.layout.all_ports() if not port_free(p)]
        if busy:
            raise BrokerError(
                f"cannot start a {self.layout.brokers}-node cluster on base port {self.layout.base_port}: "
                + "; ".join(f"port {p} on 127.0.0.1 is already taken by {describe_holder(p)}" for p in busy)
                + ". Choose another --port or stop that process"
            )
        libs = resolve_jars(self.version)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for n in self.layout.nodes:
            self._prepare_node(java, libs, n)
        state: dict[str, Any] = {
            "brokers": self.layout.brokers,
            "base_port": self.layout.base_port,
            "heap_mb": self.heap_mb,
            "proxy": self.layout.proxy,
            "version": self.version,
            "bootstrap": self.bootstrap,
            "control_port": self.layout.control_port if self.layout.proxy else None,
            "proxy_pid": None,
            "started_at": time.time(),
        }
        self.state_file.write_text(json.dumps(state))
        try:
            if self.layout.proxy:
                state["proxy_pid"] = self._start_proxy()
                self.state_file.write_text(json.dumps(state))
            for n in self.layout.nodes:
                self._start_node(java, libs, n)
            self.wait_live(set(self.layout.nodes), timeout)
            self._create_internal_topics(timeout)
        except BaseException:
            self.down(timeout=10)
            raise
        return True

    def _prepare_node(self, java: str, libs: Path, node: int) -> None:
        d = self.node_dir(node)
        d.mkdir(parents=True, exist_ok=True)
        props = d / "server.properties"
        props.write_text(self.layout.server_properties(node, d / "logs"))
        (d / "log4j2.properties").write_text(
            _LOG4J2.format(kind="Console", target="appender.out.target = SYSTEM_OUT\n", level="INFO")
        )
        if (d / "logs" / "meta.properties").exists():
            return
        cluster_id_file = self.data_dir / "cluster-id"
        base = [java, "-Xmx256m", f"-Dlog4j2.configurationFile={d / 'log4j2.properties'}", "-cp", f"{libs}/*"]
        if not cluster_id_file.exists():
            uuid = subprocess.run(
                [*base, "kafka.tools.StorageTool", "random-uuid"], capture_output=True, text=True, check=True
            )
            cluster_id_file.write_text(uuid.stdout.strip().splitlines()[-1])
        cluster_id = cluster_id_file.read_text().strip()
        fmt = subprocess.run(
            [*base, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)],
            capture_output=True,
            text=True,
            check=False,
        )
        if fmt.returncode != 0:
            raise BrokerError(f"formatting node {node} failed:\n{fmt.stdout[-2000:]}{fmt.stderr[-2000:]}")

    def _start_node(self, java: str, libs: Path, node: int) -> int:
        d = self.node_dir(node)
        cmd = server_command(java, libs, self.heap_mb, d, d / "server.properties", _JVM_EXTRA)
        with open(self.log_file(node), "ab") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        (d / "node.json").write_text(json.dumps({"pid": proc.pid, "started_at": time.time()}))
        return proc.pid

    def _start_proxy(self) -> int:
        routes = [f"{self.layout.client_port(n)}={self.layout.broker_client_port(n)}" for n in self.layout.nodes]
        cmd = [
            sys.executable,
            "-m",
            "app.faults.proxy",
            "--cluster-dir",
            str(self.data_dir),
            "--control-port",
            str(self.layout.control_port),
            *routes,
        ]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        with open(self.proxy_log, "ab") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env
            )
        from app.faults.proxy import control

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BrokerError(f"fault proxy exited with {proc.returncode}: {self.proxy_log.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                control(self.layout.control_port, {"cmd": "status"})
                return proc.pid
            time.sleep(0.1)
        raise BrokerError(f"fault proxy did not answer on control port {self.layout.control_port}")

    def _create_internal_topics(self, timeout: float) -> None:
        """Create ``__consumer_offsets`` and ``__transaction_state`` now, with every node up."""
        from confluent_kafka import Producer
        from confluent_kafka.admin import AdminClient

        conf = {"bootstrap.servers": self.bootstrap, "logger": _quiet_logger()}
        admin = AdminClient(conf)
        producer = Producer({**conf, "transactional.id": "ledgerflow-cluster-warmup"})
        producer.init_transactions(timeout)
        deadline = time.monotonic() + timeout
        want = {"__consumer_offsets", "__transaction_state"}
        while time.monotonic() < deadline:
            # FindCoordinator creates __consumer_offsets; the answer itself may be
            # NOT_COORDINATOR while its partitions load, which is fine here
            with contextlib.suppress(Exception):
                admin.describe_consumer_groups(["ledgerflow-cluster-warmup"])["ledgerflow-cluster-warmup"].result()
            meta = admin.list_topics(timeout=5)
            ok = [
                t
                for t in want
                if t in meta.topics
                and meta.topics[t].partitions
                and all(len(p.isrs) == min(3, self.layout.brokers) for p in meta.topics[t].partitions.values())
            ]
            if len(ok) == len(want):
                return
            time.sleep(0.3)
        raise BrokerError("internal topics were not fully replicated in time")

    def down(self, *, timeout: float = 30.0) -> bool:
        """Stop every node (resuming paused ones first) and the proxy; True if any ran."""
        any_ran = False
        pids = [p for p in (self.node_pid(n) for n in self.layout.nodes) if p]
        for pid in pids:
            any_ran = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for pid in pids:
            if not _wait_gone(pid, max(0.1, deadline - time.monotonic())):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, 10)
        proxy = self.proxy_pid()
        if proxy:
            any_ran = True
            _terminate(proxy, 5)
        for n in self.layout.nodes:
            (self.node_dir(n) / "node.json").unlink(missing_ok=True)
        self.state_file.unlink(missing_ok=True)
        return any_ran

    # -- faults ----------------------------------------------------------------
    def fault(self, node: int, action: str, *, timeout: float = 90.0) -> str:
        """Hurt one node: ``kill`` (SIGKILL), ``term`` (SIGTERM, wait for exit), ``stop``
        (SIGSTOP), ``cont`` (SIGCONT), ``restart`` (start it again on the same data dir
        and wait until it is a live broker: a paused node is SIGKILLed first, a running
        one SIGTERMed); or a proxy mode ``cut | blackhole | slow:MS | heal``. Returns
        what was done, in words."""
        self._check(node)
        mode = action.partition(":")[0]
        if mode in PROXY_ACTIONS:
            return self.proxy_mode(node, action)
        if mode not in NODE_ACTIONS:
            raise BrokerError(f"unknown fault {action!r}; choose {', '.join(NODE_ACTIONS + PROXY_ACTIONS)}")
        pid = self.node_pid(node)
        if mode == "restart":
            if pid is not None:
                if _proc_state(pid) == "T":
                    os.kill(pid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGTERM)
                if not _wait_gone(pid, 60):
                    os.kill(pid, signal.SIGKILL)
                    _wait_gone(pid, 10)
            java = _require("java")
            libs = resolve_jars(self.version)
            lay = self.layout
            wait_ports_free([lay.broker_client_port(node), lay.internal_port(node), lay.controller_port(node)])
            new = self._start_node(java, libs, node)
            self.wait_live({node}, timeout)
            return f"node {node} restarted (pid {new})"
        if pid is None:
            raise BrokerError(f"node {node} is not running; `ledgerflow kafka fault {node} restart` starts it")
        if mode == "kill":
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 30)
            return f"node {node} SIGKILLed (pid {pid})"
        if mode == "term":
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGTERM)
            if not _wait_gone(pid, 60):
                raise BrokerError(f"node {node} (pid {pid}) did not exit within 60s of SIGTERM")
            return f"node {node} stopped cleanly (pid {pid})"
        if mode == "stop":
            os.kill(pid, signal.SIGSTOP)
            return f"node {node} paused (SIGSTOP, pid {pid})"
        os.kill(pid, signal.SIGCONT)
        return f"node {node} resumed (SIGCONT, pid {pid})"

    def proxy_mode(self, node: int, mode: str) -> str:
        """Set the client proxy of ``node`` to ``cut | blackhole | slow:MS | heal``."""
        self._check(node)
        if not self.layout.proxy:
            raise BrokerError("this cluster runs without the fault proxy (started with --no-proxy)")
        from app.faults.proxy import control, parse_mode

        parse_mode(mode)  # a bad mode is an error here, before anything is sent
        try:
            reply = control(
                self.layout.control_port, {"cmd": "mode", "port": self.layout.client_port(node), "mode": mode}
            )
        except OSError as exc:
            raise BrokerError(f"the fault proxy does not answer on port {self.layout.control_port}: {exc}") from exc
        if not reply.get("ok"):
            raise BrokerError(f"fault proxy refused: {reply.get('error')}")
        return f"node {node} client proxy: {mode}"

    def proxy_modes(self) -> dict[int, str]:
        """Current proxy mode per node ({} when there is no proxy or it does not answer)."""
        if not self.layout.proxy:
            return {}
        from app.faults.proxy import control

        try:
            reply = control(self.layout.control_port, {"cmd": "status"})
        except OSError:
            return {}
        by_port = {int(k): str(v) for k, v in reply.get("modes", {}).items()}
        return {n: by_port.get(self.layout.client_port(n), "?") for n in self.layout.nodes}

    def tail(self, node: int, lines: int = 50) -> str:
        return log_tail(self.log_file(node), lines)

    def describe(self) -> dict[str, Any]:
        """Status per node for ``kafka status``: pid, paused, live, proxy mode."""
        modes = self.proxy_modes()
        nodes = []
        for n in self.layout.nodes:
            pid = self.node_pid(n)
            live = pid is not None and not self.node_paused(n) and self.node_answers(n)
            nodes.append(
                {
                    "node": n,
                    "pid": pid,
                    "state": "down" if pid is None else ("paused" if self.node_paused(n) else "running"),
                    "live": live,
                    "client_port": self.layout.client_port(n),
                    "proxy": modes.get(n),
                    "log": str(self.log_file(n)),
                }
            )
        return {"bootstrap": self.bootstrap, "version": self.version, "nodes": nodes, "proxy_pid": self.proxy_pid()}


__all__ = ["NODE_ACTIONS", "PROXY_ACTIONS", "ClusterLayout", "LocalCluster", "asdict"]
