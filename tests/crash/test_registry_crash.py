"""Crash matrix on the sink points for input written by a foreign producer
(confluent-kafka's AvroSerializer, schemas in a real Apicurio Registry): the process
dies at the point (exit 86), a rerun finishes, and every record is in the file sink /
the PostgreSQL table exactly once, by token id ``<topic>/<partition>/<offset>`` and
content. Hit 1 runs by default, hit 3 with ``-m slow``.

The foreign producer writes in one transaction (commit markers end each partition):
over input without markers, a rerun with ``--exit-when-done`` whose partitions were
all committed before the crash never sees itself drained (the consumer has no
position until it fetches a record), which is a runner matter outside these tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.faults import CRASH_EXIT_CODE
from tests.conftest import KafkaEnv
from tests.harness import (
    assert_pg_exactly_once,
    hanging_transactions,
    run,
    uid,
)
from tests.registry_env import RegistryEnv
from tests.registry_harness import (
    assert_sink_exactly_once,
    committed_ids,
    create_topics,
    order,
    pg_sink_spec,
    produce_avro,
    sink_spec,
)

pytestmark = [pytest.mark.integration, pytest.mark.crash]

ROWS = 3000
HITS = [1, pytest.param(3, marks=pytest.mark.slow)]


def _slug(point: str) -> str:
    return point.split(".")[1].replace("_", "-")


@pytest.mark.parametrize("hit", HITS)
@pytest.mark.parametrize("point", ["sink.after_prepare", "sink.after_commit_before_finalize"])
def test_file_sink_crash(kafka: KafkaEnv, registry: RegistryEnv, tmp_path: Path, point: str, hit: int) -> None:
    name = f"regc-{_slug(point)}-{hit}-{uid()}"
    src = f"{name}.orders"
    create_topics(kafka, tmp_path, name, [src], 3)
    produce_avro(kafka, registry, src, (order(i) for i in range(ROWS)), transactional=True)
    spec = sink_spec(tmp_path, name, kafka, registry, src, part_rows=300)
    crashed = run(spec, "--worker-id", "w1", crash_at=f"{point}:{hit}")
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr[-3000:]
    finished = run(spec, "--worker-id", "w1")
    assert finished.returncode == 0, finished.stderr[-3000:]
    rows = assert_sink_exactly_once(kafka, name, tmp_path / "out", src, committed_ids(kafka, src))
    assert len(rows) == ROWS
    assert all({k: r[k] for k in order(0)} == order(r["id"]) for r in rows)  # content as written
    assert hanging_transactions(kafka, f"ledgerflow.{name}.") == []


@pytest.mark.parametrize("hit", HITS)
@pytest.mark.parametrize("point", ["sink.after_prepare", "sink.db_after_commit_before_kafka"])
def test_postgres_sink_crash(
    kafka: KafkaEnv, registry: RegistryEnv, postgres: Any, tmp_path: Path, point: str, hit: int
) -> None:
    name = f"regpgc-{_slug(point)}-{hit}-{uid()}"
    src = f"{name}.orders"
    create_topics(kafka, tmp_path, name, [src], 3)
    produce_avro(kafka, registry, src, (order(i) for i in range(ROWS)), transactional=True)
    pf = pg_sink_spec(tmp_path, name, kafka, registry, src, postgres.dsn, rows=ROWS, part_rows=300)
    crashed = run(pf.spec, "--worker-id", "w1", crash_at=f"{point}:{hit}")
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr[-3000:]
    finished = run(pf.spec, "--worker-id", "w1")
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert_pg_exactly_once(kafka, pf, postgres.dsn, committed_ids(kafka, src))
    assert hanging_transactions(kafka, f"ledgerflow.{name}.") == []
