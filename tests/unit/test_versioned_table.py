"""The versioned table store on a real RocksDB (rocksdict) database, and the table
record decoder. The Kafka side (the table topic as changelog, the join in the batch
transaction) is covered by tests/integration/test_joins.py and tests/crash/test_join_crash.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.kafka.clients import InRecord
from app.state.table import HistoryExpired, VersionedTable
from app.state.table_feed import TableRecordRefused, decode_version


@pytest.fixture
def table(tmp_path: Path) -> VersionedTable:
    return VersionedTable(tmp_path / "t", "customers", [0], retention_ms=100)


def test_a_lookup_answers_with_the_version_in_force_at_its_time(table: VersionedTable) -> None:
    table.apply(0, [(b"a", 10, b"v10"), (b"a", 20, b"v20"), (b"ab", 5, b"other")], [], 3)
    table.apply(0, [(b"a", 30, None)], [], 4)  # a tombstone: absent from 30 on
    assert [table.lookup(b"a", t) for t in (9, 10, 19, 20, 29, 30, 40)] == [
        None,
        b"v10",
        b"v10",
        b"v20",
        b"v20",
        None,
        None,
    ]
    assert table.lookup(b"ab", 9) == b"other" and table.lookup(b"b", 50) is None
    assert table.offsets == {0: 4} and table.time == 30


def test_a_version_arriving_late_changes_only_lookups_at_or_after_its_time(table: VersionedTable) -> None:
    table.apply(0, [(b"a", 10, b"v10"), (b"a", 30, b"v30")], [], 2)
    table.apply(0, [(b"a", 20, b"v20")], [], 3)
    assert [table.lookup(b"a", t) for t in (15, 25, 35)] == [b"v10", b"v20", b"v30"]


def test_history_behind_the_retention_is_purged_and_refused(tmp_path: Path) -> None:
    table = VersionedTable(tmp_path / "t", "customers", [0], retention_ms=100)
    table.apply(0, [(b"a", 0, b"v0"), (b"a", 50, b"v50"), (b"b", 10, b"b10")], [], 3)
    table.apply(0, [(b"a", 200, b"v200")], [], 4)  # table time 200: cutoff 100, a purge is due
    assert table.lookup(b"a", 100) == b"v50", "the last version before the cutoff is still in force"
    assert table.lookup(b"b", 150) == b"b10"
    with pytest.raises(HistoryExpired, match="event time 99 is older than the history table customers keeps"):
        table.lookup(b"a", 99)
    table.close()
    again = VersionedTable(tmp_path / "t", "customers", [0], retention_ms=100)
    kept = [k for k, _ in again._items(b"v|a\x00")]
    assert len(kept) == 2, "v0 was not purged (v50 replaced it before the cutoff)"
    assert again.time == 200 and again.offsets == {0: 4}


def test_refused_records_wait_in_the_store_until_their_dlq_commit(table: VersionedTable) -> None:
    table.apply(0, [], [(7, b"reason\x00record")], 8)
    entries = table.dead_letters()
    assert [v for _k, v in entries] == [b"reason\x00record"]
    table.forget_dead_letters([k for k, _v in entries])
    assert table.dead_letters() == [] and table.offsets == {0: 8}


def rec(key: bytes | None, value: bytes | None, ts: int | None = 5) -> InRecord:
    return InRecord("customers", 1, 42, key, value, None, ts)


@pytest.mark.parametrize(
    ("record", "time_field", "reason", "message"),
    [
        (rec(None, b"{}"), None, "no_key", "table customers/1@42: table record has no key"),
        (rec(b"k", b"{nope"), None, "json_decode", "table customers/1@42: invalid JSON"),
        (rec(b"k", b"[1]"), None, "json_not_object", "JSON value is a list, not an object"),
        (rec(b"k", b'{"t": "x"}'), "t", "no_event_time", "no integer version time in field 't' (got 'x')"),
        (rec(b"k", None, None), None, "no_event_time", "tombstone without a timestamp"),
    ],
)
def test_table_records_that_cannot_be_versions_are_refused_with_a_reason(
    record: InRecord, time_field: str | None, reason: str, message: str
) -> None:
    with pytest.raises(TableRecordRefused, match=re.escape(message)) as exc:
        decode_version(record, time_field)
    assert exc.value.reason == reason


def test_a_table_record_becomes_a_version_at_its_time() -> None:
    assert decode_version(rec(b"k", b'{"t": 9, "x": 1}'), "t") == (b"k", 9, b'{"t":9,"x":1}')
    assert decode_version(rec(b"k", b'{"x": 1}'), None) == (b"k", 5, b'{"x":1}')
    assert decode_version(rec(b"k", None), None) == (b"k", 5, None)
