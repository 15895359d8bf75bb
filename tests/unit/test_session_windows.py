"""Session windows on a real RocksDB (rocksdict) store: gaps, merges, lateness.

The broker side is covered by tests/integration/test_session_windows.py and
tests/crash/test_session_crash.py; these pin the operator's semantics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app.config.pipeline import WindowSpec
from app.state.store import PartitionStore
from app.tokens import Token
from app.transforms.sessions import SessionAggregate
from app.transforms.stateful import LateRow
from tests.unit.test_stateful_ops import run_rows, tok


@pytest.fixture
def store(tmp_path: Path) -> PartitionStore:
    return PartitionStore(tmp_path / "p0", "x.state.s.changelog", 0)


def sessions(gap: int = 10, lateness: int = 0, late_topic: str | None = None) -> SessionAggregate:
    return SessionAggregate(
        "ses",
        key_field=None,
        value_field="amount",
        functions=["count", "sum", "min", "max"],
        gap_ms=gap,
        lateness_ms=lateness,
        time_field=None,
        late_topic=late_topic,
    )


def results(out: list[Token]) -> dict[str, tuple[Any, ...]]:
    return {
        t["token_id"]: (
            t["payload"]["window_start"],
            t["payload"]["window_end"],
            t["payload"]["count"],
            t["payload"]["sum"],
        )
        for t in out
    }


def test_a_gap_of_inactivity_ends_a_session_and_it_is_emitted_once(store: PartitionStore) -> None:
    op = sessions()
    op.open(0, store)
    out = run_rows(op, store, [tok(1, "a", 0), tok(2, "a", 10), tok(3, "b", 12), tok(4, "a", 21), tok(5, "a", 40)])
    # a: [0,10] then 21 is 11 after 10 (gap 10): a new session; [0,10] closes at watermark 21
    # b: [12,12] closes at 23; a's [21,21] closes at 32; [40,40] stays open
    assert results(out) == {"ses:a:0": (0, 10, 2, 3), "ses:b:12": (12, 12, 1, 3), "ses:a:21": (21, 21, 1, 4)}
    assert [k for k, _ in store.scan(b"s|")] == [b"s|a|40"]


def test_rows_inside_a_session_leave_it_one_result(store: PartitionStore) -> None:
    op = sessions(lateness=10)
    op.open(0, store)
    out = run_rows(op, store, [tok(1, "a", 0), tok(2, "a", 8), tok(3, "a", 4), tok(4, "a", 8), tok(5, "a", 40)])
    assert results(out) == {"ses:a:0": (0, 8, 4, 10)}


def test_a_late_row_bridging_two_sessions_merges_them(store: PartitionStore) -> None:
    op = sessions(gap=10, lateness=20)
    op.open(0, store)
    out = run_rows(op, store, [tok(1, "a", 0), tok(2, "a", 18), tok(3, "a", 9)])
    assert out == []  # [0,0] and [18,18] are both open; 9 is within 10 of each: one session [0,18]
    assert [k for k, _ in store.scan(b"s|")] == [b"s|a|0"]
    out = run_rows(op, store, [tok(4, "a", 49)])  # closes at 18 + 10 + 20 + 1 = 49
    assert results(out) == {"ses:a:0": (0, 18, 3, 6)}
    assert out[0]["payload"]["min"] == 1 and out[0]["payload"]["max"] == 3


def test_a_row_behind_the_lateness_is_refused_or_routed_and_never_counted(store: PartitionStore) -> None:
    op = sessions(gap=10, lateness=5)
    op.open(0, store)
    run_rows(op, store, [tok(1, "a", 0), tok(2, "a", 30)])
    store.begin_row()
    with pytest.raises(LateRow, match="event time 24 is behind the watermark 30"):
        op.process(0, store, tok(3, "a", 24))
    store.end_row(False)
    routed = sessions(gap=10, lateness=5, late_topic="late")
    routed.open(0, store)
    assert routed.process(0, store, tok(4, "a", 24))[0][0] == "late"
    assert routed.process(0, store, tok(5, "a", 25)) == []  # exactly at the lateness: accepted


def test_open_sessions_survive_a_reopen_and_close_from_the_store(store: PartitionStore) -> None:
    op = sessions()
    op.open(0, store)
    run_rows(op, store, [tok(1, "a", 0), tok(2, "b", 5)])
    op.close(0)
    again = sessions()
    again.open(0, store)
    out = run_rows(again, store, [tok(3, "a", 30)])
    assert results(out) == {"ses:a:0": (0, 0, 1, 1), "ses:b:5": (5, 5, 1, 2)}


def test_a_failed_row_leaves_the_index_as_the_store(store: PartitionStore) -> None:
    op = sessions(gap=10, lateness=20)
    op.open(0, store)
    run_rows(op, store, [tok(1, "a", 0), tok(2, "a", 18)])
    store.begin_row()
    op.process(0, store, tok(3, "a", 9))  # merges [0,0] and [18,18] in the row overlay
    store.end_row(False)  # ... and the row is dropped: both sessions must come back
    op.row_failed(0, store)
    out = run_rows(op, store, [tok(4, "a", 60)])
    assert results(out) == {"ses:a:0": (0, 0, 1, 1), "ses:a:18": (18, 18, 1, 2)}


@pytest.mark.parametrize(
    ("window", "error"),
    [
        ({"type": "session"}, "a session window needs gap_ms and takes no size_ms or advance_ms"),
        ({"type": "session", "gap_ms": 5, "size_ms": 10}, "a session window needs gap_ms and takes no size_ms"),
        ({"type": "tumbling", "gap_ms": 5}, "a tumbling window needs size_ms and takes no gap_ms"),
    ],
)
def test_the_spec_refuses_a_session_window_with_the_wrong_fields(window: dict[str, Any], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        WindowSpec(**window)
