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

# Every server a test session starts, by the variable that moves its port and its
# default. Under pytest-xdist each worker runs its own session with its own servers:
# worker N shifts every port by N * WORKER_PORT_STRIDE, before any test module reads them.
# Shifted or not, every port stays below Linux's ephemeral range (32768-60999): a port
# there can be held by some client connection's local end when a server wants it.
TEST_PORT_DEFAULTS = {
    "LEDGERFLOW_TEST_KAFKA_PORT": 19092,  # the session broker (+1: its controller)
    "LEDGERFLOW_TEST_KAFKA_PORT2": 19192,  # a second local broker for the CLI tests
    "LEDGERFLOW_TEST_PG_PORT": 15432,
    "LEDGERFLOW_TEST_S3_PORT": 28330,  # a block of 30 (tests/s3env.py)
    "LEDGERFLOW_TEST_REGISTRY_PORT": 28081,
    "LEDGERFLOW_TEST_CLUSTER_PORT": 29092,  # a block of 401 (tests/cluster.py)
    "LEDGERFLOW_TEST_BOUNCE_PORT": 29900,  # the broker-bounce tests' own broker
    "LEDGERFLOW_TEST_SECURE_PORT": 29600,  # the secured broker (+1 controller, +2 SASL_SSL)
}
WORKER_PORT_STRIDE = 1000


def _worker_slot() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0


def _assign_worker_ports() -> None:
    slot = _worker_slot()
    for var, default in TEST_PORT_DEFAULTS.items():
        os.environ[var] = str(int(os.environ.get(var, default)) + slot * WORKER_PORT_STRIDE)


_assign_worker_ports()
TEST_PORT = int(os.environ["LEDGERFLOW_TEST_KAFKA_PORT"])


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

    server = PgServer(int(os.environ.get("LEDGERFLOW_TEST_PG_PORT", "15432")))
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
def s3() -> Iterator[object]:
    """A real S3 store (SeaweedFS, tests/s3env.py: ``S3Env``) on its own ports.
    Fails — never skips — when it cannot be built or started."""
    from tests.s3env import start_s3

    yield from start_s3()


@pytest.fixture(scope="session")
def cluster() -> Iterator[object]:
    """A three-node local Kafka cluster behind the fault proxy, on its own ports
    (tests/cluster.py: ``ClusterEnv``). Fails — never skips — when it cannot start."""
    from tests.cluster import start_cluster

    yield from start_cluster()


@pytest.fixture(scope="session")
def registry() -> Iterator[object]:
    """A real schema registry (Apicurio Registry, tests/registry_env.py: ``RegistryEnv``)
    on its own port. Fails — never skips — when it cannot be resolved or started."""
    from tests.registry_env import start_registry

    yield from start_registry()
