"""An Iceberg table behind the seam's sink protocol: the table commit is the commit point.

Every snapshot the sink commits carries, in its summary properties,

* ``ledgerflow.offsets.<sink>``: JSON ``{topic: {partition: next_offset}}``, the sink's
  *whole* offsets map (carried forward from the snapshot it builds on, so the current
  snapshot alone is authoritative), and
* ``ledgerflow.part.<sink>``: JSON ``{topic, partition, first, next, rejects}`` for the
  part this snapshot holds (``rejects``: ``{offset: message}`` of the rows refused),
  so recovery can send those rows to the DLQ when Kafka lags the table.

Steps (the seam calls them in this order, DESIGN §5):

* ``prepare`` screens the part's rows (``app.sinks.encode.screen``), evolves the table
  schema for new payload fields (nullable columns, ``union_by_name``; the table is
  created from the first part if missing) and builds one Arrow table of the table's
  schema. A value that does not fit its column's type refuses its *row* (DLQ reason
  ``unwritable_row``, the message names the field and both types), never the part.
  The outcome is a pure function of the part's rows and the table schema (I8).
* ``commit_external`` writes the data files, then appends them in one table commit
  after a compare-and-set: the stored next offset of the part's partition must be
  the one this worker last saw. pyiceberg's own commit retry is disabled (table
  property ``commit.retry.num-retries`` = 0): it would rebuild the snapshot on the
  refreshed table with stale offsets. On a refused commit the sink re-reads the
  table: stored offset == this part's next → the commit landed (lost reply); == the
  expected one → retry; anything else → ``SinkFenced``, nothing written (I5).
* ``finalize`` / ``discard`` / ``remove_staging``: nothing (an uncommitted append
  leaves only unreferenced files).
* ``recover``: the current snapshot's offsets are authoritative; where Kafka's group
  offset lags them, the plan reconciles the range with the rejects the snapshots
  between the two recorded.

A catalog or warehouse that cannot be used raises ``IcebergUnavailable`` naming the
sink and the table; the catalog URI's password and the S3 keys never appear in
messages or logs.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa

from app.config.pipeline import IcebergSink as IcebergSinkSpec
from app.faults import crash_point
from app.journal.events import JournalEvent, PartInfo
from app.sinks.base import (
    TP,
    UNWRITABLE,
    Outcome,
    PartRows,
    Prepared,
    Reconcile,
    RecoveryPlan,
    Reject,
    SinkFenced,
    SinkUnavailable,
    StoreCommitted,
)
from app.sinks.encode import DEFAULT_MAX_ROW_BYTES, screen
from app.tokens import Token

log = logging.getLogger("ledgerflow.sink.iceberg")

OFFSETS_PROP = "ledgerflow.offsets."  # + sink name: the sink's whole offsets map
PART_PROP = "ledgerflow.part."  # + sink name: the part this snapshot committed
ENVELOPE: tuple[tuple[str, pa.DataType], ...] = (
    ("_token_id", pa.string()),
    ("_key", pa.string()),
    ("_event_time_ms", pa.int64()),
)
TABLE_PROPERTIES = {
    "commit.retry.num-retries": "0",  # the sink retries itself, re-checking its offsets
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "50",
}
MAX_COMMIT_ATTEMPTS = 8
MAX_MESSAGE_CHARS = 300  # a reject's message as kept in the snapshot summary

Offsets = dict[str, dict[int, int]]


class IcebergUnavailable(SinkUnavailable):
    """The catalog or the warehouse cannot be used: the stage stops with this error,
    which names the sink and the table (never the catalog password or S3 keys)."""


# -- typing rows against the table schema (pure) --------------------------------------
def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _value_type(value: Any) -> str:
    try:
        return str(pa.array([value]).type)
    except (pa.ArrowException, OverflowError, TypeError, ValueError):
        return type(value).__name__


def _infer(values: Sequence[Any]) -> pa.DataType:
    """The Arrow type of a column's values: inferred over all of them, or (when they do
    not form one column) the type of the first non-null value that has one."""
    try:
        return pa.array(values).type
    except (pa.ArrowException, OverflowError, TypeError, ValueError):
        for v in values:
            if v is not None:
                try:
                    return pa.array([v]).type
                except (pa.ArrowException, OverflowError, TypeError, ValueError):
                    continue
        return pa.null()


def _has_null_type(t: pa.DataType) -> bool:
    if pa.types.is_null(t):
        return True
    return any(_has_null_type(t.field(i).type) for i in range(t.num_fields))


def _widens(src: pa.DataType, dst: pa.DataType) -> bool:
    """Whether an Arrow cast from ``src`` to ``dst`` keeps every value's meaning (checked
    casts only: string to large_string, a narrower int to a wider one, int to float)."""
    t = pa.types
    if (t.is_string(src) and t.is_large_string(dst)) or (t.is_binary(src) and t.is_large_binary(dst)):
        return True
    if t.is_integer(src) and (t.is_integer(dst) or t.is_floating(dst)):
        return True
    return bool(t.is_floating(src) and t.is_floating(dst))


@dataclass(slots=True)
class Typed:
    """One part's rows as an Arrow table of the table's columns; ``bad``: the index of
    each refused row (in the screened rows) -> why."""

    table: pa.Table
    bad: dict[int, str] = field(default_factory=dict)


def new_columns(tokens: Sequence[Token], columns: Sequence[str], existing: Mapping[str, Any]) -> dict[str, pa.DataType]:
    """Payload fields of ``tokens`` the table lacks, with the Arrow type each would get
    (first-seen order). A field whose values are all null, or whose type an Iceberg
    column cannot hold (a null type inside), is left out: its rows are typed against it
    as a missing column (``type_rows`` refuses rows with a value there)."""
    out: dict[str, pa.DataType] = {}
    for c in columns:
        if c in existing:
            continue
        typ = _infer([t["payload"].get(c) for t in tokens])
        if not _has_null_type(typ):
            out[c] = typ
    return out


def type_rows(tokens: Sequence[Token], schema: pa.Schema, table: str) -> Typed:
    """Rows of ``tokens`` as an Arrow table of ``schema`` (the table's columns, in its
    order). A row whose value does not convert to its column's type without loss, or
    that has a value for a field the table has no column for, is refused."""
    names = [f.name for f in schema]
    known = set(names)
    bad: dict[int, str] = {}
    for i, t in enumerate(tokens):
        extra = next((k for k, v in t["payload"].items() if k not in known and v is not None), None)
        if extra is not None:
            v = t["payload"][extra]
            bad[i] = (
                f"token {t['token_id']!r}: payload field {extra!r}: value {_describe(v)} ({_value_type(v)}) "
                f"has no type an Iceberg column of table {table} can hold"
            )
    envelope = {"_token_id": "token_id", "_key": "key", "_event_time_ms": "event_time_ms"}
    arrays = []
    for f in schema:
        src = envelope.get(f.name)
        values = (
            [t[src] for t in tokens]  # type: ignore[literal-required]
            if src is not None
            else [t["payload"].get(f.name) for t in tokens]
        )
        arrays.append(_column(f.name, f.type, values, tokens, bad, table))
    typed = pa.Table.from_arrays(arrays, schema=schema)
    if bad:
        typed = typed.filter(pa.array([i not in bad for i in range(len(tokens))]))
    return Typed(typed, bad)


def _column(
    name: str, typ: pa.DataType, values: list[Any], tokens: Sequence[Token], bad: dict[int, str], table: str
) -> pa.Array:
    """``values`` as one array of ``typ``; a value that does not fit is nulled and its row
    recorded in ``bad`` with a message naming the field and both types."""
    try:
        arr = pa.array(values)
    except (pa.ArrowException, OverflowError, TypeError, ValueError):
        arr = None
    if arr is not None:
        if arr.type == typ:
            return arr
        if pa.types.is_null(arr.type):
            return pa.nulls(len(values), typ)
        if _widens(arr.type, typ):
            try:
                return arr.cast(typ, safe=True)
            except (pa.ArrowException, OverflowError, ValueError):
                pass
    kept: list[Any] = []
    for i, v in enumerate(values):
        if v is None:
            kept.append(None)
            continue
        try:
            converted = pa.array([v], typ).to_pylist()[0]
            ok = converted == v
        except (pa.ArrowException, OverflowError, TypeError, ValueError):
            ok = False
        if ok:
            kept.append(v)
            continue
        kept.append(None)
        bad.setdefault(
            i,
            f"token {tokens[i]['token_id']!r}: payload field {name!r}: value {_describe(v)} ({_value_type(v)}) "
            f"does not fit the column's type {typ} in table {table}",
        )
    return pa.array(kept, typ)


# -- offsets in snapshot summaries ----------------------------------------------------
def stored_offsets(summary: Mapping[str, str] | None, sink: str) -> Offsets:
    """The offsets map a snapshot summary carries for ``sink`` ({} when none)."""
    raw = (summary or {}).get(OFFSETS_PROP + sink)
    if not raw:
        return {}
    return {topic: {int(p): int(n) for p, n in parts.items()} for topic, parts in json.loads(raw).items()}


def _offsets_json(offsets: Offsets) -> str:
    return json.dumps({t: {str(p): n for p, n in sorted(ps.items())} for t, ps in sorted(offsets.items())})


def _summary_of(snapshot: Any) -> Mapping[str, str]:
    return snapshot.summary.additional_properties if snapshot is not None and snapshot.summary else {}


def _redact(uri: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(uri).render_as_string(hide_password=True)
    except Exception:  # an unparsable URI is shown by its scheme only
        return uri.split("://", 1)[0] + "://..."


@dataclass(slots=True)
class _Staged:
    """A prepared part: the typed rows, the part's summary property and its rejects."""

    rows: pa.Table | None
    part_prop: str


