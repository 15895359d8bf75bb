"""Stream-table lookup joins on the real broker: each row carries the table version in
force at its event time (recomputed independently from the table's versions), bad
rows and bad table records reach the DLQ with their reason, global tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import KafkaEnv
from tests.harness import read_dlq, run, uid
from tests.join_harness import BAD_TABLE_RECORDS, assert_joined, create_table_topic, produce_table, write_join
from tests.stateful_harness import sink_rows

pytestmark = pytest.mark.integration


def test_left_join_takes_the_version_in_force_at_each_rows_event_time(kafka: KafkaEnv, tmp_path: Path) -> None:
    jp = write_join(tmp_path, f"join-{uid()}", kafka)
    produce_table(kafka, jp.table, 3)  # the table is there before the rows that refer to it
    proc = run(jp.spec, "--worker-id", "w1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    no_key = assert_joined(kafka, jp, "left").no_key
    tiers = {r["customer_tier"] for r in sink_rows(jp.out)}
    assert tiers == {"bronze", "gold", None}, "the input exercises not every kind of version"
    dlq = read_dlq(kafka, f"{jp.name}.dlq")
    reasons = [d["error_class"] for d in dlq]
    assert reasons.count("no_key") == no_key > 0  # stream rows without the join key
    table_refusals = [d for d in dlq if d["origin"]["topic"] == jp.table]
    assert {r: [d["error_class"] for d in table_refusals].count(r) for r in BAD_TABLE_RECORDS} == BAD_TABLE_RECORDS
    listed = [d for d in table_refusals if d["error_class"] == "json_not_object"]
    assert "JSON value is a list, not an object" in str(listed[0]["error_message"])
    assert listed[0]["original_value"] == b"[1, 2]", listed[0]


def test_global_table_joins_rows_of_every_partition(kafka: KafkaEnv, tmp_path: Path) -> None:
    """An inner join on a 1-partition table, with 30 s of history: rows older than
    that behind the table's time are refused, never joined against purged versions."""
    retention = 30_000
    jp = write_join(
        tmp_path, f"join-global-{uid()}", kafka, join_type="inner", global_table=True, retention_ms=retention
    )
    produce_table(kafka, jp.table, 1)
    proc = run(jp.spec, "--worker-id", "w1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    expired = assert_joined(kafka, jp, "inner", retention).expired
    dlq = [d for d in read_dlq(kafka, f"{jp.name}.dlq") if d["error_class"] == "join_history_expired"]
    assert len(dlq) == expired > 0
    assert f"is older than the history table {jp.table} keeps" in str(dlq[0]["error_message"])
    stores = sorted(p.name for p in (jp.state_dir / jp.name / "w1" / "table.agg").iterdir())
    assert stores == ["global"], stores


def test_a_table_that_is_not_co_partitioned_is_refused(kafka: KafkaEnv, tmp_path: Path) -> None:
    jp = write_join(tmp_path, f"join-copart-{uid()}", kafka)
    create_table_topic(kafka, jp.table, 1)
    proc = run(jp.spec, "--worker-id", "w1")
    assert proc.returncode != 0
    assert f"lookup_join table {jp.table} has 1 partitions but the input topic {jp.raw} has 3" in proc.stderr
