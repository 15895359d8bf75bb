"""Topics as code against the real broker, and the local broker's lifecycle."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from app.kafka.admin import Admin
from app.kafka.local_broker import LocalBroker, _pid_alive
from tests.conftest import KafkaEnv

pytestmark = pytest.mark.integration


def _cli(*args: str, bootstrap: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli.main", *args, "--bootstrap-server", bootstrap],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_apply_is_idempotent_detects_drift_and_refuses_shrink(
    kafka: KafkaEnv, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    journal, data = unique("journal"), unique("data")
    spec = tmp_path / "t.yaml"
    spec.write_text(
        f"topics:\n"
        f"  - {{name: {journal}, partitions: 1, configs: {{cleanup.policy: compact}}}}\n"
        f"  - {{name: {data}, partitions: 2, configs: {{retention.ms: 3600000}}}}\n"
    )
    first = _cli("topics", "apply", str(spec), bootstrap=kafka.bootstrap)
    assert first.returncode == 0, first.stderr
    assert f"+ topic {journal} (partitions=1, rf=1, cleanup.policy=compact)" in first.stdout
    second = _cli("topics", "apply", str(spec), bootstrap=kafka.bootstrap)
    assert second.returncode == 0 and second.stdout.strip() == "no changes"
    diff = _cli("topics", "diff", str(spec), bootstrap=kafka.bootstrap)
    assert diff.returncode == 0 and diff.stdout.strip() == "no changes"

    admin = Admin(kafka.bootstrap)
    assert admin.non_default_configs([journal])[journal]["cleanup.policy"] == "compact"
    admin.alter_config(data, "retention.ms", "1000")  # drift made by hand
    drift = _cli("topics", "diff", str(spec), bootstrap=kafka.bootstrap)
    assert drift.returncode == 2 and f"~ topic {data}: retention.ms 1000 -> 3600000" in drift.stdout
    assert _cli("topics", "apply", str(spec), bootstrap=kafka.bootstrap).returncode == 0
    assert admin.non_default_configs([data])[data]["retention.ms"] == "3600000"

    spec.write_text(f"topics:\n  - {{name: {data}, partitions: 1}}\n")
    refused = _cli("topics", "apply", str(spec), bootstrap=kafka.bootstrap)
    assert refused.returncode != 0 and "cannot shrink partitions from 2 to 1" in refused.stderr
    assert admin.describe_topics([data])[data] == (2, 1)


def test_bad_spec_names_file_line_field(kafka: KafkaEnv, tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("topics:\n  - name: x\n    partitions: many\n")
    proc = _cli("topics", "apply", str(spec), bootstrap=kafka.bootstrap)
    assert proc.returncode != 0
    assert f"{spec}:3:17: topics[0].partitions: Input should be a valid integer" in proc.stderr


def test_up_twice_is_a_noop_and_down_leaves_no_process(tmp_path: Path) -> None:
    port = int(os.environ.get("LEDGERFLOW_TEST_KAFKA_PORT2", "19192"))
    env = {**os.environ, "LEDGERFLOW_KAFKA_DATA": str(tmp_path / "k"), "LEDGERFLOW_KAFKA_PORT": str(port)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app.cli.main", "kafka", *args],
            capture_output=True,
            text=True,
            timeout=180,
            env=env,
            check=False,
        )

    try:
        up = cli("up")
        assert up.returncode == 0 and "started Apache Kafka" in up.stdout, up.stderr
        state = LocalBroker(tmp_path / "k", port=port).state()
        assert state is not None and _pid_alive(state.pid)
        again = cli("up")
        assert again.returncode == 0 and again.stdout.startswith("already up"), again.stdout
        assert cli("status").returncode == 0
        # from another directory, a running ledgerflow broker that answers is reused
        other = subprocess.run(
            [sys.executable, "-m", "app.cli.main", "kafka", "up"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**env, "LEDGERFLOW_KAFKA_DATA": str(tmp_path / "other")},
            check=False,
        )
        assert other.returncode == 0 and other.stdout.startswith("already up"), other.stdout + other.stderr
        assert str(tmp_path / "k") in other.stdout  # says which broker it reuses
        assert not (tmp_path / "other" / "broker.json").exists()  # and starts none of its own
        # a port held by something else is a clear error naming it, not a hang
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            taken = holder.getsockname()[1]
            busy = subprocess.run(
                [sys.executable, "-m", "app.cli.main", "kafka", "up"],
                capture_output=True,
                text=True,
                timeout=60,
                env={**env, "LEDGERFLOW_KAFKA_DATA": str(tmp_path / "busy"), "LEDGERFLOW_KAFKA_PORT": str(taken)},
                check=False,
            )
        assert busy.returncode != 0 and f"port {taken} on 127.0.0.1 is already taken" in busy.stderr, busy.stderr
    finally:
        down = cli("down")
    assert down.returncode == 0 and down.stdout.strip() == "stopped"
    assert not _pid_alive(state.pid)
    assert cli("status").returncode == 1


def test_run_refuses_a_pipeline_whose_topics_do_not_exist(kafka: KafkaEnv, tmp_path: Path) -> None:
    import uuid

    name = f"missing-{uuid.uuid4().hex[:6]}"
    (tmp_path / "topics.yaml").write_text(f"topics:\n  - name: {name}.in\n    partitions: 1\n")
    spec = tmp_path / "p.yaml"
    spec.write_text(
        f"""pipeline: {name}
topics: [topics.yaml]
kafka: {{bootstrap_servers: "{kafka.bootstrap}"}}
transforms:
  - name: shape
    input: {name}.in
    output: {name}.nowhere
"""
    )
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli.main", "run", str(spec), "--exit-when-done"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode != 0
    assert f"{name}.nowhere (used by transform shape (output))" in proc.stderr, proc.stderr[-2000:]
    assert Admin(kafka.bootstrap).describe_topics([f"{name}.nowhere"]) == {}