class IcebergSink(StoreCommitted):
    """``Sink`` over one Iceberg table in a SQL catalog; see the module docstring."""

    external = True
    two_phase = False

    def __init__(self, name: str, catalog: Any, table: str, *, where: str, max_row_bytes: int) -> None:
        self.name = name
        self.catalog = catalog
        self.table_name = table
        self.where = where  # the catalog, password redacted: for messages
        self.max_row_bytes = max_row_bytes
        self.expected: dict[TP, int | None] = {}  # stored next offset per partition, as last seen
        self.table: Any = None
        with self._io("load"):
            self.table = self._load()

    # -- catalog access ---------------------------------------------------------------
    @contextmanager
    def _io(self, op: str) -> Iterator[None]:
        """Turn a catalog or warehouse failure into ``IcebergUnavailable`` naming the
        sink, the table and the operation (the driver's message, never the URI)."""
        from sqlalchemy.exc import SQLAlchemyError

        try:
            yield
        except (SQLAlchemyError, OSError) as exc:
            detail = str(getattr(exc, "orig", None) or exc).splitlines()[0][:300]
            raise IcebergUnavailable(
                f"iceberg sink {self.name}: table {self.table_name}: {op} failed on catalog {self.where}: "
                f"{type(exc).__name__}: {detail}"
            ) from None

    def _load(self) -> Any:
        from pyiceberg.exceptions import NoSuchTableError

        try:
            table = self.catalog.load_table(self.table_name)
        except NoSuchTableError:
            return None
        return self._enforce(table)

    def _enforce(self, table: Any) -> Any:
        """Make sure pyiceberg never retries a commit on its own (it would carry stale offsets)."""
        if table.properties.get("commit.retry.num-retries") == "0":
            return table
        log.warning("iceberg sink %s: setting commit.retry.num-retries=0 on table %s", self.name, self.table_name)
        with table.transaction() as txn:
            txn.set_properties({"commit.retry.num-retries": "0"})
        return table

    def _create(self, columns: Mapping[str, pa.DataType]) -> Any:
        self._ensure_namespace(self.table_name.split(".", 1)[0])
        schema = pa.schema([*ENVELOPE, *columns.items()])
        table = self.catalog.create_table_if_not_exists(self.table_name, schema=schema, properties=TABLE_PROPERTIES)
        log.info("iceberg sink %s: table %s ready (%d columns)", self.name, self.table_name, len(schema))
        return self._enforce(table)

    def _ensure_namespace(self, ns: str) -> None:
        """Create ``ns`` unless it exists. Sink workers that start together race here: the
        SQL catalog's check-then-insert lets the loser fail on the unique key, which is
        success for us once the namespace is there."""
        try:
            self.catalog.create_namespace_if_not_exists(ns)
        except Exception:
            if not self.catalog.namespace_exists(ns):
                raise

    def _refresh(self) -> None:
        with self._io("refresh"):
            if self.table is None:
                self.table = self._load()
            else:
                self.table.refresh()

    def _current(self) -> Offsets:
        return stored_offsets(_summary_of(self.table.current_snapshot()) if self.table else None, self.name)

    # -- the protocol ---------------------------------------------------------------
    def prepare(self, part: PartRows) -> Prepared:
        rejects: list[Reject] = []
        seen: set[str] = set()
        tokens: list[Token] = []
        offsets: list[int] = []
        columns: dict[str, None] = {}
        repeated = 0
        for chunk in part.chunks():
            toks, offs, cols, dups = screen(chunk, self.max_row_bytes, rejects, seen)
            tokens.extend(toks)
            offsets.extend(offs)
            columns.update(dict.fromkeys(cols))
            repeated += dups
        typed = self._typed(tokens, list(columns)) if tokens else None
        if typed is not None:
            rejects.extend(Reject(offsets[i], UNWRITABLE, msg) for i, msg in sorted(typed.bad.items()))
        rejects.sort(key=lambda r: r.offset)
        rows = typed.table if typed is not None and typed.table.num_rows else None
        part_prop = json.dumps(
            {
                "topic": part.topic,
                "partition": part.partition,
                "first": part.first_offset,
                "next": part.last_offset + 1,
                "rejects": {str(r.offset): r.message[:MAX_MESSAGE_CHARS] for r in rejects},
            }
        )
        info = PartInfo(
            self.name,
            part.topic,
            part.partition,
            part.first_offset,
            part.last_offset,
            rows.num_rows if rows is not None else 0,
            0,
            "",
            "",
            f"iceberg:{self.table_name}",
        )
        return Prepared(info, rejects, _Staged(rows, part_prop), repeated)

    def _typed(self, tokens: Sequence[Token], columns: Sequence[str]) -> Typed:
        """The rows typed against the table, after creating it or adding nullable
        columns for payload fields it lacks (a schema change commits on its own: it adds
        no snapshot, so the offsets stay where they are)."""
        with self._io("schema update"):
            existing = {f.name: f for f in self.table.schema().fields} if self.table is not None else {}
            new = new_columns(tokens, columns, existing)
            if self.table is None:
                self.table = self._create(new)
            elif new:
                self._evolve(new)
            schema = self.table.schema().as_arrow()
        return type_rows(tokens, schema, self.table_name)

    def _evolve(self, new: Mapping[str, pa.DataType]) -> None:
        from pyiceberg.exceptions import CommitFailedException

        for _attempt in range(MAX_COMMIT_ATTEMPTS):
            try:
                with self.table.update_schema() as upd:
                    upd.union_by_name(pa.schema(list(new.items())))
                log.info("iceberg sink %s: table %s: added column(s) %s", self.name, self.table_name, ", ".join(new))
                return
            except CommitFailedException:
                self.table.refresh()  # another writer changed the table: union again on top of it
            except ValueError as exc:  # e.g. an existing column of another type: rows are refused below
                log.warning("iceberg sink %s: table %s: schema not evolved: %s", self.name, self.table_name, exc)
                self.table.refresh()
                return
        raise IcebergUnavailable(f"iceberg sink {self.name}: table {self.table_name}: schema update kept conflicting")

    def commit_external(self, prepared: Prepared) -> Outcome:
        info = prepared.info
        staged: _Staged = prepared.state
        tp, nxt = (info.topic, info.partition), info.last_offset + 1
        try:
            snapshot_id = self._commit(tp, nxt, staged)
        except BaseException:
            self.expected.pop(tp, None)  # unknown now: recovery reads it again
            raise
        self.expected[tp] = nxt
        return Outcome(replace(info, handle=str(snapshot_id)))

    def _commit(self, tp: TP, nxt: int, staged: _Staged) -> int:
        """Append ``staged`` after the compare-and-set of ``tp``'s stored offset; the
        committed snapshot's id. Raises ``SinkFenced`` when another owner moved ``tp``."""
        from pyiceberg.exceptions import CommitFailedException
        from sqlalchemy.exc import SQLAlchemyError

        if self.table is None:  # every row of the part refused before a table existed
            with self._io("create"):
                self.table = self._create({})
        expected = self.expected.get(tp)
        files: list[Any] | None = None
        tried = fresh = False
        for _attempt in range(MAX_COMMIT_ATTEMPTS):
            current = self._current()
            stored = current.get(tp[0], {}).get(tp[1])
            if tried and stored == nxt:
                log.warning("iceberg sink %s: %s/%d: commit to %s had landed", self.name, *tp, self.table_name)
                return int(self.table.current_snapshot().snapshot_id)
            if stored != expected:
                if not fresh:
                    self._refresh()
                    fresh = True
                    continue
                raise SinkFenced(
                    f"iceberg sink {self.name}: table {self.table_name}: {tp[0]}/{tp[1]} is at {stored}, "
                    f"expected {expected}: another owner advanced it"
                )
            if files is None:
                with self._io("write data files"):
                    files = self._write(staged.rows)
            current.setdefault(tp[0], {})[tp[1]] = nxt
            props = {OFFSETS_PROP + self.name: _offsets_json(current), PART_PROP + self.name: staged.part_prop}
            crash_point("iceberg.before_table_commit")
            try:
                snapshot_id = self._append(files, props)
            except CommitFailedException:
                log.info("iceberg sink %s: table %s changed concurrently; re-reading", self.name, self.table_name)
            except (SQLAlchemyError, OSError) as exc:
                log.warning("iceberg sink %s: commit outcome unknown (%s); re-reading", self.name, type(exc).__name__)
                time.sleep(0.5)
            else:
                crash_point("iceberg.after_table_commit_before_kafka")
                return snapshot_id
            tried = fresh = True
            self._refresh()
        raise IcebergUnavailable(
            f"iceberg sink {self.name}: table {self.table_name}: {tp[0]}/{tp[1]} not committed after "
            f"{MAX_COMMIT_ATTEMPTS} attempts (concurrent commits)"
        )

    def _write(self, rows: pa.Table | None) -> list[Any]:
        """The part's data files, written once and reused by every commit attempt."""
        if rows is None:
            return []
        from pyiceberg.io.pyarrow import _dataframe_to_data_files

        return list(_dataframe_to_data_files(self.table.metadata, rows, self.table.io, write_uuid=uuid.uuid4()))

    def _append(self, files: Sequence[Any], props: dict[str, str]) -> int:
        """One table commit (a fast append of ``files``) with the snapshot properties."""
        txn = self.table.transaction()
        with txn.update_snapshot(snapshot_properties=props).fast_append() as app:
            for f in files:
                app.append_data_file(f)
        txn.commit_transaction()
        return int(self.table.current_snapshot().snapshot_id)

    def recover(
        self,
        partitions: Sequence[TP],
        committed: Mapping[TP, int | None],
        journal: Callable[[], Mapping[str, JournalEvent]],
    ) -> RecoveryPlan:
        plan = RecoveryPlan()
        self._refresh()
        current = self._current()
        for tp in partitions:
            stored = current.get(tp[0], {}).get(tp[1])
            self.expected[tp] = stored
            if stored is None:
                continue
            plan.seek[tp] = stored
            kafka_at = committed.get(tp) or 0
            if kafka_at < stored:
                rejects = self.rejects(tp, kafka_at, stored)
                plan.reconcile.append(Reconcile(tp[0], tp[1], kafka_at, stored, rejects, reason=UNWRITABLE))
        return plan

    def rejects(self, tp: TP, start: int, end: int) -> dict[int, str]:
        """The rows refused in ``[start, end)`` of ``tp``, from the snapshots that committed it."""
        from pyiceberg.table.snapshots import ancestors_of

        out: dict[int, str] = {}
        covered = end
        for snap in ancestors_of(self.table.current_snapshot(), self.table.metadata):
            summary = _summary_of(snap)
            at = stored_offsets(summary, self.name).get(tp[0], {}).get(tp[1])
            if at is None or at <= start:
                return out
            raw = summary.get(PART_PROP + self.name)
            if raw:
                part = json.loads(raw)
                if (part["topic"], part["partition"]) == tp and part["first"] >= start:
                    out.update({int(o): m for o, m in part["rejects"].items()})
                    covered = min(covered, part["first"])
        if covered > start:
            log.warning(
                "iceberg sink %s: table %s: snapshots of %s/%d %d..%d expired; their rejects are not in the DLQ",
                self.name,
                self.table_name,
                *tp,
                start,
                covered,
            )
        return out

    def forget(self, partitions: Sequence[TP]) -> None:
        for tp in partitions:
            self.expected.pop(tp, None)


