"""Row token codec: schemaless Avro envelope (``app.codecs.envelope``), JSON payload,
fingerprint header.

``decode`` raises ``CodecError`` with a short ``reason_class`` for anything that is
not a valid token, so callers can dead-letter it with a reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from app.codecs.envelope import EnvelopeError, decode_envelope, encode_envelope
from app.codecs.schemas import load_schema, schema_fingerprint
from app.tokens import Token

SCHEMA_HEADER = "lf.schema"
TOKEN_SCHEMA = "row_token.avsc"


class CodecError(ValueError):
    def __init__(self, reason_class: str, message: str) -> None:
        super().__init__(message)
        self.reason_class = reason_class


class TokenCodec:
    def __init__(self) -> None:
        self.schema = load_schema(TOKEN_SCHEMA)
        self.fingerprint = schema_fingerprint(TOKEN_SCHEMA).encode()
        self.header: tuple[str, bytes] = (SCHEMA_HEADER, self.fingerprint)

    def encode(self, token: Token) -> bytes:
        return encode_envelope(token, orjson.dumps(token["payload"]))  # type: ignore[arg-type]

    def encode_many(self, tokens: Sequence[Token]) -> list[bytes]:
        dumps, enc = orjson.dumps, encode_envelope
        return [enc(t, dumps(t["payload"])) for t in tokens]  # type: ignore[arg-type]

    def decode(self, value: bytes) -> Token:
        try:
            tid, key, payload_raw, sid, pos, ts, lineage = decode_envelope(value)
        except (EnvelopeError, UnicodeDecodeError, IndexError) as exc:
            raise CodecError("avro_decode", f"not a ledgerflow token: {type(exc).__name__}: {exc}") from exc
        try:
            payload = orjson.loads(payload_raw)
        except orjson.JSONDecodeError as exc:
            raise CodecError("payload_json", f"token payload is not JSON: {exc}") from exc
        if not isinstance(payload, dict):
            raise CodecError("payload_json", "token payload is not a JSON object")
        return {
            "token_id": tid,
            "key": key,
            "payload": payload,
            "source_id": sid,
            "source_position": pos,
            "event_time_ms": ts,
            "lineage": lineage,
        }


def check_fingerprint(headers: Sequence[tuple[str, Any]] | None, expected: bytes) -> None:
    """Raise ``CodecError("schema_mismatch")`` if the record names another schema."""
    for k, v in headers or ():
        if k == SCHEMA_HEADER and v != expected:
            raise CodecError("schema_mismatch", f"record written with schema {v!r}, expected {expected!r}")
