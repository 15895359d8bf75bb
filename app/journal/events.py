"""Journal event types and their codec (Avro JSON encoding: readable with kcat).

Keys come from ``app.journal.keys`` (``source/...``, ``sink/...``, ``run/...``,
``recovery/...``); the latest event per key is the state (the topic is compacted).
"""

from __future__ import annotations

from dataclasses import dataclass
from io import StringIO
from typing import Any, Literal

import orjson
from fastavro import json_reader, json_writer

from app.codecs.schemas import load_schema
from app.sources.base import Checkpoint

JOURNAL_SCHEMA = "journal_event.avsc"
Kind = Literal[
    "source_checkpoint",
    "part_committed",
    "part_finalized",
    "run_started",
    "run_stopped",
    "recovery",
    "hanging_txn_aborted",
]


@dataclass(frozen=True, slots=True)
class PartInfo:
    sink: str
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    rows: int
    bytes: int
    checksum: str
    staging_path: str
    final_path: str
    handle: str = ""  # the sink's own commit data (S3: upload id and part ETags; Iceberg: snapshot id)


@dataclass(frozen=True, slots=True)
class JournalEvent:
    kind: Kind
    key: str
    pipeline: str
    stage: str
    worker_id: str
    run_id: str
    ts_ms: int
    checkpoint: Checkpoint | None
    part: PartInfo | None
    detail: dict[str, str] | None


def _record(ev: JournalEvent) -> dict[str, Any]:
    cp = ev.checkpoint
    p = ev.part
    return {
        "kind": ev.kind,
        "key": ev.key,
        "pipeline": ev.pipeline,
        "stage": ev.stage,
        "worker_id": ev.worker_id,
        "run_id": ev.run_id,
        "ts_ms": ev.ts_ms,
        "checkpoint": None
        if cp is None
        else {
            "source_id": cp.source_id,
            "path": cp.path,
            "fingerprint": cp.fingerprint,
            "fingerprint_len": cp.fingerprint_len,
            "offset": cp.offset,
            "rows": cp.rows,
        },
        "part": None
        if p is None
        else {
            "sink": p.sink,
            "topic": p.topic,
            "partition": p.partition,
            "first_offset": p.first_offset,
            "last_offset": p.last_offset,
            "rows": p.rows,
            "bytes": p.bytes,
            "checksum": p.checksum,
            "staging_path": p.staging_path,
            "final_path": p.final_path,
            "handle": p.handle,
        },
        "detail": ev.detail,
    }


def encode_event(ev: JournalEvent) -> bytes:
    out = StringIO()
    json_writer(out, load_schema(JOURNAL_SCHEMA), [_record(ev)])
    return out.getvalue().strip().encode()


def decode_event(value: bytes) -> JournalEvent:
    rec: dict[str, Any] = next(iter(json_reader(StringIO(value.decode()), load_schema(JOURNAL_SCHEMA))))
    cp = rec["checkpoint"]
    p = rec["part"]
    return JournalEvent(
        kind=rec["kind"],
        key=rec["key"],
        pipeline=rec["pipeline"],
        stage=rec["stage"],
        worker_id=rec["worker_id"],
        run_id=rec["run_id"],
        ts_ms=rec["ts_ms"],
        checkpoint=None if cp is None else Checkpoint(key=rec["key"], **cp),
        part=None if p is None else PartInfo(**p),
        detail=rec["detail"],
    )


def event_json(ev: JournalEvent) -> dict[str, Any]:
    """Plain JSON view of an event (for `journal tail`)."""
    out: dict[str, Any] = orjson.loads(orjson.dumps(_record(ev)))
    return out
