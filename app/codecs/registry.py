"""Confluent-framed records: a magic byte 0, a 4-byte big-endian schema id, the body.

Input (``input_format: avro_registry | json_schema_registry``): the writer schema is
looked up by the id in each record (once per id, then cached) and the body decoded
with it (Avro binary by fastavro; JSON validated by jsonschema). What cannot be read
becomes a DLQ record with its original bytes, never a stopped stage:

* ``not_framed``: no magic byte, or shorter than the 5-byte frame;
* ``schema_unknown``: the registry has no schema with that id (HTTP 404);
* ``schema_mismatch``: the body does not decode with (or validate against) its
  schema, bytes are left over, or the id names a schema of the other format.

A registry that cannot be *reached* is not a reason to dead-letter anything: the
lookup waits it out with backoff (``app.registry.client``) and stops the stage only
after ``registry.max_wait_s``; nothing of the batch is committed then.

Output (``output_format``): one schema per output topic, registered (``auto_register``)
or taken as the subject's latest version, once per topic; a row that does not fit it
is refused as ``schema_mismatch`` (its input record goes to the DLQ), a schema the
subject's compatibility rule refuses stops the stage (``IncompatibleSchema``).
"""

from __future__ import annotations

import json
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import orjson
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.validation import ValidationError, validate

from app.codecs.external import jsonable
from app.codecs.tokens import CodecError
from app.registry.client import Registry, SchemaNotFound

MAGIC = 0
FRAME = struct.Struct(">bI")
KINDS = {"avro_registry": "AVRO", "json_schema_registry": "JSON"}
UNKNOWN_TTL_S = 60.0  # an id the registry did not know is asked for again after this long


def frame(schema_id: int, body: bytes) -> bytes:
    return FRAME.pack(MAGIC, schema_id) + body


def unframe(value: bytes) -> tuple[int, bytes]:
    """(schema id, body) of a framed record; ``not_framed`` when it is not one."""
    if len(value) < FRAME.size or value[0] != MAGIC:
        first = f"first byte 0x{value[0]:02x}" if value else "empty value"
        raise CodecError(
            "not_framed",
            f"not a Confluent-framed record ({first}, {len(value)} bytes; expected magic byte 0x00 and a 4-byte id)",
        )
    return FRAME.unpack_from(value)[1], value[FRAME.size :]


@dataclass
class WriterSchema:
    """A schema fetched by id: its type, the parsed form and the subjects it is under."""

    schema_id: int
    kind: str  # AVRO | JSON | PROTOBUF
    parsed: Any
    subjects: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        subjects = ", ".join(self.subjects) or "no subject"
        return f"schema id {self.schema_id} (subject {subjects})"


def _json_validator(schema: dict[str, Any]) -> Any:
    from jsonschema.validators import validator_for

    cls = validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _parse(kind: str, text: str) -> Any:
    if kind == "AVRO":
        return parse_schema(json.loads(text))
    if kind == "JSON":
        return _json_validator(json.loads(text))
    return None


def _json_errors(validator: Any, value: Any) -> str | None:
    from jsonschema.exceptions import best_match

    err = best_match(validator.iter_errors(value))
    if err is None:
        return None
    path = "/".join(str(p) for p in err.absolute_path)
    return f"{err.message}" + (f" at /{path}" if path else "")


class SchemaCache:
    """Writer schemas by id, fetched from the registry once (thread-safe)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._by_id: dict[int, WriterSchema] = {}
        self._unknown: dict[int, float] = {}
        self._lock = threading.Lock()

    def get(self, schema_id: int) -> WriterSchema:
        found = self._by_id.get(schema_id)
        if found is not None:
            return found
        with self._lock:
            found = self._by_id.get(schema_id)
            if found is not None:
                return found
            since = self._unknown.get(schema_id)
            if since is not None and time.monotonic() - since < UNKNOWN_TTL_S:
                raise CodecError("schema_unknown", f"schema id {schema_id} is not in the registry {self.registry.url}")
            try:
                schema = self.registry.schema(schema_id)
            except SchemaNotFound as exc:
                self._unknown[schema_id] = time.monotonic()
                raise CodecError(
                    "schema_unknown", f"schema id {schema_id} is not in the registry {self.registry.url}: {exc}"
                ) from exc
            kind = (schema.schema_type or "AVRO").upper()
            subjects = self.registry.subjects_of(schema_id)
            try:
                parsed = _parse(kind, schema.schema_str or "")
            except Exception as exc:  # a schema this process cannot use: its records cannot be read
                self._unknown[schema_id] = time.monotonic()
                raise CodecError(
                    "schema_unknown", f"schema id {schema_id} (subject {', '.join(subjects)}) cannot be parsed: {exc}"
                ) from exc
            found = WriterSchema(schema_id, kind, parsed, subjects)
            self._by_id[schema_id] = found
            return found


def registry_payload_decoder(fmt: str, cache: SchemaCache) -> Callable[[bytes], dict[str, Any]]:
    """``value bytes -> payload`` for framed Avro or JSON Schema records."""
    want = KINDS[fmt]

    def payload_of(value: bytes) -> dict[str, Any]:
        schema_id, body = unframe(value)
        ws = cache.get(schema_id)
        if ws.kind != want:
            raise CodecError("schema_mismatch", f"{ws.where} is a {ws.kind} schema; this input reads {want}")
        if want == "AVRO":
            buf = BytesIO(body)
            try:
                rec = schemaless_reader(buf, ws.parsed, None)
            except Exception as exc:
                raise CodecError(
                    "schema_mismatch", f"body does not match {ws.where}: {type(exc).__name__}: {exc}"
                ) from exc
            if buf.tell() != len(body):
                raise CodecError(
                    "schema_mismatch", f"body does not match {ws.where}: {len(body) - buf.tell()} bytes left over"
                )
        else:
            try:
                rec = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise CodecError("schema_mismatch", f"body of {ws.where} is not JSON: {exc}") from exc
            problem = _json_errors(ws.parsed, rec)
            if problem is not None:
                raise CodecError("schema_mismatch", f"body does not match {ws.where}: {problem}")
        if not isinstance(rec, dict):
            return {"value": jsonable(rec)}
        return {k: jsonable(v) for k, v in rec.items()}

    return payload_of


# -- output ------------------------------------------------------------------------------


@dataclass
class _Target:
    schema_id: int
    subject: str
    parsed: Any  # fastavro parsed schema | jsonschema validator
    fields: frozenset[str] | None  # an Avro record's field names (a row may not carry others)


def _record_name(kind: str, schema: dict[str, Any], path: str) -> str:
    if kind == "AVRO":
        name = str(schema.get("name", ""))
        ns = schema.get("namespace")
        if not name:
            raise ValueError(f"{path}: an Avro schema for the record subject strategies needs a name")
        return name if "." in name or not ns else f"{ns}.{name}"
    title = schema.get("title")
    if not isinstance(title, str) or not title:
        raise ValueError(f"{path}: a JSON schema for the record subject strategies needs a 'title'")
    return title


def subject_name(strategy: str, topic: str, record: str | None) -> str:
    """Confluent's TopicNameStrategy / RecordNameStrategy / TopicRecordNameStrategy."""
    if strategy == "topic":
        return f"{topic}-value"
    if record is None:
        raise ValueError(f"subject strategy {strategy} needs the record name (an output schema)")
    return record if strategy == "record" else f"{topic}-{record}"


