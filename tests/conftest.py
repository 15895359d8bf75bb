"""Shared fixtures.

The session ``kafka`` fixture finds a real broker in this order:
``KAFKA_BOOTSTRAP_SERVERS`` → a testcontainers Kafka when a Docker engine answers →
the local broker ledgerflow assembles from Maven Central jars (in a throwaway data
dir on its own ports). If none can be had, every test that asked for it FAILS:
integration tests never skip silently.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.kafka.local_broker import LocalBroker

TEST_PORT = int(os.environ.get("LEDGERFLOW_TEST_KAFKA_PORT", "39092"))


@dataclass
class KafkaEnv:
    bootstrap: str
    origin: str  # "env" | "testcontainers" | "local"
    broker: LocalBroker | None  # set when the local broker runs (tools + fault injection)

    def tool(self, tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run one of Kafka's own operator tools against this broker."""
        runner = self.broker or LocalBroker(Path(tempfile.gettempdir()) / "ledgerflow-tools")
        cmd = runner.tool_command(tool, list(args), bootstrap=self.bootstrap)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        proc = subprocess.run(["docker", "info"], capture_output=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


@pytest.fixture(scope="session")
def kafka() -> Iterator[KafkaEnv]:
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env:
        yield KafkaEnv(env, "env", None)
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("apache/kafka:4.1.0").with_kraft() as container:
            yield KafkaEnv(container.get_bootstrap_server(), "testcontainers", None)
        return
    data_dir = Path(tempfile.mkdtemp(prefix="ledgerflow-test-kafka-"))
    broker = LocalBroker(data_dir, port=TEST_PORT)
    try:
        broker.up(timeout=120)
    except Exception as exc:  # fail, never skip: a missing broker is a broken environment
        pytest.fail(f"no Kafka broker for integration tests: {exc}", pytrace=False)
    try:
        yield KafkaEnv(broker.bootstrap, "local", broker)
    finally:
        broker.down()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Names unique to one test, so tests share the broker without sharing topics."""
    tag = uuid.uuid4().hex[:8]
    return lambda name: f"t{tag}.{name}"


@pytest.fixture(scope="session")
def postgres() -> Iterator[object]:
    """A real PostgreSQL server (Debian package) on a throwaway data dir and port.
    Fails — never skips — when the server binaries are missing."""
    from tests.pgserver import PgServer

    server = PgServer(int(os.environ.get("LEDGERFLOW_TEST_PG_PORT", "35432")))
    try:
        server.init()
    except Exception as exc:
        server.destroy()
        pytest.fail(f"no PostgreSQL server for integration tests: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def cluster() -> Iterator[object]:
    """A three-node local Kafka cluster behind the fault proxy, on its own ports
    (tests/cluster.py: ``ClusterEnv``). Fails — never skips — when it cannot start."""
    from tests.cluster import start_cluster

    yield from start_cluster()
