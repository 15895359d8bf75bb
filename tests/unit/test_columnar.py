"""The columnar path gives the row path's bytes, or hands the batch back (None).

The row path here is the runner's own per-row code: the spec's decoder, the compiled
chain, ``TokenCodec.encode`` and the ``key or token_id`` record key. The broker-level
check of the same property is tests/integration/test_columnar_parity.py."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from app.codecs.tokens import CodecError, TokenCodec
from app.config.pipeline import Transform
from app.kafka.clients import InRecord
from app.runtime.supervisor import _decoder, _steps
from app.sources.generator import GeneratorSource
from app.transforms.batch_fn import BatchFnError
from app.transforms.chain import compile_chain
from app.transforms.columnar import compile_columnar

CODEC = TokenCodec()


def _transform(steps: list[Any], fmt: str = "json") -> Transform:
    return Transform.model_validate({"name": "t", "input": "in", "input_format": fmt, "output": "out", "steps": steps})


def _row_path(tr: Transform, recs: list[InRecord]) -> tuple[dict[str, tuple[list[bytes], list[bytes]]], dict, int]:
    labels = [f"t.{i}:{s.kind}" for i, s in enumerate(tr.steps)]
    chain = compile_chain(tr.name, _steps(tr), tr.output, labels)
    decode = _decoder(tr.input_format, None)
    out: dict[str, tuple[list[bytes], list[bytes]]] = {}
    refused = 0
    for rec in recs:
        try:
            outs = chain(decode(rec))
        except (CodecError, ValueError, TypeError):
            refused += 1
            continue
        for dest, tok in outs:
            entry = out.setdefault(dest, ([], []))
            entry[0].append(CODEC.encode(tok))
            entry[1].append((tok["key"] or tok["token_id"]).encode())
    return out, chain.take_dropped(), refused


def _columnar(tr: Transform, recs: list[InRecord]) -> Any:
    labels = [f"t.{i}:{s.kind}" for i, s in enumerate(tr.steps)]
    col = compile_columnar(tr.name, tr.steps, tr.output, tr.input_format, labels)
    assert col is not None
    return col.run("in", 3, recs)


def _json_recs(payloads: list[Any], keys: list[bytes | None] | None = None) -> list[InRecord]:
    keys = keys or [f"k{i % 7}".encode() for i in range(len(payloads))]
    return [
        InRecord(
            "in", 3, 100 + i, k, None if p is None else (p if isinstance(p, bytes) else orjson.dumps(p)), None, 1000 + i
        )
        for i, (p, k) in enumerate(zip(payloads, keys, strict=True))
    ]


def _generated(n: int) -> list[dict[str, Any]]:
    return [t["payload"] for t in GeneratorSource("g", rows=n, seed=7).poll(n).tokens]


STEPS = [
    [{"filter": {"field": "amount", "op": "ge", "value": 20000}}],
    [{"filter": {"field": "country", "op": "in", "value": ["DE", "FR", "US"]}}, {"cast": {"quantity": "string"}}],
    [
        {"filter": {"field": "note", "op": "exists"}},
        {"project": {"fields": ["id", "amount", "sku"], "rename": {"sku": "item"}}},
    ],
    [{"route": {"field": "quantity", "routes": {"1": "one", "2": "two"}, "default": "many"}}],
    [{"route": {"field": "country", "routes": {"DE": "de"}}}, {"cast": {"id": "float", "amount": "string"}}],
    [{"filter": {"field": "missing", "op": "eq", "value": 1}}],
    [{"filter": {"field": "country", "op": "not_in", "value": ["DE"]}}, {"project": {"rename": {"id": "row"}}}],
]


@pytest.mark.parametrize("steps", STEPS, ids=range(len(STEPS)))
def test_json_batches_give_the_row_path_bytes(steps: list[Any]) -> None:
    tr = _transform(steps)
    recs = _json_recs(_generated(3000))
    want, dropped, refused = _row_path(tr, recs)
    got = _columnar(tr, recs)
    assert got is not None and refused == 0
    assert got.outputs == want
    assert got.dropped == dropped


def test_token_batches_give_the_row_path_bytes() -> None:
    tokens = GeneratorSource("g", rows=2000, seed=8).poll(2000).tokens
    for i, t in enumerate(tokens):
        t["lineage"] = ["up"] if i % 2 else []
    recs = [
        InRecord("in", 3, i, t["token_id"].encode(), CODEC.encode(t), [CODEC.header], None)
        for i, t in enumerate(tokens)
    ]
    tr = _transform(STEPS[1], "token")
    want, dropped, _ = _row_path(tr, recs)
    got = _columnar(tr, recs)
    assert got is not None and got.outputs == want and got.dropped == dropped


@pytest.mark.parametrize(
    "rows, steps",
    [
        ([{"a": 1}, b"not json"], [{"filter": {"field": "a", "op": "ge", "value": 0}}]),  # a bad record
        ([{"a": 1}, None], [{"filter": {"field": "a", "op": "ge", "value": 0}}]),  # a tombstone
        ([{"a": 1}, {"a": "x"}], [{"filter": {"field": "a", "op": "ge", "value": 0}}]),  # mixed types
        ([{"a": 1}, {"a": True}], [{"filter": {"field": "a", "op": "eq", "value": 1}}]),  # True == 1 in Python
        ([{"a": 1.5}, {"a": 2.0}], [{"cast": {"a": "int"}}]),  # a fraction: the row path dead-letters it
        ([{"a": "0x10"}, {"a": "7"}], [{"cast": {"a": "int"}}]),  # Arrow reads hex, int() does not
        ([{"a": 1.5}], [{"route": {"field": "a", "routes": {"1.5": "x"}}}]),  # str() of a float
        ([{"a": [1]}, {"a": [2]}], [{"filter": {"field": "a", "op": "eq", "value": [1]}}]),  # nested values
        ([{"a": 1}], [{"filter": {"field": "a", "op": "gt", "value": 0.5}}]),  # int column, float value
    ],
)
def test_what_the_columnar_path_cannot_do_exactly_goes_to_the_row_path(rows: list[Any], steps: list[Any]) -> None:
    assert _columnar(_transform(steps), _json_recs(rows, [b"k"] * len(rows))) is None


def test_keys_fall_back_to_the_token_id_and_missing_fields_stay_missing() -> None:
    tr = _transform([{"cast": {"b": "string"}}])
    recs = _json_recs([{"a": 1}, {"a": 2, "b": None}, {"b": 3, "a": 4}], [None, b"", "\u00e9".encode()])
    want, _, _ = _row_path(tr, recs)
    got = _columnar(tr, recs)
    assert got is not None and got.outputs == want
    assert got.outputs["out"][1][:2] == [b"in/3/100", b"in/3/101"]
    third = CODEC.decode(got.outputs["out"][0][2])["payload"]
    assert list(third.items()) == [("b", "3"), ("a", 4)]


def test_not_declarative_or_not_token_output_is_not_compiled() -> None:
    tr = _transform([{"map": "tests.bench.fns:add_x"}])
    assert compile_columnar(tr.name, tr.steps, tr.output, "json", ["t.0:map"]) is None
    tr = _transform([{"filter": {"field": "a", "op": "exists"}}], "raw")
    assert compile_columnar(tr.name, tr.steps, tr.output, "raw", ["t.0:filter"]) is None


def amount_inverse(batch: Any) -> Any:
    """A ``map_batch`` function that fails on a row with amount 0 (integer division)."""
    import pyarrow.compute as pc

    return batch.append_column("inv", pc.divide(1000000, batch.column("amount")))


def drop_a_row(batch: Any) -> Any:
    """Breaks the contract: one row fewer than it was given."""
    return batch.slice(0, max(0, batch.num_rows - 1))


MAP_BATCH = "app.transforms.examples:add_amount_eur_batch"


@pytest.mark.parametrize(
    "steps",
    [
        [{"map_batch": MAP_BATCH}],
        [
            {"filter": {"field": "amount", "op": "ge", "value": 20000}},
            {"map_batch": MAP_BATCH},
            {"cast": {"id": "string"}},
        ],
    ],
    ids=["alone", "between-declarative-steps"],
)
def test_map_batch_gives_the_row_path_bytes(steps: list[Any]) -> None:
    tr = _transform(steps)
    payloads = _generated(3000)
    for i, p in enumerate(payloads):  # some rows without a field others have
        if i % 5 == 0:
            p.pop("note", None)
    recs = _json_recs(payloads)
    want, dropped, refused = _row_path(tr, recs)
    got = _columnar(tr, recs)
    assert got is not None and refused == 0
    assert got.outputs == want and got.dropped == dropped
    out = [CODEC.decode(v) for v in got.outputs["out"][0]]
    assert out and all(abs(t["payload"]["amount_eur"] - t["payload"]["amount"] * 0.0092) <= 0.0051 for t in out)
    for t in out:  # a row without "note" stays without it (not note: null)
        i = int(t["token_id"].rsplit("/", 1)[1]) - 100
        assert ("note" in t["payload"]) == ("note" in payloads[i])
    assert any("note" not in t["payload"] for t in out)


def test_a_map_batch_that_fails_on_one_row_hands_the_batch_to_the_row_path() -> None:
    tr = _transform([{"map_batch": "tests.unit.test_columnar:amount_inverse"}])
    recs = _json_recs([{"amount": 5}, {"amount": 0}, {"amount": 8}], [b"k"] * 3)
    assert _columnar(tr, recs) is None
    want, _, refused = _row_path(tr, recs)
    assert refused == 1  # the row with amount 0 is dead-lettered, the others pass
    chain = compile_chain(tr.name, _steps(tr), tr.output, ["t.0:map_batch"])
    with pytest.raises(BatchFnError, match=r"map_batch tests.unit.test_columnar:amount_inverse failed: ArrowInvalid"):
        chain(_decoder("json", None)(recs[1]))
    assert [CODEC.decode(v)["payload"]["inv"] for v in want["out"][0]] == [200000.0, 125000.0]


def test_a_map_batch_returning_another_row_count_is_refused_by_name() -> None:
    tr = _transform([{"map_batch": "tests.unit.test_columnar:drop_a_row"}])
    recs = _json_recs([{"a": 1}, {"a": 2}], [b"k"] * 2)
    assert _columnar(tr, recs) is None
    chain = compile_chain(tr.name, _steps(tr), tr.output, ["t.0:map_batch"])
    with pytest.raises(BatchFnError, match=r"map_batch tests.unit.test_columnar:drop_a_row returned 0 rows for 1"):
        chain(_decoder("json", None)(recs[0]))
