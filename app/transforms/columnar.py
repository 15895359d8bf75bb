"""The columnar path: a transform's declarative steps over one partition batch at once.

When every step of a transform is declarative (``filter``, ``project``, ``route``,
``cast``) or a ``map_batch`` user function, there is no stateful step and the output is ledgerflow tokens, the runner
hands each partition batch to ``ColumnarChain.run`` instead of running the chain row
by row. The batch is decoded once (payloads parsed by ``orjson``: measured faster than
``pyarrow.json``, see docs/columnar.md), every column a step reads becomes one Arrow
array, filters, routes and casts are ``pyarrow.compute`` kernels over it, and the
output envelopes are encoded with their constant parts (source id, lineage) encoded
once per batch.

Guarantees:

* Same output as the row path, byte for byte: the payload dicts are the ones the row
  path would build (same key order, same values), dumped by the same ``orjson``; the
  envelope is ``app.codecs.envelope``'s; token ids, keys and the order of the outputs
  per topic are the row path's, and so are the drop counts per step.
* All or nothing per batch: anything the columnar path cannot do exactly as the row
  path (a record that does not decode, a column with mixed types, a comparison or cast
  whose Arrow result could differ from Python's, an Arrow error) makes ``run`` return
  ``None``, and the runner takes the row path for that batch: bad rows reach the DLQ
  with the row path's reasons, and nothing is half done.
* Exactly-once is untouched: the batch, its offsets and its transaction are the runner's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import compress
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from app.codecs.envelope import decode_envelope, encode_parts, lineage_part, string_part
from app.codecs.tokens import SCHEMA_HEADER, TokenCodec
from app.config.pipeline import CastStep, FilterStep, MapBatchStep, ProjectStep, RouteStep, Step
from app.kafka.clients import InRecord
from app.transforms.batch_fn import BatchFn, apply_batch_fn
from app.transforms.chain import load_callable

log = logging.getLogger("ledgerflow.transform")

_EXACT_FLOAT = 2**53  # ints up to this compare exactly against a double column
_DECIMAL = "^-?[0-9]+$"


class Fallback(Exception):
    """This batch is not for the columnar path (the row path runs it)."""


@dataclass
class Rows:
    """The rows of a batch still in flight: payload dicts, their input index, and the
    topic a route chose (None: not routed)."""

    payloads: list[dict[str, Any]]
    index: list[int]
    dest: list[str | None]
    dropped: dict[str, int] = field(default_factory=dict)

    def keep(self, mask: Sequence[bool], label: str) -> None:
        before = len(self.payloads)
        self.payloads = list(compress(self.payloads, mask))
        self.index = list(compress(self.index, mask))
        self.dest = list(compress(self.dest, mask))
        if len(self.payloads) < before:
            self.dropped[label] = self.dropped.get(label, 0) + before - len(self.payloads)


Op = Callable[[Rows], None]


def _column(rows: Rows, name: str) -> Any:
    """The values of payload field ``name`` as one Arrow array (absent and null: null)."""
    try:
        return pa.array([p.get(name) for p in rows.payloads])
    except (pa.ArrowException, OverflowError, TypeError, ValueError) as exc:
        raise Fallback(f"field {name!r}: {exc}") from None


def _fits(typ: Any, value: Any) -> bool:
    """Whether comparing a column of ``typ`` with ``value`` gives Python's answer."""
    if pa.types.is_int64(typ):
        return type(value) is int
    if pa.types.is_float64(typ):
        return type(value) is float or (type(value) is int and abs(value) < _EXACT_FLOAT)
    if pa.types.is_string(typ):
        return type(value) is str
    if pa.types.is_boolean(typ):
        return type(value) is bool
    return False


_COMPARE = {
    "eq": pc.equal,
    "ne": pc.not_equal,
    "gt": pc.greater,
    "ge": pc.greater_equal,
    "lt": pc.less,
    "le": pc.less_equal,
}


def _filter_op(step: FilterStep, label: str) -> Op:
    name, op, value = step.field, step.op, step.value

    def run(rows: Rows) -> None:
        if op == "exists":
            rows.keep([name in p for p in rows.payloads], label)
            return
        col = _column(rows, name)
        if pa.types.is_null(col.type):  # no row has a value: the row path keeps none
            rows.keep([False] * len(col), label)
            return
        if op in ("in", "not_in"):
            if not isinstance(value, list) or not all(_fits(col.type, v) for v in value):
                raise Fallback(f"filter {name!r} {op} {value!r} on {col.type}")
            hit = pc.is_in(col, value_set=pa.array(value, col.type))
            mask = hit if op == "in" else pc.invert(hit)
        else:
            if not _fits(col.type, value):
                raise Fallback(f"filter {name!r} {op} {value!r} on {col.type}")
            mask = _COMPARE[op](col, value)
        kept = pc.and_kleene(mask, pc.is_valid(col)).fill_null(False)
        if not pc.all(kept).as_py():  # a filter that keeps every row leaves the batch as it is
            rows.keep(kept.to_pylist(), label)

    return run


