"""Input decoders and DLQ records for consumed input, shared by transforms and sinks.

A ``Decoder`` turns one consumed record into a token or raises ``CodecError`` with a
reason class; ``dead_letter`` builds the DLQ record for an input record that is
skipped (original bytes and headers, where it came from, why). Records are any
object with the fields of ``app.kafka.clients.InRecord`` (no Kafka import here).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from app.codecs.dlq import encode_dlq
from app.codecs.tokens import CodecError, TokenCodec, check_fingerprint
from app.tokens import Token


class InputRecord(Protocol):
    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]] | None: ...
    @property
    def timestamp_ms(self) -> int | None: ...


Decoder = Callable[[Any], Token]  # InputRecord -> Token (Any: the hot path takes InRecord tuples)


def token_decoder(codec: TokenCodec) -> Decoder:
    """Decode ledgerflow tokens; a record whose ``lf.schema`` header names another
    schema is refused (DLQ ``schema_mismatch``) rather than misread."""
    decode, expected = codec.decode, codec.header

    def run(rec: InputRecord) -> Token:
        if rec.value is None:
            raise CodecError("tombstone", "record has no value")
        headers = rec.headers
        if headers and headers[0] != expected:
            check_fingerprint(headers, expected[1])
        return decode(rec.value)

    return run


def dead_letter(pipeline: str, stage: str, rec: InputRecord, error_class: str, message: str) -> bytes:
    """DLQ record for an input record: original bytes, headers and where it came from."""
    return encode_dlq(
        pipeline=pipeline,
        stage=stage,
        error_class=error_class,
        error_message=message,
        original_key=rec.key,
        original_value=rec.value or b"",
        original_headers=list(rec.headers or []),
        origin={"topic": rec.topic, "partition": str(rec.partition), "offset": str(rec.offset)},
    )
