"""Crash matrix of the Iceberg sink, and a zombie whose table commit is refused."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from app.faults import CRASH_EXIT_CODE
from tests.conftest import KafkaEnv
from tests.harness import fenced_count, free_port, popen, run, stop, uid, wait_log
from tests.iceberg_harness import SINK, assert_iceberg_exactly_once, catalog_uri, read_table, write_iceberg_pipeline

pytestmark = [pytest.mark.integration, pytest.mark.crash]

ROWS = 10_000
POINTS = [
    "iceberg.before_table_commit",
    "iceberg.after_table_commit_before_kafka",
    "sink.before_commit",
    "sink.after_commit",
]


@pytest.mark.parametrize("hit", [1, pytest.param(3, marks=pytest.mark.slow)])  # both hits: -m slow
@pytest.mark.parametrize("point", POINTS)
def test_iceberg_crash_point(kafka: KafkaEnv, postgres: Any, tmp_path: Path, point: str, hit: int) -> None:
    """Killed at ``point`` (its ``hit``-th time), rerun: exactly the input rows in the table."""
    name = f"icc-{point.split('.')[1].replace('_', '-')}-{hit}-{uid()}"
    p = write_iceberg_pipeline(tmp_path, name, kafka, catalog_uri(postgres), rows=ROWS, part_rows=500)
    crashed = run(p.spec, "--worker-id", "w1", crash_at=f"{point}:{hit}")
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr[-3000:]
    finished = run(p.spec, "--worker-id", "w1")
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert_iceberg_exactly_once(kafka, p, {f"gen:{i}" for i in range(ROWS)})
    if point in ("iceberg.after_table_commit_before_kafka", "sink.before_commit"):
        assert "reconciled" in finished.stderr, "Kafka lagged the table: recovery must reconcile"


def test_iceberg_zombie_commit_refused(kafka: KafkaEnv, postgres: Any, tmp_path: Path) -> None:
    """A sink worker stops itself after preparing its 3rd batch and stays stopped past the
    session timeout; another worker takes its partitions and advances them in the table.
    Resumed, the zombie's table commit is refused (the catalog's optimistic concurrency,
    then the offsets compare-and-set): it writes nothing, the refusal is counted, and
    every row is in the table exactly once."""
    rows = 30_000
    p = write_iceberg_pipeline(
        tmp_path, f"icz-{uid()}", kafka, catalog_uri(postgres), rows=rows, rate=2500, partitions=4
    )
    logs = {n: tmp_path / f"{n}.log" for n in ("src", "tr", "s1", "s2")}
    metrics = free_port()
    s1 = popen(
        p.spec,
        "--stage",
        "sink",
        "--worker-id",
        "s1",
        "--metrics-port",
        str(metrics),
        log=logs["s1"],
        env_extra={"LEDGERFLOW_PAUSE_AT": "sink.after_prepare:3"},
    )
    procs = [s1]
    fenced = 0.0
    try:
        # s1 owns partitions before any row flows (a late start could find the input done)
        wait_log(logs["s1"], "sink lake: recovered [(", s1, timeout=120)
        procs += [
            popen(p.spec, "--stage", "source", "--worker-id", "src", log=logs["src"]),
            popen(p.spec, "--stage", "transform", "--worker-id", "t1", log=logs["tr"]),
            popen(p.spec, "--stage", "sink", "--worker-id", "s2", log=logs["s2"]),
        ]
        wait_log(logs["s1"], "pause point sink.after_prepare hit #3", s1, timeout=120)
        time.sleep(12)  # past session.timeout.ms: the other worker owns and advances every partition
        s1.send_signal(signal.SIGCONT)
        wait_log(logs["s1"], "another owner advanced it", s1, timeout=60)
        fenced = fenced_count(metrics, SINK)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if len(read_table(p)["token_ids"]) >= rows:
                break
            time.sleep(1)
        time.sleep(3)
    finally:
        stop(*procs)
    assert fenced >= 1, "the refused table commit was not counted"
    assert_iceberg_exactly_once(kafka, p, {f"gen:{i}" for i in range(rows)})
