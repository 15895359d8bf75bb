"""Stateful operators and the local store, on a real RocksDB (rocksdict) store.

The Kafka side (changelog in the transaction, restore) is covered by
tests/crash/test_stateful.py on the real broker; these pin the operator semantics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.codecs.tokens import CodecError
from app.state.store import PartitionStore
from app.tokens import Token
from app.transforms.stateful import Aggregate, Dedupe, KeyValueState, LateRow, UserStateful


def tok(i: int, key: str, t: int | None = None, **payload: Any) -> Token:
    return {
        "token_id": f"s:{i}",
        "key": key,
        "payload": {"amount": i, **payload},
        "source_id": "s",
        "source_position": str(i),
        "event_time_ms": t,
        "lineage": [],
    }


def run_rows(op: Any, store: PartitionStore, tokens: list[Token]) -> list[Token]:
    """Feed rows as the state manager does (row overlay per row), commit at the end."""
    out: list[Token] = []
    for t in tokens:
        store.begin_row()
        try:
            out.extend(x for _d, x in op.process(0, store, t))
        except CodecError:
            store.end_row(False)
            continue
        store.end_row(True)
    op.end_batch(0, store)
    store.take_changes()
    store.apply_committed(store.offset + 1)
    return out


@pytest.fixture
def store(tmp_path: Path) -> PartitionStore:
    return PartitionStore(tmp_path / "p0", "x.state.s.changelog", 0)


def test_hopping_windows_emit_each_window_once_when_the_watermark_passes(store: PartitionStore) -> None:
    agg = Aggregate(
        "agg",
        key_field=None,
        value_field="amount",
        functions=["count", "sum"],
        size_ms=10,
        advance_ms=5,
        lateness_ms=0,
        time_field=None,
        late_topic=None,
    )
    agg.open(0, store)
    out = run_rows(agg, store, [tok(1, "a", 3), tok(2, "a", 7), tok(3, "a", 12), tok(4, "a", 30)])
    got = {t["token_id"]: (t["payload"]["count"], t["payload"]["sum"]) for t in out}
    # windows [-5,5) [0,10) [5,15) [10,20) closed by watermark 30; [25,35) and [30,40) stay open
    assert got == {"agg:a:-5": (1, 1), "agg:a:0": (2, 3), "agg:a:5": (2, 5), "agg:a:10": (1, 3)}
    assert sorted(k for k, _ in store.scan(b"w|")) == [b"w|%020d|a" % 25, b"w|%020d|a" % 30]


def test_late_rows_are_refused_or_routed_and_never_counted(store: PartitionStore) -> None:
    kw: dict[str, Any] = dict(key_field=None, value_field=None, functions=["count"], size_ms=10, advance_ms=None)
    agg = Aggregate("agg", **kw, lateness_ms=5, time_field=None, late_topic=None)
    agg.open(0, store)
    run_rows(agg, store, [tok(1, "a", 1), tok(2, "a", 40)])
    store.begin_row()
    with pytest.raises(LateRow):
        agg.process(0, store, tok(3, "a", 8))  # window [0,10) closed at watermark >= 15
    store.end_row(False)
    routed = Aggregate("agg", **kw, lateness_ms=5, time_field=None, late_topic="late")
    routed.open(0, store)
    assert routed.process(0, store, tok(3, "a", 8))[0][0] == "late"
    # within the allowed lateness (window [30,40) closes at watermark 45) the row still counts
    out = run_rows(agg, store, [tok(5, "a", 36), tok(6, "a", 60)])
    counts = {t["token_id"]: t["payload"]["count"] for t in out}
    assert counts == {"agg:a:30": 1, "agg:a:40": 1}


def test_window_index_and_watermark_survive_reopening(store: PartitionStore, tmp_path: Path) -> None:
    kw: dict[str, Any] = dict(key_field=None, value_field=None, functions=["count"], size_ms=10, advance_ms=None)
    agg = Aggregate("agg", **kw, lateness_ms=0, time_field=None, late_topic=None)
    agg.open(0, store)
    run_rows(agg, store, [tok(1, "a", 1), tok(2, "b", 2)])
    store.close()
    again = PartitionStore(tmp_path / "p0", "x.state.s.changelog", 0)
    agg2 = Aggregate("agg", **kw, lateness_ms=0, time_field=None, late_topic=None)
    agg2.open(0, again)
    out = run_rows(agg2, again, [tok(3, "a", 15)])
    assert sorted(t["token_id"] for t in out) == ["agg:a:0", "agg:b:0"]


def test_dedupe_with_ttl_forgets_keys_after_the_watermark_passes(store: PartitionStore) -> None:
    d = Dedupe(None, ttl_ms=100, time_field=None)
    d.open(0, store)
    out = run_rows(d, store, [tok(1, "a", 0), tok(2, "a", 50), tok(3, "b", 120), tok(4, "a", 130)])
    assert [t["token_id"] for t in out] == ["s:1", "s:3", "s:4"]


def test_dedupe_by_token_id_drops_only_resent_tokens(store: PartitionStore) -> None:
    d = Dedupe("_token_id", ttl_ms=None, time_field=None)
    d.open(0, store)
    again = tok(1, "a", 0)
    out = run_rows(d, store, [tok(1, "a", 0), tok(2, "a", 1), again, tok(3, "b", 2), tok(2, "a", 1)])
    assert [t["token_id"] for t in out] == ["s:1", "s:2", "s:3"]


def test_dedupe_purges_expired_keys_into_tombstones(store: PartitionStore) -> None:
    d = Dedupe(None, ttl_ms=100, time_field=None)
    d.open(0, store)
    run_rows(d, store, [tok(1, "a", 0), tok(2, "b", 10)])
    store.begin_row()
    d.process(0, store, tok(3, "c", 500))
    store.end_row(True)
    d.end_batch(0, store)
    changes = store.take_changes()
    assert changes[b"d|a"] is None and changes[b"d|b"] is None  # tombstones for the changelog
    assert changes[b"d|c"] == b"500"


def test_rows_without_key_or_number_are_refused_with_a_reason(store: PartitionStore) -> None:
    agg = Aggregate(
        "agg",
        key_field="customer",
        value_field="amount",
        functions=["sum"],
        size_ms=None,
        advance_ms=None,
        lateness_ms=0,
        time_field=None,
        late_topic=None,
    )
    agg.open(0, store)
    with pytest.raises(CodecError) as no_key:
        agg.process(0, store, tok(1, "a"))
    assert no_key.value.reason_class == "no_key"
    with pytest.raises(CodecError) as bad:
        agg.process(0, store, tok(1, "a", customer="c1", amount="12"))
    assert bad.value.reason_class == "bad_value"


def test_user_function_changes_vanish_when_it_raises(store: PartitionStore) -> None:
    def fn(state: KeyValueState, token: Token) -> list[dict[str, Any]]:
        state["n"] = state.get("n", 0) + 1
        if token["payload"]["amount"] == 2:
            raise ValueError("boom")
        return [{"n": state["n"]}]

    op = UserStateful(fn)
    out: list[Token] = []
    for t in (tok(1, "a"), tok(2, "a"), tok(3, "a")):
        store.begin_row()
        try:
            out.extend(x for _d, x in op.process(0, store, t))
            store.end_row(True)
        except ValueError:
            store.end_row(False)
    assert [(t["token_id"], t["payload"]["n"]) for t in out] == [("s:1/0", 1), ("s:3/0", 2)]


def test_a_corrupt_or_foreign_store_is_rebuilt_empty(tmp_path: Path) -> None:
    s = PartitionStore(tmp_path / "p0", "one.changelog", 0)
    s.begin_row()
    s.put(b"k", b"1")
    s.end_row(True)
    s.apply_committed(7)
    s.close()
    assert PartitionStore(tmp_path / "p0", "one.changelog", 0).offset == 7
    rebuilt = PartitionStore.open_or_rebuild(tmp_path / "p0", "other.changelog", 0)
    assert rebuilt.offset == 0 and rebuilt.get(b"k") is None
    rebuilt.close()
    (tmp_path / "p1").mkdir()
    (tmp_path / "p1" / "CURRENT").write_text("MANIFEST-garbage\n")
    broken = PartitionStore.open_or_rebuild(tmp_path / "p1", "one.changelog", 1)
    assert broken.offset == 0
