"""A topic written by another application (plain JSON) as sink input, and the
operator views over the result (`journal tail`, `inspect`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from app.kafka.admin import Admin
from app.kafka.clients import TxnProducer
from tests.conftest import KafkaEnv
from tests.harness import REPO, sink_lines, uid

pytestmark = pytest.mark.integration


def test_external_json_topic_lands_exactly_once(kafka: KafkaEnv, tmp_path: Path) -> None:
    name = f"ext-{uid()}"
    topic = f"{name}.events"
    Admin(kafka.bootstrap).create_topic(topic, 2, 1, {})
    producer = TxnProducer(kafka.bootstrap, f"{name}-app")
    producer.init()
    producer.begin()
    for i in range(500):
        producer.produce(topic, orjson.dumps({"n": i}), str(i % 7).encode())
    producer.produce(topic, b"<xml>not json</xml>", b"x")
    producer.commit()
    spec = tmp_path / "p.yaml"
    spec.write_text(
        f"""pipeline: {name}
kafka: {{bootstrap_servers: "{kafka.bootstrap}"}}
sinks:
  - name: files
    type: file
    input: {topic}
    input_format: json
    path: out
    format: ndjson
"""
    )

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app.cli.main", *args],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=REPO,
            check=False,
        )

    for _ in range(2):  # a second run finds everything committed and adds nothing
        proc = cli("run", str(spec), "--exit-when-done", "--worker-id", "w1")
        assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [orjson.loads(x) for x in sink_lines(tmp_path / "out")]
    assert sorted(r["n"] for r in rows) == list(range(500))
    assert len({r["_token_id"] for r in rows}) == 500
    assert all(r["_token_id"].startswith(f"{topic}/") for r in rows)

    tail = cli("journal", "tail", str(spec), "--compacted")
    events = [json.loads(line) for line in tail.stdout.splitlines()]
    finalized = [e for e in events if e["kind"] == "part_finalized"]
    assert sum(e["part"]["rows"] for e in finalized) == 500
    assert all(e["pipeline"] == name and e["worker_id"] == "w1" for e in events)

    view = cli("inspect", str(spec))
    assert view.returncode == 0, view.stderr
    assert "total lag 0" in view.stdout
    assert "committed-not-finalized 0" in view.stdout


def test_rerun_over_fully_committed_plain_input_exits(kafka: KafkaEnv, tmp_path: Path) -> None:
    """Input from a non-transactional producer has no commit marker after its last
    record: a rerun whose partitions are all committed fetches nothing, so the consumer
    has no position. `--exit-when-done` must still see it drained (from the committed
    offset) and exit, adding nothing."""
    from confluent_kafka import Producer

    name = f"extplain-{uid()}"
    topic = f"{name}.events"
    Admin(kafka.bootstrap).create_topic(topic, 2, 1, {})
    plain = Producer({"bootstrap.servers": kafka.bootstrap})
    for i in range(200):
        plain.produce(topic, orjson.dumps({"n": i}), str(i % 5).encode())
    assert plain.flush(30) == 0
    spec = tmp_path / "p.yaml"
    spec.write_text(
        f"""pipeline: {name}
kafka: {{bootstrap_servers: "{kafka.bootstrap}"}}
sinks:
  - {{name: files, type: file, input: {topic}, input_format: json, path: out, format: ndjson}}
"""
    )
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, "-m", "app.cli.main", "run", str(spec), "--exit-when-done", "--worker-id", "w1"],
            capture_output=True,
            text=True,
            timeout=90,
            cwd=REPO,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [orjson.loads(x) for x in sink_lines(tmp_path / "out")]
    assert sorted(r["n"] for r in rows) == list(range(200))
