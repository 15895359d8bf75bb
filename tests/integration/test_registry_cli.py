"""`ledgerflow registry up|status|down` and `ledgerflow schemas check|push` on a real
Apicurio Registry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import REPO, uid
from tests.registry_env import TEST_PORT, RegistryEnv
from tests.registry_harness import ORDER_V1, ORDER_V2

pytestmark = pytest.mark.integration


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli.main", *args], capture_output=True, text=True, timeout=180, cwd=cwd, check=False
    )


def test_registry_up_status_down(tmp_path: Path) -> None:
    args = ["--data-dir", str(tmp_path / "reg"), "--port", str(TEST_PORT + 2)]
    up = _cli("registry", "up", *args, "--storage", "mem")
    assert up.returncode == 0, up.stderr[-2000:]
    try:
        assert f"http://127.0.0.1:{TEST_PORT + 2}/apis/ccompat/v7" in up.stdout
        again = _cli("registry", "up", *args, "--storage", "mem")
        assert again.returncode == 0 and "already running" in again.stdout
        status = _cli("registry", "status", *args)
        assert status.returncode == 0 and "answers" in status.stdout, status.stdout
    finally:
        down = _cli("registry", "down", *args)
    assert down.returncode == 0 and "stopped" in down.stdout
    assert _cli("registry", "status", *args).returncode == 1


def test_schemas_check_and_push(registry: RegistryEnv, tmp_path: Path) -> None:
    out = f"cli-{uid()}.out"
    (tmp_path / "out.avsc").write_text(json.dumps(ORDER_V1))
    spec = tmp_path / "p.yaml"
    spec.write_text(
        f"""pipeline: clitest
registry: {{url: "{registry.url}"}}
transforms:
  - name: shape
    input: in
    output: {out}
    output_format: avro_registry
    output_schema: out.avsc
"""
    )
    check = _cli("schemas", "check", str(spec))
    assert check.returncode == 0, check.stderr
    assert f"{out}-value: new" in check.stdout
    push = _cli("schemas", "push", str(spec))
    assert push.returncode == 0, push.stderr
    assert "ledgerflow.RowToken: id" in push.stdout and "ledgerflow.JournalEvent: id" in push.stdout
    check = _cli("schemas", "check", str(spec))
    assert f"{out}-value: registered (version 1" in check.stdout and check.returncode == 0
    (tmp_path / "out.avsc").write_text(json.dumps(ORDER_V2))  # a field with a default: fine
    check = _cli("schemas", "check", str(spec), "--no-own")
    assert check.returncode == 0 and f"{out}-value: compatible with version 1 (BACKWARD)" in check.stdout
    bad = {**ORDER_V1, "fields": [{"name": "id", "type": "string"}]}
    (tmp_path / "out.avsc").write_text(json.dumps(bad))
    check = _cli("schemas", "check", str(spec), "--no-own")
    assert check.returncode == 1 and f"{out}-value: INCOMPATIBLE with version 1 (BACKWARD)" in check.stdout
    push = _cli("schemas", "push", str(spec), "--no-own")
    assert push.returncode == 1 and "compatibility level BACKWARD" in push.stdout
