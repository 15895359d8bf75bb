"""Token, DLQ, external-input and journal codecs."""

from __future__ import annotations

import json
from io import BytesIO

import pytest
from fastavro import parse_schema, schemaless_writer
from hypothesis import given
from hypothesis import strategies as st

from app.codecs.dlq import decode_dlq, encode_dlq
from app.codecs.envelope import EnvelopeError, decode_envelope
from app.codecs.external import external_decoder
from app.codecs.schemas import load_schema, schema_fingerprint
from app.codecs.tokens import CodecError, TokenCodec, check_fingerprint
from app.journal.events import JournalEvent, PartInfo, decode_event, encode_event
from app.kafka.clients import InRecord
from app.sources.base import Checkpoint
from app.tokens import Token

CODEC = TokenCodec()


def _token(**kw: object) -> Token:
    t: Token = {
        "token_id": "gen:1",
        "key": None,
        "payload": {"a": 1, "s": "é✓", "n": None, "big": 2**62},
        "source_id": "gen",
        "source_position": "1",
        "event_time_ms": None,
        "lineage": [],
    }
    t.update(kw)  # type: ignore[typeddict-item]
    return t


payloads = st.dictionaries(
    st.text(max_size=8),
    st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=20), st.booleans(), st.none()),
    max_size=6,
)


@given(payload=payloads, key=st.one_of(st.none(), st.text(max_size=10)), lineage=st.lists(st.text(max_size=5)))
def test_token_round_trip(payload: dict[str, object], key: str | None, lineage: list[str]) -> None:
    tok = _token(payload=payload, key=key, lineage=lineage, event_time_ms=123)
    assert CODEC.decode(CODEC.encode(tok)) == tok


def test_garbage_is_a_codec_error_with_reason() -> None:
    with pytest.raises(CodecError) as info:
        CODEC.decode(b"\xff\xff\xff")
    assert info.value.reason_class == "avro_decode"
    bad_payload = CODEC.encode(_token())
    with pytest.raises(CodecError) as info2:
        CODEC.decode(bad_payload.replace(b'"a":1', b'"a":!'))
    assert info2.value.reason_class == "payload_json"


def test_fingerprints_are_stable_and_distinct() -> None:
    fp = schema_fingerprint("row_token.avsc")
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert fp != schema_fingerprint("journal_event.avsc")
    assert CODEC.header == ("lf.schema", fp.encode())
    check_fingerprint([("lf.schema", fp.encode())], fp.encode())
    with pytest.raises(CodecError, match="schema"):
        check_fingerprint([("lf.schema", b"0000000000000000")], fp.encode())


def test_dlq_round_trip() -> None:
    raw = encode_dlq(
        pipeline="p",
        stage="transform/t",
        error_class="json_decode",
        error_message="boom",
        original_key=b"k",
        original_value=b"\x00bad",
        original_headers=[("h", b"v"), ("n", None)],
        origin={"topic": "x", "partition": "0", "offset": "7"},
    )
    rec = decode_dlq(raw)
    assert rec["original_value"] == b"\x00bad" and rec["origin"]["offset"] == "7"
    assert rec["original_headers"] == [{"key": "h", "value": b"v"}, {"key": "n", "value": None}]


def test_external_decoders(tmp_path: object) -> None:
    js = external_decoder("json", None)
    tok = js(InRecord("orders", 2, 41, b"k1", b'{"x": 1}', None, 99))
    assert tok == {
        "token_id": "orders/2/41",
        "key": "k1",
        "payload": {"x": 1},
        "source_id": "orders",
        "source_position": "2/41",
        "event_time_ms": 99,
        "lineage": [],
    }
    with pytest.raises(CodecError) as info:
        js(InRecord("orders", 0, 1, None, b"[1]", None, None))
    assert info.value.reason_class == "json_not_object"
    with pytest.raises(CodecError, match="invalid JSON"):
        js(InRecord("orders", 0, 1, None, b"{", None, None))
    with pytest.raises(CodecError) as info:
        js(InRecord("orders", 0, 2, b"k", None, None, None))
    assert info.value.reason_class == "tombstone"
    raw = external_decoder("raw", None)
    assert raw(InRecord("t", 0, 0, None, b"\xff", None, None))["payload"] == {"value_b64": "/w=="}
    assert raw(InRecord("t", 0, 0, None, b"hi", None, None))["payload"] == {"value": "hi"}


def test_external_avro_decoder(tmp_path: object) -> None:
    from pathlib import Path

    schema = {
        "type": "record",
        "name": "R",
        "fields": [{"name": "a", "type": "int"}, {"name": "b", "type": "bytes"}],
    }
    path = Path(str(tmp_path)) / "r.avsc"
    path.write_text(json.dumps(schema))
    buf = BytesIO()
    schemaless_writer(buf, parse_schema(schema), {"a": 5, "b": b"\x01"})
    dec = external_decoder("avro", str(path))
    assert dec(InRecord("t", 0, 3, None, buf.getvalue(), None, None))["payload"] == {"a": 5, "b": "AQ=="}
    with pytest.raises(CodecError) as info:
        dec(InRecord("t", 0, 4, None, b"", None, None))
    assert info.value.reason_class == "avro_decode"


def test_journal_events_are_readable_json_and_round_trip() -> None:
    cp = Checkpoint("source/g/f@/x", "g", "/x", "ab" * 32, 1024, 4096, 40)
    ev = JournalEvent("source_checkpoint", cp.key, "p", "source", "w1", "r1", 5, cp, None, None)
    raw = encode_event(ev)
    as_json = json.loads(raw)
    assert as_json["kind"] == "source_checkpoint" and as_json["worker_id"] == "w1"
    assert decode_event(raw) == ev
    part = PartInfo("s", "t", 2, 100, 199, 100, 5000, "c" * 64, "/st", "/fi")
    ev2 = JournalEvent("part_committed", "sink/s/t/2/100", "p", "sink", "w", "r", 6, None, part, {"a": "b"})
    assert decode_event(encode_event(ev2)) == ev2


_ENVELOPE_SCHEMA = parse_schema(load_schema("row_token.avsc"))
_texts = st.text(max_size=40) | st.text(min_size=60, max_size=9000)


@given(
    tid=_texts,
    key=st.none() | _texts,
    payload=st.binary(max_size=20000),
    pos=_texts,
    ts=st.none() | st.integers(-(2**63), 2**63 - 1),
    lineage=st.lists(st.text(max_size=70), max_size=4),
)
def test_envelope_decode_agrees_with_fastavro_and_refuses_every_truncation(
    tid: str, key: str | None, payload: bytes, pos: str, ts: int | None, lineage: list[str]
) -> None:
    """The hand-written envelope decoder reads what fastavro writes (short and long strings,
    lengths of one, two and three varint bytes, any event time, lineages) and raises on
    every truncated prefix instead of returning a shorter token."""
    record = {
        "token_id": tid,
        "key": key,
        "payload": payload,
        "source_id": "src",
        "source_position": pos,
        "event_time_ms": ts,
        "lineage": lineage,
    }
    buf = BytesIO()
    schemaless_writer(buf, _ENVELOPE_SCHEMA, record)
    data = buf.getvalue()
    assert decode_envelope(data) == (tid, key, payload, "src", pos, ts, lineage)
    for cut in {0, 1, len(data) // 2, len(data) - 1}:
        with pytest.raises((EnvelopeError, IndexError, UnicodeDecodeError)):
            decode_envelope(data[:cut])
