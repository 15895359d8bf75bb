"""The container's entrypoint and healthcheck, run here exactly as the Dockerfile
states them; and DLQ replay, exactly once across re-runs."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from app.kafka.admin import Admin
from app.kafka.clients import TxnProducer
from app.kafka.readers import read_topic_to_end
from tests.conftest import KafkaEnv
from tests.harness import REPO, read_dlq, uid, wait_for_rows, write_pipeline

pytestmark = pytest.mark.integration


def _dockerfile() -> tuple[list[str], list[str], list[str]]:
    text = (REPO / "deploy/Dockerfile").read_text().replace("\\\n", " ")
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))  # type: ignore[union-attr]
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))  # type: ignore[union-attr]
    health = json.loads(re.search(r"HEALTHCHECK .*? CMD (\[.*\])", text).group(1))  # type: ignore[union-attr]
    return entry, cmd, health


def test_container_entrypoint_runs_and_stops_cleanly(kafka: KafkaEnv, tmp_path: Path) -> None:
    entry, cmd, health = _dockerfile()
    pf = write_pipeline(tmp_path, f"entry-{uid()}", kafka, rows=3000)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "LEDGERFLOW_LOG_FORMAT": "json",
        "LEDGERFLOW_METRICS_PORT": str(port),
        "LEDGERFLOW_STAGE": "all",
        "LEDGERFLOW_WORKER_ID": "pod-0",
        "PYTHONPATH": str(REPO),
    }
    argv = [str(pf.spec) if a == "/etc/ledgerflow/pipeline.yaml" else a for a in entry] + cmd
    assert argv[:2] == ["ledgerflow", "run"]
    proc = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "log", "wb"))  # noqa: SIM115
    try:
        wait_for_rows(pf.out, 3000, proc=proc)
        probe = subprocess.run(
            [sys.executable if health[0] == "python" else health[0], *health[1:]], env=env, check=False
        )
        assert probe.returncode == 0
    finally:
        proc.send_signal(signal.SIGTERM)  # what the container runtime sends to PID 1
        code = proc.wait(60)
    assert code == 0, (tmp_path / "log").read_text()[-2000:]


def test_dlq_replay_is_exactly_once(kafka: KafkaEnv, tmp_path: Path) -> None:
    name = f"replay-{uid()}"
    src, target = f"{name}.in", f"{name}.fixed"
    admin = Admin(kafka.bootstrap)
    admin.create_topic(src, 1, 1, {})
    admin.create_topic(target, 1, 1, {})
    p = TxnProducer(kafka.bootstrap, f"{name}-app")
    p.init()
    p.begin()
    for i in range(1, 301):
        p.produce(src, orjson.dumps({"i": i}), str(i).encode())
    p.commit()
    spec = tmp_path / "p.yaml"
    spec.write_text(
        f"""pipeline: {name}
kafka: {{bootstrap_servers: "{kafka.bootstrap}"}}
transforms:
  - name: t
    input: {src}
    input_format: json
    output: {name}.out
    steps:
      - map: "tests.fns:fail_every_97th"
"""
    )
    admin.create_topic(f"{name}.out", 1, 1, {})
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app.cli.main", *args],
            capture_output=True,
            text=True,
            timeout=180,
            env=env,
            check=False,
        )

    assert cli("run", str(spec), "--exit-when-done", "--worker-id", "w1").returncode == 0
    assert len(read_dlq(kafka, f"{name}.dlq")) == 3
    shown = cli("dlq", "show", str(spec), "--reason", "transform_error")
    assert shown.returncode == 0 and shown.stdout.count("is unlucky") == 3
    dry = cli("dlq", "replay", str(spec), "--to", target, "--dry-run")
    assert "would replay 3 record(s)" in dry.stdout
    assert read_topic_to_end(kafka.bootstrap, target) == []
    other = cli("dlq", "replay", str(spec), "--reason", "decode_error", "--to", target)
    assert other.returncode == 0 and "replayed 0 record(s), skipped 3" in other.stdout, other.stdout
    for expected in (3, 0):  # the second replay finds its group past every DLQ record
        proc = cli("dlq", "replay", str(spec), "--to", target)
        assert proc.returncode == 0, proc.stderr[-2000:]
        # records the decode_error selection passed over were still there for this one
        assert f"replayed {expected} record(s)" in proc.stdout, proc.stdout
    values = sorted(orjson.loads(r.value)["i"] for r in read_topic_to_end(kafka.bootstrap, target) if r.value)
    assert values == [97, 194, 291]
