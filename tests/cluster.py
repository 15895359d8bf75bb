"""The three-node test cluster: a session fixture helper plus the lookups fault tests need.

``start_cluster`` starts ``LocalCluster`` (three combined KRaft nodes behind the fault
proxy) in its own temporary data dir on its own ports (clients 29092-29094, broker
client listeners 29192-29194, inter-broker 29292-29294, controllers 29392-29394, proxy
control 29492; ``LEDGERFLOW_TEST_CLUSTER_PORT`` moves the block). When the cluster
cannot start, every test that asked for it FAILS, never skips.

``ClusterEnv`` is a ``KafkaEnv`` (``tests/harness.py`` helpers take it as they take the
single broker) with the cluster and the lookups: partition leaders, the active
controller (MetadataQuorumCommand), a transactional id's coordinator
(TransactionsCommand describe), hanging transactions on every broker (find-hanging).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from app.kafka.local_cluster import LocalCluster
from tests.conftest import KafkaEnv

CLUSTER_PORT = int(os.environ.get("LEDGERFLOW_TEST_CLUSTER_PORT", "29092"))


@dataclass
class ClusterEnv(KafkaEnv):
    cluster: LocalCluster

    @property
    def nodes(self) -> list[int]:
        return list(self.cluster.layout.nodes)

    def admin(self) -> AdminClient:
        return AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})

    def leader_of(self, topic: str, partition: int = 0) -> int:
        meta = self.admin().list_topics(topic, timeout=15)
        return int(meta.topics[topic].partitions[partition].leader)

    def replicas_of(self, topic: str, partition: int = 0) -> tuple[list[int], list[int]]:
        """(replicas, in-sync replicas) of one partition."""
        p = self.admin().list_topics(topic, timeout=15).topics[topic].partitions[partition]
        return list(p.replicas), list(p.isrs)

    def active_controller(self) -> int:
        """The KRaft leader (``kafka-metadata-quorum describe --status`` LeaderId)."""
        proc = self.tool("metadata-quorum", "describe", "--status", timeout=60)
        m = re.search(r"LeaderId:\s+(\d+)", proc.stdout)
        assert m, f"metadata-quorum describe --status gave no LeaderId: {proc.stdout[-500:]}{proc.stderr[-1500:]}"
        return int(m.group(1))

    def coordinator_of(self, transactional_id: str) -> int | None:
        """The broker coordinating ``transactional_id`` (``kafka-transactions describe``), or None."""
        proc = self.tool("transactions", "describe", "--transactional-id", transactional_id, timeout=60)
        lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
        if proc.returncode != 0 or len(lines) < 2:
            return None
        header, row = re.split(r"\s{2,}|\t", lines[0].strip()), re.split(r"\s{2,}|\t", lines[1].strip())
        if "CoordinatorId" not in header:
            return None
        return int(row[header.index("CoordinatorId")])

    def find_hanging(self) -> dict[int, list[str]]:
        """``kafka-transactions find-hanging --broker-id N`` for every node: rows per broker."""
        out: dict[int, list[str]] = {}
        for n in self.nodes:
            proc = self.tool("transactions", "find-hanging", "--broker-id", str(n), timeout=120)
            assert proc.returncode == 0, f"find-hanging --broker-id {n} failed: {proc.stderr[-2000:]}"
            rows = [ln for ln in proc.stdout.splitlines()[1:] if ln.strip()]
            out[n] = rows
        return out

    def restore(self, timeout: float = 120) -> None:
        """Undo every fault: proxies healed, paused nodes resumed, dead nodes restarted,
        then wait until all three are live (so one test's fault never leaks into the next)."""
        for n in self.nodes:
            if self.cluster.layout.proxy:
                self.cluster.proxy_mode(n, "heal")
            if self.cluster.node_paused(n):
                self.cluster.fault(n, "cont")
        for n in self.nodes:
            if self.cluster.node_pid(n) is None:
                self.cluster.fault(n, "restart", timeout=timeout)
        self.cluster.wait_live(set(self.nodes), timeout)
        self.wait_fully_replicated(["__consumer_offsets", "__transaction_state"], timeout)

    def wait_fully_replicated(self, topics: list[str], timeout: float = 120) -> None:
        """Wait until every partition of ``topics`` has all its replicas in sync."""
        deadline = time.monotonic() + timeout
        lagging: list[str] = []
        while time.monotonic() < deadline:
            meta = self.admin().list_topics(timeout=10)
            lagging = [
                f"{t}[{p}]"
                for t in topics
                if t in meta.topics
                for p, part in meta.topics[t].partitions.items()
                if len(part.isrs) < len(part.replicas)
            ]
            if not lagging:
                return
            time.sleep(0.5)
        raise AssertionError(f"partitions still under-replicated after {timeout}s: {lagging[:10]}")


def start_cluster() -> Iterator[ClusterEnv]:
    """Generator body of the session ``cluster`` fixture (see tests/conftest.py)."""
    data_dir = Path(tempfile.mkdtemp(prefix="ledgerflow-test-cluster-"))
    cluster = LocalCluster(data_dir, brokers=3, port=CLUSTER_PORT)
    t0 = time.monotonic()
    try:
        cluster.up(timeout=180)
    except Exception as exc:  # fail, never skip: a cluster that cannot start is a broken environment
        cluster.down(timeout=10)
        pytest.fail(f"no three-node Kafka cluster (logs kept in {data_dir}): {exc}", pytrace=False)
    print(f"\ncluster: 3 nodes up on {cluster.bootstrap} in {time.monotonic() - t0:.1f}s ({data_dir})")
    try:
        yield ClusterEnv(cluster.bootstrap, "cluster", None, cluster)
    finally:
        cluster.down(timeout=20)
        shutil.rmtree(data_dir, ignore_errors=True)
