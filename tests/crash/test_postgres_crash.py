"""Crash matrix of the PostgreSQL sink, and a zombie whose compare-and-set fails."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from app.faults import CRASH_EXIT_CODE
from tests.conftest import KafkaEnv
from tests.harness import assert_pg_exactly_once, fenced_count, free_port, popen, run, uid, wait_log, write_pg_pipeline

pytestmark = [pytest.mark.integration, pytest.mark.crash]

ROWS = 10_000
POINTS = [
    "sink.db_before_commit",
    "sink.db_after_commit_before_kafka",
    "sink.db_mid_batch",
    "sink.before_commit",
]


@pytest.mark.parametrize("hit", [1, pytest.param(3, marks=pytest.mark.slow)])  # both hits: -m slow
@pytest.mark.parametrize("point", POINTS)
def test_pg_crash_point(kafka: KafkaEnv, postgres: Any, tmp_path: Path, point: str, hit: int) -> None:
    name = f"pgc-{point.split('.')[1].replace('_', '-')}-{hit}-{uid()}"
    pf = write_pg_pipeline(tmp_path, name, kafka, postgres.dsn, rows=ROWS, part_rows=500)
    crashed = run(pf.spec, "--worker-id", "w1", crash_at=f"{point}:{hit}")
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr[-3000:]
    finished = run(pf.spec, "--worker-id", "w1")
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert_pg_exactly_once(kafka, pf, postgres.dsn, {f"gen:{i}" for i in range(ROWS)})


@pytest.mark.serial
def test_pg_zombie_cas_fails(kafka: KafkaEnv, postgres: Any, tmp_path: Path) -> None:
    """A sink worker stops itself just before its 3rd part's DB transaction and stays
    stopped past the session timeout; another worker takes its partitions and advances
    them in the database. Resumed, the zombie's compare-and-set is refused: it writes
    nothing, the refusal is counted, and every row is in the table exactly once."""
    rows = 30_000
    pf = write_pg_pipeline(tmp_path, f"pgz-{uid()}", kafka, postgres.dsn, rows=rows, rate=2500, partitions=4)
    logs = {n: tmp_path / f"{n}.log" for n in ("src", "tr", "s1", "s2")}
    metrics = free_port()
    procs = [
        popen(pf.spec, "--stage", "source", "--worker-id", "src", log=logs["src"]),
        popen(pf.spec, "--stage", "transform", "--worker-id", "t1", log=logs["tr"]),
        popen(
            pf.spec,
            "--stage",
            "sink",
            "--worker-id",
            "s1",
            "--metrics-port",
            str(metrics),
            log=logs["s1"],
            env_extra={"LEDGERFLOW_PAUSE_AT": "sink.after_prepare:3"},
        ),
        popen(pf.spec, "--stage", "sink", "--worker-id", "s2", log=logs["s2"]),
    ]
    s1 = procs[2]
    fenced = 0.0
    try:
        wait_log(logs["s1"], "pause point sink.after_prepare hit #3", s1, timeout=120)
        time.sleep(12)  # past session.timeout.ms: the other worker owns and advances every partition
        s1.send_signal(signal.SIGCONT)
        wait_log(logs["s1"], "another owner advanced it", s1, timeout=60)
        fenced = fenced_count(metrics, "db")
        import psycopg

        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            with psycopg.connect(postgres.dsn) as c:
                row = c.execute(f"SELECT count(*) FROM {pf.out}").fetchone()
            if row and row[0] >= rows:
                break
            time.sleep(0.5)
        time.sleep(3)
    finally:
        for p in procs:
            p.send_signal(signal.SIGCONT)
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(60)
    assert fenced >= 1, "the refused compare-and-set was not counted"
    assert_pg_exactly_once(kafka, pf, postgres.dsn, {f"gen:{i}" for i in range(rows)})
