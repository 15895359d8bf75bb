"""The session's S3 store for tests: SeaweedFS ``weed mini`` (``app.lake.seaweed``) on its
own ports, with credential files for the read-write and the read-only identity.

Fails, never skips, when the store cannot be built or started."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.lake.seaweed import RO, RW, SeaweedServer

# below the kernel's ephemeral range (32768-60999): the store starts mid-session, when
# the tests' many client sockets could already hold a port of a range up there
TEST_BASE_PORT = int(os.environ.get("LEDGERFLOW_TEST_S3_PORT", "28330"))


@dataclass
class S3Env:
    server: SeaweedServer
    secrets: Path  # holds rw.key, rw.secret, ro.key, ro.secret

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    def client(self, read_only: bool = False) -> Any:
        return self.server.client(RO if read_only else RW)

    def new_bucket(self) -> str:
        bucket = f"t{uuid.uuid4().hex[:12]}"
        self.server.create_bucket(bucket)
        return bucket

    def connection_yaml(self, indent: str, *, read_only: bool = False, endpoint: str | None = None) -> str:
        """A sink's ``connection:`` block (credentials by file reference)."""
        who = "ro" if read_only else "rw"
        return (
            f"{indent}connection:\n"
            f'{indent}  endpoint_url: "{endpoint or self.endpoint}"\n'
            f"{indent}  path_style: true\n"
            f"{indent}  timeout_s: 5\n"
            f"{indent}  max_attempts: 2\n"
            f"{indent}  credentials:\n"
            f"{indent}    access_key_id: {{file: {self.secrets / (who + '.key')}}}\n"
            f"{indent}    secret_access_key: {{file: {self.secrets / (who + '.secret')}}}\n"
        )


def start_s3(base_port: int = TEST_BASE_PORT) -> Iterator[S3Env]:
    root = Path(tempfile.mkdtemp(prefix="ledgerflow-test-s3-"))
    secrets = root / "secrets"
    secrets.mkdir()
    for who, (key, secret) in (("rw", RW), ("ro", RO)):
        (secrets / f"{who}.key").write_text(key)
        (secrets / f"{who}.secret").write_text(secret)
    server = SeaweedServer(root / "store", base_port)
    try:
        server.start(timeout=120)
    except Exception as exc:  # fail, never skip: a missing store is a broken environment
        server.stop()
        log = server.log_path.read_text(errors="replace")[-2000:] if server.log_path.exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"no S3 store (SeaweedFS) for integration tests: {exc}\n{log}", pytrace=False)
    try:
        yield S3Env(server, secrets)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
