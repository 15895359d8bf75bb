"""The Iceberg sink end to end: a pipeline into a table on the PostgreSQL catalog, read
back by a second process; schema evolution; compaction under the offsets contract."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import KafkaEnv
from tests.harness import LEDGERFLOW, popen, read_dlq, run, stop, uid, wait_log
from tests.iceberg_harness import (
    assert_iceberg_exactly_once,
    catalog_uri,
    read_table,
    write_iceberg_pipeline,
)

pytestmark = pytest.mark.integration

ROWS = 10_000


def test_pipeline_into_iceberg_exactly_once(kafka: KafkaEnv, postgres: Any, tmp_path: Path) -> None:
    """Every row once in the table; offsets in the snapshot == group offsets == the end;
    pyiceberg's own commit retry is off on the table the sink created."""
    p = write_iceberg_pipeline(tmp_path, f"ice-{uid()}", kafka, catalog_uri(postgres), rows=ROWS)
    proc = run(p.spec, "--worker-id", "w1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = assert_iceberg_exactly_once(kafka, p, {f"gen:{i}" for i in range(ROWS)})
    assert got["columns"][:3] == ["_token_id", "_key", "_event_time_ms"]
    assert set(got["columns"][3:]) == {"id", "customer", "country", "amount", "quantity"}
    assert got["retries"] == "0"
    # a second run over the same input writes nothing new
    again = run(p.spec, "--worker-id", "w1")
    assert again.returncode == 0, again.stderr[-3000:]
    assert read_table(p)["snapshots"] == got["snapshots"]


def test_schema_evolution_and_unwritable_rows(kafka: KafkaEnv, postgres: Any, tmp_path: Path) -> None:
    """A field that appears mid-stream becomes a nullable column; a row whose value
    conflicts with its column's type goes to the DLQ (unwritable_row, naming the field
    and both types) and every other row lands once."""
    p = write_iceberg_pipeline(
        tmp_path,
        f"ice-evo-{uid()}",
        kafka,
        catalog_uri(postgres),
        rows=ROWS,
        steps='      - map: "tests.iceberg_harness:evolve"\n',
    )
    proc = run(p.spec, "--worker-id", "w1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    bad = {i for i in range(1000, ROWS) if i % 1000 == 333}
    got = assert_iceberg_exactly_once(kafka, p, {f"gen:{i}" for i in range(ROWS) if i not in bad})
    assert "coupon" in got["columns"]
    import json

    rows = [json.loads(r) for r in got["rows"]]
    assert all((r["coupon"] is not None) == (r["id"] >= 5000) for r in rows)
    dlq = read_dlq(kafka, f"{p.name}.dlq")
    assert len(dlq) == len(bad), [d["error_message"] for d in dlq][:3]
    assert {d["error_class"] for d in dlq} == {"unwritable_row"}
    msg = str(dlq[0]["error_message"])
    assert "'amount'" in msg and "string" in msg and "int64" in msg, msg


def _compact(spec: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LEDGERFLOW, "iceberg", "compact", str(spec), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=spec.parent,
        check=False,
    )


def test_compaction_keeps_rows_and_offsets(kafka: KafkaEnv, postgres: Any, tmp_path: Path) -> None:
    """Compaction drops the file count, keeps the rows and the offsets map identical, and
    a later run over more input continues exactly once on top of it."""
    p = write_iceberg_pipeline(tmp_path, f"ice-cmp-{uid()}", kafka, catalog_uri(postgres), rows=ROWS, part_rows=500)
    proc = run(p.spec, "--worker-id", "w1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = read_table(p)
    assert before["files"] >= 10
    done = _compact(p.spec, "--sink", "lake", "--expire-older-than-hours", "0")
    assert done.returncode == 0, done.stderr[-3000:]
    after = read_table(p)
    assert after["files"] < before["files"] and after["files"] <= 3, (before["files"], after["files"])
    assert after["rows"] == before["rows"]
    assert after["offsets"] == before["offsets"]
    assert after["operation"] == "overwrite" and after["snapshots"] == 1
    # more input: the generator goes on to 15,000 rows, the sink appends on the compacted table
    more = ROWS + 5_000
    p.spec.write_text(p.spec.read_text().replace(f"rows: {ROWS}", f"rows: {more}"))
    p.rows = more
    proc = run(p.spec, "--worker-id", "w1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_iceberg_exactly_once(kafka, p, {f"gen:{i}" for i in range(more)})
    wrong = _compact(p.spec, "--sink", "nope")
    assert wrong.returncode != 0 and "no iceberg sink named 'nope'" in wrong.stderr, wrong.stderr


def test_compaction_while_the_sink_runs(kafka: KafkaEnv, postgres: Any, tmp_path: Path) -> None:
    """Compactions committed between the sink's commits: the sink's next commit is
    refused by the catalog, it re-reads the table, finds its offset unchanged and
    retries; every row lands exactly once and the offsets stay consistent."""
    rows = 12_000
    # 600 rows/s: the sink runs ~20 s, room for several compactions (each a CLI process
    # of a few seconds) even on a loaded machine; at 1,500 rows/s a CI run fit only one
    p = write_iceberg_pipeline(
        tmp_path, f"ice-cmpr-{uid()}", kafka, catalog_uri(postgres), rows=rows, rate=600, part_rows=300
    )
    log = tmp_path / "run.log"
    proc = popen(p.spec, "--worker-id", "w1", "--exit-when-done", log=log)
    compactions = 0
    try:
        wait_log(log, "table ns_", proc, timeout=60)
        while proc.poll() is None and compactions < 20:
            done = _compact(p.spec)
            assert done.returncode == 0, done.stderr[-3000:]
            compactions += " 0 rows rewritten" not in done.stdout
            time.sleep(0.3)
        assert proc.wait(180) == 0, log.read_text()[-3000:]
    finally:
        stop(proc)
    assert compactions >= 2, "no compaction met the running sink"
    assert "changed concurrently" in log.read_text(), "the sink never met a compaction commit"
    assert_iceberg_exactly_once(kafka, p, {f"gen:{i}" for i in range(rows)})


def test_unreachable_catalog_stops_with_message(kafka: KafkaEnv, tmp_path: Path) -> None:
    """A catalog database that does not answer stops the run with an error naming the
    sink and the table, and never the catalog password."""
    uri = "postgresql+psycopg://ledgerflow:s3cret-pw@127.0.0.1:9/ledgerflow"
    p = write_iceberg_pipeline(tmp_path, f"ice-down-{uid()}", kafka, uri, rows=100)
    proc = run(p.spec, "--worker-id", "w1", timeout=120)
    assert proc.returncode != 0
    assert "iceberg sink lake" in proc.stderr and p.table in proc.stderr, proc.stderr[-2000:]
    assert "s3cret-pw" not in proc.stderr + proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("rate", [50, 2000])
def test_files_per_hour_at_default_settings(kafka: KafkaEnv, postgres: Any, tmp_path: Path, rate: int) -> None:
    """Data files the sink adds per hour with the default part settings (max_age 5 s,
    max_rows 50,000) and 100 ms commits, 3 input partitions, ``rate`` rows/s for 60 s
    (docs/sinks/iceberg.md quotes the printed numbers)."""
    seconds = 60
    p = write_iceberg_pipeline(
        tmp_path,
        f"ice-fph-{rate}-{uid()}",
        kafka,
        catalog_uri(postgres),
        rows=rate * seconds,
        rate=rate,
        part_rows=50_000,
        max_age_ms=5_000,
    )
    started = time.monotonic()
    proc = run(p.spec, "--worker-id", "w1")
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = assert_iceberg_exactly_once(kafka, p, {f"gen:{i}" for i in range(rate * seconds)})
    per_hour = got["files"] / elapsed * 3600
    print(f"\nrate {rate} rows/s: {got['files']} data files in {elapsed:.0f} s -> {per_hour:.0f} files/hour")
    assert per_hour <= 3 * 3600 / 0.1  # never more than one file per partition per commit interval
