"""The session's schema registry for tests: a real Apicurio Registry
(``app.registry.server``) on its own port (``LEDGERFLOW_TEST_REGISTRY_PORT``, default
28081), in-memory storage, compatibility BACKWARD.

Fails, never skips, when it cannot be resolved or started."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.registry.server import RegistryServer

TEST_PORT = int(os.environ.get("LEDGERFLOW_TEST_REGISTRY_PORT", "28081"))  # below the ephemeral range


@dataclass
class RegistryEnv:
    server: RegistryServer

    @property
    def url(self) -> str:
        return self.server.url

    def client(self) -> Any:
        """confluent-kafka's own client (what a foreign producer or consumer uses)."""
        from confluent_kafka.schema_registry import SchemaRegistryClient

        return SchemaRegistryClient({"url": self.url, "timeout": 10})

    def spec_block(self, *, url: str | None = None, max_wait_s: float = 60, timeout_s: float = 5) -> str:
        """The pipeline spec's ``registry:`` block."""
        return f'registry:\n  url: "{url or self.url}"\n  timeout_s: {timeout_s}\n  max_wait_s: {max_wait_s}\n'


def start_registry(port: int = TEST_PORT, **kwargs: Any) -> Iterator[RegistryEnv]:
    root = Path(tempfile.mkdtemp(prefix="ledgerflow-test-registry-"))
    server = RegistryServer(root, port=port, **kwargs)
    try:
        server.up(timeout=120)
    except Exception as exc:  # fail, never skip: a missing registry is a broken environment
        server.down()
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"no schema registry (Apicurio) for integration tests: {exc}", pytrace=False)
    try:
        yield RegistryEnv(server)
    finally:
        server.down()
        shutil.rmtree(root, ignore_errors=True)
