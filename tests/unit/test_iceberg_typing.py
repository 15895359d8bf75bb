"""Rows typed against an Iceberg table's schema: refusals by row, never by part."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from app.sinks.iceberg import new_columns, stored_offsets, type_rows
from app.tokens import Token

SCHEMA = pa.schema(
    [
        ("_token_id", pa.large_string()),
        ("_key", pa.large_string()),
        ("_event_time_ms", pa.int64()),
        ("amount", pa.int64()),
        ("price", pa.float64()),
        ("note", pa.large_string()),
    ]
)


def _tok(i: int, **payload: Any) -> Token:
    return {  # type: ignore[typeddict-item]
        "token_id": f"t:{i}",
        "key": None,
        "payload": payload,
        "source": {"id": "t", "position": str(i)},
        "event_time_ms": 1000 + i,
        "lineage": [],
    }


def test_conflicting_values_refuse_their_row_only() -> None:
    toks = [
        _tok(0, amount=1, price=1, note="a"),
        _tok(1, amount="two", price=2.5, note="b"),
        _tok(2, amount=2.5, price=3.0, note="c"),
        _tok(3, amount=True, price=None, note="d"),
        _tok(4, amount=4, price=4.0, note=5),
    ]
    typed = type_rows(toks, SCHEMA, "ns.t")
    assert typed.table.column("_token_id").to_pylist() == ["t:0"]
    assert sorted(typed.bad) == [1, 2, 3, 4]
    assert "'amount'" in typed.bad[1] and "string" in typed.bad[1] and "int64" in typed.bad[1]
    assert "'amount'" in typed.bad[2] and "double" in typed.bad[2]  # 2.5 would be truncated to 2
    assert "'amount'" in typed.bad[3] and "bool" in typed.bad[3]
    assert "'note'" in typed.bad[4] and "ns.t" in typed.bad[4]
    assert typed.table.column("price").to_pylist() == [1.0]  # an int widens into the double column


def test_same_rows_same_table() -> None:
    toks = [_tok(i, amount=i, note=None if i % 2 else f"n{i}") for i in range(50)]
    a, b = type_rows(toks, SCHEMA, "ns.t"), type_rows(list(toks), SCHEMA, "ns.t")
    assert a.table.equals(b.table) and a.bad == b.bad == {}
    assert a.table.schema == SCHEMA and a.table.column("price").null_count == 50


def test_new_fields_become_columns_all_null_ones_wait() -> None:
    toks = [_tok(0, amount=1, coupon="c", empty=None, nested={"x": None}), _tok(1, amount=2, coupon=None)]
    new = new_columns(toks, ["amount", "coupon", "empty", "nested"], {"amount": None})
    assert new == {"coupon": pa.string()}  # all-null and null-typed fields have no column type yet
    typed = type_rows(
        toks, SCHEMA, "ns.t"
    )  # this schema has no column for "coupon": the row with a value there is refused
    assert list(typed.bad) == [0] and "'coupon'" in typed.bad[0]


def test_offsets_map_from_summary() -> None:
    summary = {"ledgerflow.offsets.lake": '{"a": {"0": 5, "2": 7}}', "ledgerflow.offsets.other": '{"a": {"0": 1}}'}
    assert stored_offsets(summary, "lake") == {"a": {0: 5, 2: 7}}
    assert stored_offsets({}, "lake") == {} and stored_offsets(None, "lake") == {}
