"""Tokens made on the fly from topics that other applications write.

The token id comes from the record's topic/partition/offset, so the exactly-once
guarantee of ledgerflow's sinks holds for data that never passed a ledgerflow
source. Formats: ``json`` (a JSON object), ``avro`` (schemaless, schema from
``schemas/``), ``raw`` (bytes: ``{"value": str}`` when UTF-8, else ``{"value_b64": ...}``),
and the Confluent-framed ``avro_registry`` / ``json_schema_registry``, whose payload
decoder (``app.codecs.registry``) is handed in by the caller with its registry client.
"""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from collections.abc import Callable
from decimal import Decimal
from io import BytesIO
from typing import Any

import orjson
from fastavro import schemaless_reader

from app.codecs.decoders import Decoder
from app.codecs.schemas import load_schema
from app.codecs.tokens import CodecError
from app.tokens import Token


def jsonable(v: Any) -> Any:
    """A decoded Avro value as JSON data: bytes → base64; decimal, uuid, date and time
    logical types → their string forms (the same row on every path: tokens carry JSON)."""
    if isinstance(v, bytes):
        return base64.b64encode(v).decode()
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [jsonable(x) for x in v]
    if isinstance(v, Decimal | uuid.UUID):
        return str(v)
    if isinstance(v, dt.date | dt.time):  # datetime is a date
        return v.isoformat()
    return v


def external_decoder(
    fmt: str, schema_file: str | None, payload_decoder: Callable[[bytes], dict[str, Any]] | None = None
) -> Decoder:
    """The ``Decoder`` for records of ``fmt``: one call per record builds its token
    (id ``<topic>/<partition>/<offset>``); a record without a value, or one whose
    value does not decode, raises ``CodecError`` with the reason class."""
    payload_of = payload_decoder or _payload_decoder(fmt, schema_file)

    def decode(rec: Any) -> Token:
        value = rec.value
        if value is None:
            raise CodecError("tombstone", "record has no value")
        topic, partition, offset, key = rec.topic, rec.partition, rec.offset, rec.key
        return {
            "token_id": f"{topic}/{partition}/{offset}",
            "key": key.decode(errors="replace") if key is not None else None,
            "payload": payload_of(value),
            "source_id": topic,
            "source_position": f"{partition}/{offset}",
            "event_time_ms": rec.timestamp_ms,
            "lineage": [],
        }

    return decode


def _payload_decoder(fmt: str, schema_file: str | None) -> Callable[[bytes], dict[str, Any]]:
    if fmt == "json":

        def payload_of(value: bytes) -> dict[str, Any]:
            try:
                obj = orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                raise CodecError("json_decode", f"invalid JSON: {exc}") from exc
            if not isinstance(obj, dict):
                raise CodecError("json_not_object", f"JSON value is a {type(obj).__name__}, not an object")
            return obj

    elif fmt == "avro":
        if not schema_file:
            raise ValueError("input_format avro needs input_schema")
        schema = load_schema(schema_file)

        def payload_of(value: bytes) -> dict[str, Any]:
            try:
                rec = schemaless_reader(BytesIO(value), schema, None)
            except Exception as exc:
                raise CodecError("avro_decode", f"{type(exc).__name__}: {exc}") from exc
            if not isinstance(rec, dict):
                raise CodecError("avro_not_record", "Avro value is not a record")
            return {k: jsonable(v) for k, v in rec.items()}

    elif fmt == "raw":

        def payload_of(value: bytes) -> dict[str, Any]:
            try:
                return {"value": value.decode()}
            except UnicodeDecodeError:
                return {"value_b64": base64.b64encode(value).decode()}

    else:
        raise ValueError(f"unknown input format {fmt!r}")
    return payload_of