def _route_op(step: RouteStep, label: str) -> Op:
    name, routes, default = step.field, dict(step.routes), step.default

    def run(rows: Rows) -> None:
        col = _column(rows, name)
        t = col.type
        if pa.types.is_null(t):
            text: list[str | None] = [None] * len(col)
        elif pa.types.is_int64(t) or pa.types.is_string(t):
            text = pc.cast(col, pa.string()).to_pylist()  # str() of an int64 is its decimal form
        elif pa.types.is_boolean(t):
            text = pc.if_else(col, "True", "False").to_pylist()  # str(True)
        else:
            raise Fallback(f"route on {name!r} of type {t}")
        rows.dest = [default if s is None else routes.get(s, default) for s in text]
        rows.keep([d is not None for d in rows.dest], label)

    return run


def _project_op(step: ProjectStep) -> Op:
    keep = list(step.fields) if step.fields else None
    ren = dict(step.rename or {})

    def run(rows: Rows) -> None:  # the row path's dict operations, once per row
        ps = rows.payloads
        if keep is not None:
            ps = [{k: p[k] for k in keep if k in p} for p in ps]
        if ren:
            ps = [{ren.get(k, k): v for k, v in p.items()} for p in ps]
        rows.payloads = ps

    return run


def _cast_array(col: Any, kind: str) -> Any:
    """``col`` cast as the row path casts each value, or ``Fallback`` where Arrow's
    conversion might differ from Python's (only these pairs are taken)."""
    t = col.type
    if kind == "string":
        if pa.types.is_int64(t) or pa.types.is_string(t):
            return pc.cast(col, pa.string())
        if pa.types.is_boolean(t):
            return pc.if_else(col, "true", "false")
    elif kind == "int" and (pa.types.is_int64(t) or pa.types.is_float64(t)):
        return pc.cast(col, pa.int64(), safe=True)  # refuses fractions and overflow, as the row path does
    elif kind == "int" and pa.types.is_string(t):
        if not pc.all(pc.match_substring_regex(col, _DECIMAL)).as_py():  # Arrow also reads "0x10"; int() not
            raise Fallback("cast to int: not every string is a plain decimal")
        return pc.cast(col, pa.int64(), safe=True)
    elif kind == "float" and (pa.types.is_int64(t) or pa.types.is_float64(t)):
        return pc.cast(col, pa.float64())
    elif kind == "bool" and pa.types.is_boolean(t):
        return col
    raise Fallback(f"cast {t} to {kind}")


def _cast_op(step: CastStep) -> Op:
    fields = dict(step.fields)

    def run(rows: Rows) -> None:
        for name, kind in fields.items():
            col = _column(rows, name)
            if pa.types.is_null(col.type):
                continue
            try:
                values = _cast_array(col, kind).to_pylist()
            except pa.ArrowException as exc:  # a value that does not convert: the row path dead-letters it
                raise Fallback(f"cast {name!r} to {kind}: {exc}") from None
            for p, v in zip(rows.payloads, values, strict=True):
                if v is not None:  # null and absent stay as they are
                    p[name] = v

    return run


def _map_batch_op(fn: BatchFn, name: str) -> Op:
    def run(rows: Rows) -> None:
        try:
            rows.payloads = apply_batch_fn(fn, rows.payloads, name)
        except Exception as exc:  # the row path redoes the batch row by row: bad rows reach the DLQ
            raise Fallback(f"map_batch {name}: {type(exc).__name__}: {exc}") from None

    return run


@dataclass
class BatchOutput:
    """Encoded outputs of one batch per topic (values and keys in row order) and the
    rows each step left with no output."""

    outputs: dict[str, tuple[list[bytes], list[bytes]]]
    dropped: dict[str, int]


