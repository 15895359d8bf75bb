"""The secured broker (``SASL_SSL`` + SCRAM-SHA-512 + ``StandardAuthorizer``), started
once per session on its own ports (``LEDGERFLOW_TEST_SECURE_PORT``, default 29600:
plaintext 29600, controller 29601, SASL_SSL 29602). A broker that cannot start FAILS
every test that asked for it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.kafka.local_broker import LocalBroker
from tests.security.secure_env import SecureKafka

SECURE_PORT = int(os.environ.get("LEDGERFLOW_TEST_SECURE_PORT", "29600"))


@pytest.fixture(scope="session")
def secure_kafka() -> Iterator[SecureKafka]:
    data_dir = Path(tempfile.mkdtemp(prefix="ledgerflow-test-secure-"))
    broker = LocalBroker(data_dir, port=SECURE_PORT, secure=True)
    try:
        broker.up(timeout=120)
    except Exception as exc:  # fail, never skip
        pytest.fail(f"no secured Kafka broker for the security tests: {exc}", pytrace=False)
    try:
        yield SecureKafka(broker)
    finally:
        broker.down()
        shutil.rmtree(data_dir, ignore_errors=True)
