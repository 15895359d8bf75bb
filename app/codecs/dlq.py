"""DLQ record codec (Avro binary, ``schemas/dlq_record.avsc``)."""

from __future__ import annotations

import time
from io import BytesIO
from typing import Any

from fastavro import schemaless_reader, schemaless_writer

from app.codecs.schemas import load_schema, schema_fingerprint

DLQ_SCHEMA = "dlq_record.avsc"
DLQ_FINGERPRINT = schema_fingerprint(DLQ_SCHEMA).encode()


def encode_dlq(
    *,
    pipeline: str,
    stage: str,
    error_class: str,
    error_message: str,
    original_key: bytes | None,
    original_value: bytes,
    original_headers: list[tuple[str, bytes | None]],
    origin: dict[str, str],
) -> bytes:
    buf = BytesIO()
    schemaless_writer(
        buf,
        load_schema(DLQ_SCHEMA),
        {
            "pipeline": pipeline,
            "stage": stage,
            "error_class": error_class,
            "error_message": error_message[:4000],
            "original_key": original_key,
            "original_value": original_value,
            "original_headers": [{"key": k, "value": v} for k, v in original_headers],
            "origin": origin,
            "ts_ms": int(time.time() * 1000),
        },
    )
    return buf.getvalue()


def decode_dlq(value: bytes) -> dict[str, Any]:
    rec: dict[str, Any] = schemaless_reader(BytesIO(value), load_schema(DLQ_SCHEMA), None)
    return rec