class ColumnarChain:
    """A transform's declarative steps compiled to batch operations (see the module)."""

    def __init__(self, name: str, ops: list[Op], default_output: str | None, input_format: str) -> None:
        self.name = name
        self.ops = ops
        self.default_output = default_output
        self.input_format = input_format
        self.fingerprint = TokenCodec().header
        self.batches = 0  # partition batches offered
        self.fallbacks = 0  # of those, handed back to the row path
        self._lineage: dict[tuple[str, ...], bytes] = {}

    def run(self, topic: str, partition: int, recs: Sequence[InRecord]) -> BatchOutput | None:
        """The batch's outputs, or ``None``: run it on the row path."""
        self.batches += 1
        try:
            if self.input_format == "json":
                rows, envelopes = self._decode_json(recs), None
            else:
                rows, envelopes = self._decode_tokens(recs)
            for op in self.ops:
                op(rows)
                if not rows.payloads:
                    break
            return self._encode(topic, partition, recs, rows, envelopes)
        except (Fallback, pa.ArrowException) as exc:
            self.fallbacks += 1
            if self.fallbacks == 1:
                log.info("transform %s: a batch took the row path (%s); later ones are counted", self.name, exc)
            return None

    @staticmethod
    def _decode_json(recs: Sequence[InRecord]) -> Rows:
        loads = orjson.loads
        try:
            payloads = [loads(r.value) for r in recs]  # type: ignore[arg-type]
        except (orjson.JSONDecodeError, TypeError) as exc:  # bad JSON or a tombstone: the row path's DLQ
            raise Fallback(str(exc)) from None
        if not all(type(p) is dict for p in payloads):
            raise Fallback("a value is not a JSON object")
        return Rows(payloads, list(range(len(recs))), [None] * len(recs))

    def _decode_tokens(self, recs: Sequence[InRecord]) -> tuple[Rows, list[Any]]:
        expected = self.fingerprint
        envelopes = []
        payloads = []
        loads = orjson.loads
        try:
            for r in recs:
                h = r.headers
                if h and h[0] != expected and any(k == SCHEMA_HEADER for k, _v in h):
                    raise Fallback("a record names another schema")
                env = decode_envelope(r.value)  # type: ignore[arg-type]
                envelopes.append(env)
                payloads.append(loads(env[2]))
        except (ValueError, IndexError, TypeError) as exc:  # EnvelopeError, bad UTF-8 or JSON, tombstone
            raise Fallback(f"{type(exc).__name__}: {exc}") from None
        if not all(type(p) is dict for p in payloads):
            raise Fallback("a payload is not a JSON object")
        return Rows(payloads, list(range(len(recs))), [None] * len(recs)), envelopes

    def _lineage_of(self, lineage: list[str]) -> bytes:
        k = tuple(lineage)
        part = self._lineage.get(k)
        if part is None:
            part = self._lineage[k] = lineage_part([*lineage, self.name])
        return part

    def _encode(
        self, topic: str, partition: int, recs: Sequence[InRecord], rows: Rows, envelopes: list[Any] | None
    ) -> BatchOutput:
        out: dict[str, tuple[list[bytes], list[bytes]]] = {}
        default, dumps = self.default_output, orjson.dumps
        if envelopes is None:  # JSON input: the token fields external_decoder gives, built from bytes
            sid, lineage = string_part(topic), self._lineage_of([])
            tid_pre, pos_pre = f"{topic}/{partition}/".encode(), f"{partition}/".encode()
        for p, i, dest in zip(rows.payloads, rows.index, rows.dest, strict=True):
            dest = dest or default
            if dest is None:
                continue
            if envelopes is None:
                rec = recs[i]
                off = b"%d" % rec.offset
                tid = tid_pre + off
                key = rec.key
                if key is not None:
                    try:
                        key.decode()  # valid UTF-8 round-trips to itself
                    except UnicodeDecodeError:
                        key = key.decode(errors="replace").encode()
                value = encode_parts(tid, key, dumps(p), sid, pos_pre + off, rec.timestamp_ms, lineage)
            else:
                t_id, k, _raw, s_id, s_pos, ts, lin = envelopes[i]
                tid, key = t_id.encode(), None if k is None else k.encode()
                value = encode_parts(tid, key, dumps(p), string_part(s_id), s_pos.encode(), ts, self._lineage_of(lin))
            entry = out.get(dest)
            if entry is None:
                entry = out[dest] = ([], [])
            entry[0].append(value)
            entry[1].append(key or tid)
        return BatchOutput(out, rows.dropped)


def compile_columnar(
    name: str, steps: Sequence[Step], default_output: str | None, input_format: str, labels: Sequence[str]
) -> ColumnarChain | None:
    """The columnar form of ``steps``, or ``None`` if one of them is not declarative or
    the input is not ledgerflow tokens or JSON. ``labels`` name the steps as in the chain."""
    if not steps or input_format not in ("token", "json"):
        return None
    ops: list[Op] = []
    for step, label in zip(steps, labels, strict=True):
        if isinstance(step, FilterStep):
            ops.append(_filter_op(step, label))
        elif isinstance(step, RouteStep):
            ops.append(_route_op(step, label))
        elif isinstance(step, ProjectStep):
            ops.append(_project_op(step))
        elif isinstance(step, CastStep):
            ops.append(_cast_op(step))
        elif isinstance(step, MapBatchStep):
            ops.append(_map_batch_op(load_callable(step.function), step.function))
        else:
            return None
    return ColumnarChain(name, ops, default_output, input_format)