class RegistryEncoder:
    """Encodes output payloads as framed records, one schema per output topic."""

    def __init__(
        self,
        registry: Registry,
        fmt: str,
        *,
        schema_file: str | None,
        strategy: str = "topic",
        auto_register: bool = True,
    ) -> None:
        self.registry = registry
        self.kind = KINDS[fmt]
        self.strategy = strategy
        self.auto_register = auto_register
        self.schema_text: str | None = None
        self.record: str | None = None
        if schema_file is not None:
            raw = Path(schema_file).read_text()
            doc = json.loads(raw)
            self.schema_text = json.dumps(doc, separators=(",", ":"), sort_keys=False)
            _parse(self.kind, self.schema_text)  # refuse a broken schema file at start
            if strategy != "topic":
                self.record = _record_name(self.kind, doc, schema_file)
        elif auto_register:
            raise ValueError("an output format with auto_register needs output_schema")
        elif strategy != "topic":
            raise ValueError(f"subject strategy {strategy} needs output_schema (for the record name)")
        self._targets: dict[str, _Target] = {}

    def subject(self, topic: str) -> str:
        return subject_name(self.strategy, topic, self.record)

    def target(self, topic: str) -> _Target:
        """The schema rows for ``topic`` are written with (registered/looked up once)."""
        t = self._targets.get(topic)
        if t is not None:
            return t
        subject = self.subject(topic)
        if self.auto_register:
            assert self.schema_text is not None
            from confluent_kafka.schema_registry import Schema

            schema_id = self.registry.register(subject, Schema(self.schema_text, self.kind))
            text = self.schema_text
        else:
            try:
                latest = self.registry.latest(subject)
            except SchemaNotFound as exc:
                from app.registry.client import RegistryRefused

                raise RegistryRefused(
                    f"schema registry {self.registry.url} has no version of subject {subject} "
                    f"(auto_register is false: register it first, e.g. ledgerflow schemas push)"
                ) from exc
            schema_id = int(latest.schema_id)
            text = latest.schema.schema_str or ""
            kind = (latest.schema.schema_type or "AVRO").upper()
            if kind != self.kind:
                from app.registry.client import RegistryRefused

                raise RegistryRefused(f"subject {subject}'s latest version is a {kind} schema, not {self.kind}")
        parsed = _parse(self.kind, text)
        fields = None
        if self.kind == "AVRO" and isinstance(parsed, dict) and parsed.get("type") == "record":
            fields = frozenset(f["name"] for f in parsed["fields"])
        t = self._targets[topic] = _Target(schema_id, subject, parsed, fields)
        return t

    def encode(self, topic: str, payload: dict[str, Any]) -> bytes:
        """One framed record, or ``CodecError(schema_mismatch)`` for a row that does not fit."""
        t = self.target(topic)
        if self.kind == "AVRO":
            if t.fields is not None:
                extra = [k for k in payload if k not in t.fields]
                if extra:
                    raise CodecError(
                        "schema_mismatch",
                        f"row does not fit schema id {t.schema_id} (subject {t.subject}): "
                        f"field(s) {', '.join(sorted(extra))} not in the schema",
                    )
            try:
                validate(payload, t.parsed, raise_errors=True)
            except ValidationError as exc:
                problems = "; ".join(str(e) for e in exc.errors)[:1000]
                raise CodecError(
                    "schema_mismatch", f"row does not fit schema id {t.schema_id} (subject {t.subject}): {problems}"
                ) from exc
            buf = BytesIO()
            buf.write(FRAME.pack(MAGIC, t.schema_id))
            schemaless_writer(buf, t.parsed, payload)
            return buf.getvalue()
        problem = _json_errors(t.parsed, payload)
        if problem is not None:
            raise CodecError(
                "schema_mismatch", f"row does not fit schema id {t.schema_id} (subject {t.subject}): {problem}"
            )
        return frame(t.schema_id, orjson.dumps(payload))
