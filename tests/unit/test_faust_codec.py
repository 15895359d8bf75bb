"""The faust codec against ledgerflow's own token codec: byte-exact, lossless,
strict on bad input (faust is imported for real; it is in the ``dev`` extra)."""

from __future__ import annotations

import pytest

from app.codecs.tokens import CodecError, TokenCodec
from app.interop.faust_codec import LedgerflowCodec, register, token_headers, token_key
from app.tokens import Token

TOKEN: Token = {
    "token_id": "gen:42/1",
    "key": "sku-7",
    "payload": {"id": 42, "amount": 1250, "note": "ä ✓", "nested": {"a": [1, 2.5, None, True]}},
    "source_id": "gen",
    "source_position": "42",
    "event_time_ms": 1_763_000_000_123,
    "lineage": ["gen", "map:double"],
}


def test_dumps_writes_the_bytes_ledgerflow_writes_and_loads_inverts_it() -> None:
    codec = LedgerflowCodec()
    raw = codec.dumps(TOKEN)
    assert raw == TokenCodec().encode(TOKEN)
    assert codec.loads(raw) == TOKEN
    keyless: Token = {**TOKEN, "key": None, "event_time_ms": None}
    assert codec.loads(codec.dumps(keyless)) == keyless
    assert token_key(keyless) == b"gen:42/1" and token_key(TOKEN) == b"sku-7"
    assert token_headers() == [TokenCodec().header]


def test_registered_by_name_in_fausts_registry() -> None:
    from faust.serializers import codecs

    register()
    assert codecs.get_codec("ledgerflow").loads(TokenCodec().encode(TOKEN)) == TOKEN


def test_bytes_that_are_not_a_token_raise_codec_error() -> None:
    with pytest.raises(CodecError) as err:
        LedgerflowCodec().loads(b'{"id": 1}')
    assert err.value.reason_class in {"avro_decode", "payload_json"}


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ({k: v for k, v in TOKEN.items() if k != "token_id"}, "lacks field(s) token_id"),
        ({**TOKEN, "payload": [1, 2]}, "payload must be a dict"),
        ({**TOKEN, "event_time_ms": "yesterday"}, "event_time_ms"),
        ({**TOKEN, "lineage": "gen"}, "lineage"),
        ("not a token", "expected a token dict"),
    ],
)
def test_an_incomplete_or_mistyped_token_is_refused_on_dumps(broken: object, message: str) -> None:
    with pytest.raises(TypeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        LedgerflowCodec().dumps(broken)