# -- maintenance -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Compaction:
    """What one ``compact`` did: data files of the current snapshot before and after,
    the rows rewritten, the snapshots expired."""

    files_before: int
    files_after: int
    rows_rewritten: int
    expired: int


def compact(
    table: Any, *, target_bytes: int, expire_before: datetime | None = None, retry_for_s: float = 120.0
) -> Compaction:
    """Rewrite the table's small data files (under half of ``target_bytes``) into files
    of up to ``target_bytes`` in ONE overwrite snapshot that carries every sink's
    offsets map of the snapshot it replaces unchanged, so recovery reads the same
    offsets. Rows are identical before and after. Safe against running sinks: a sink
    commit in between makes this commit fail; compaction then re-reads the table and
    commits the same new files on top of it with the new offsets (the files it
    replaces are still live: sinks only append). A sink whose commit meets this one
    re-reads the table, finds its offset unchanged and retries. Then, with
    ``expire_before``, snapshots older than that are expired (metadata only; the
    current snapshot keeps the offsets). A sink that commits several times a second can
    win many rounds in a row: compaction keeps retrying, with a short random pause
    between attempts, for ``retry_for_s`` (at least ``MAX_COMMIT_ATTEMPTS`` attempts)."""
    import random
    import time

    from pyiceberg.exceptions import CommitFailedException

    small: list[Any] = []
    written: list[Any] = []
    rows = 0
    before = 0
    deadline = time.monotonic() + retry_for_s
    attempt = 0
    while attempt < MAX_COMMIT_ATTEMPTS or time.monotonic() < deadline:
        attempt += 1
        snap = table.current_snapshot()
        if snap is None:
            return Compaction(0, 0, 0, _expire(table, expire_before))
        tasks = list(table.scan(snapshot_id=snap.snapshot_id).plan_files())
        live = {t.file.file_path for t in tasks}
        if not small or any(f.file_path not in live for f in small):  # first pass, or another compaction ran
            before = len(tasks)
            small = [t.file for t in tasks if t.file.file_size_in_bytes < target_bytes // 2]
            if len(small) < 2:
                return Compaction(before, before, 0, _expire(table, expire_before))
            written, rows = _rewrite(table, [t for t in tasks if t.file in small], target_bytes)
        props = {k: v for k, v in _summary_of(snap).items() if k.startswith(OFFSETS_PROP)}
        txn = table.transaction()
        with txn.update_snapshot(snapshot_properties=props).overwrite() as ow:
            for f in small:
                ow.delete_data_file(f)
            for f in written:
                ow.append_data_file(f)
        try:
            txn.commit_transaction()
        except CommitFailedException:
            time.sleep(random.uniform(0.0, 0.25))  # out of step with a sink's commit cadence
            table.refresh()
            continue
        after = before - len(small) + len(written)
        return Compaction(before, after, rows, _expire(table, expire_before))
    raise RuntimeError(
        f"table {_table_name(table)}: compaction kept conflicting with concurrent commits "
        f"({attempt} attempts in {retry_for_s:.0f}s); run it again when the sinks commit less often"
    )


def _table_name(table: Any) -> str:
    return ".".join(table.name())


def _rewrite(table: Any, tasks: Sequence[Any], target_bytes: int) -> tuple[list[Any], int]:
    """New data files holding the rows of ``tasks`` (bins of up to ``target_bytes`` of
    input, read one bin at a time), and how many rows."""
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.io.pyarrow import ArrowScan, _dataframe_to_data_files

    bins: list[list[Any]] = [[]]
    size = 0
    for t in tasks:
        if bins[-1] and size + t.file.file_size_in_bytes > target_bytes:
            bins.append([])
            size = 0
        bins[-1].append(t)
        size += t.file.file_size_in_bytes
    scan = ArrowScan(table.metadata, table.io, table.schema(), AlwaysTrue())
    out: list[Any] = []
    rows = 0
    for b in bins:
        data = scan.to_table(b)
        rows += data.num_rows
        out.extend(_dataframe_to_data_files(table.metadata, data, table.io, write_uuid=uuid.uuid4()))
    return out, rows


def _expire(table: Any, before: datetime | None) -> int:
    """Expire the snapshots older than ``before`` (never the current one); how many."""
    from pyiceberg.exceptions import CommitFailedException

    if before is None:
        return 0
    for _attempt in range(MAX_COMMIT_ATTEMPTS):
        current = table.current_snapshot()
        old = [
            s.snapshot_id
            for s in table.metadata.snapshots
            if s.timestamp_ms < before.timestamp() * 1000 and (current is None or s.snapshot_id != current.snapshot_id)
        ]
        if not old:
            return 0
        try:
            table.maintenance.expire_snapshots().by_ids(old).commit()
        except CommitFailedException:
            table.refresh()
            continue
        return len(old)
    raise RuntimeError(f"table {_table_name(table)}: expiring snapshots kept conflicting with concurrent commits")


def expire_cutoff(hours: float | None) -> datetime | None:
    """The time before which snapshots expire, ``hours`` ago (None: keep every snapshot)."""
    return None if hours is None else datetime.now(UTC) - timedelta(hours=hours)


# -- building from the spec -----------------------------------------------------------
def catalog_properties(spec: IcebergSinkSpec) -> dict[str, str]:
    """pyiceberg catalog properties of a spec entry: the warehouse, and the S3 FileIO
    settings for an ``s3://`` warehouse (secrets resolved: never log the result)."""
    warehouse = spec.warehouse
    if "://" not in warehouse:
        Path(warehouse).mkdir(parents=True, exist_ok=True)
        warehouse = Path(warehouse).resolve().as_uri()
    props = {"warehouse": warehouse}
    conn = spec.s3
    if conn is not None:
        props["s3.region"] = conn.region
        props["s3.path-style-access"] = "true" if conn.path_style else "false"
        if conn.endpoint_url:
            props["s3.endpoint"] = conn.endpoint_url
        if conn.credentials is not None:
            where = f"sinks.{spec.name}.s3.credentials"
            key = conn.credentials.access_key_id.resolve(f"{where}.access_key_id")
            secret = conn.credentials.secret_access_key.resolve(f"{where}.secret_access_key")
            props["s3.access-key-id"] = key.get_secret_value()
            props["s3.secret-access-key"] = secret.get_secret_value()
    return props


def open_catalog(spec: IcebergSinkSpec) -> tuple[Any, str]:
    """The spec's SQL catalog and its URI with the password hidden (for messages)."""
    from pyiceberg.catalog.sql import SqlCatalog
    from sqlalchemy.exc import SQLAlchemyError

    uri = spec.catalog.resolved_uri(spec.name)
    where = _redact(uri)
    try:
        return SqlCatalog(spec.catalog.name, uri=uri, **catalog_properties(spec)), where
    except (SQLAlchemyError, OSError) as exc:
        detail = str(getattr(exc, "orig", None) or exc).splitlines()[0][:300]
        raise IcebergUnavailable(
            f"iceberg sink {spec.name}: table {spec.table}: catalog {where} unreachable: {type(exc).__name__}: {detail}"
        ) from None


def build_iceberg_sink(spec: IcebergSinkSpec) -> IcebergSink:
    """The sink a spec's ``type: iceberg`` entry describes, its catalog reachable."""
    catalog, where = open_catalog(spec)
    return IcebergSink(
        spec.name, catalog, spec.table, where=where, max_row_bytes=spec.max_row_bytes or DEFAULT_MAX_ROW_BYTES
    )
