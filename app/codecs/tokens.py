"""Row token codec: schemaless Avro envelope, JSON payload, fingerprint header.

``decode`` raises ``CodecError`` with a short ``reason_class`` for anything that is
not a valid token, so callers can dead-letter it with a reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from io import BytesIO
from typing import Any, cast

import orjson
from fastavro import schemaless_reader, schemaless_writer

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
        self._buf = BytesIO()

    def encode(self, token: Token) -> bytes:
        return self.encode_many([token])[0]

    def encode_many(self, tokens: Sequence[Token]) -> list[bytes]:
        buf, schema, dumps = self._buf, self.schema, orjson.dumps
        out: list[bytes] = []
        for t in tokens:
            buf.seek(0)
            buf.truncate()
            rec = dict(t)
            rec["payload"] = dumps(t["payload"])
            schemaless_writer(buf, schema, rec)
            out.append(buf.getvalue())
        return out

    def decode(self, value: bytes) -> Token:
        try:
            rec = schemaless_reader(BytesIO(value), self.schema, None)
        except Exception as exc:
            raise CodecError("avro_decode", f"not a ledgerflow token: {type(exc).__name__}: {exc}") from exc
        try:
            payload = orjson.loads(rec["payload"])
        except orjson.JSONDecodeError as exc:
            raise CodecError("payload_json", f"token payload is not JSON: {exc}") from exc
        if not isinstance(payload, dict):
            raise CodecError("payload_json", "token payload is not a JSON object")
        rec["payload"] = payload
        return cast(Token, rec)

    def decode_many(self, values: Sequence[bytes]) -> list[Token]:
        return [self.decode(v) for v in values]


def check_fingerprint(headers: Sequence[tuple[str, Any]] | None, expected: bytes) -> None:
    """Raise ``CodecError("schema_mismatch")`` if the record names another schema."""
    for k, v in headers or ():
        if k == SCHEMA_HEADER and v != expected:
            raise CodecError("schema_mismatch", f"record written with schema {v!r}, expected {expected!r}")
