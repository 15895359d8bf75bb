"""PostgreSQL as a transactional sink: the database transaction is the commit point.

One DB transaction per part (one input partition's offset range):

1. lock ``ledgerflow_offsets(sink, topic, partition)`` and compare-and-set it from
   the offset this worker started from to the part's next offset — if another
   worker moved it, the transaction rolls back (``CasFailed``): a zombie never
   writes rows outside a successful CAS (I5);
2. write the part's rows keyed by ``token_id`` (or a natural key): a plain COPY
   first (the CAS proved the range new), an upsert when a key was seen before, so
   re-writing a row is never a duplicate;
3. rows the database rejects (constraint, type, length) are isolated by bisecting
   the batch under savepoints and recorded in ``ledgerflow_rejects`` with the
   database's error, in the same transaction (the runner sends them to the DLQ);
4. COMMIT.                                      crash points: ``sink.db_before_commit``,
   ``sink.db_mid_batch`` (after the first chunk), ``sink.db_after_commit_before_kafka``
   is raised by the seam.

Connection loss mid-part retries with backoff; if it happened during COMMIT the
outcome is read back from the offsets row, so a retry never writes twice, and the
rejects that commit recorded are read back too, so they still reach the DLQ
(fault point ``sink.db_commit_ack_lost`` injects exactly this). ``app.sinks.pg_sink``
puts this writer behind the seam's sink protocol.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from psycopg import sql
from psycopg.adapt import Dumper

from app.faults import crash_point, fault_point
from app.sinks.base import SinkFenced
from app.tokens import Token

log = logging.getLogger("ledgerflow.sink.postgres")

# The key of the advisory lock that serializes schema DDL across sink workers.
SCHEMA_LOCK_KEY = 0x6C65646765720001

OFFSETS_DDL = """CREATE TABLE IF NOT EXISTS ledgerflow_offsets (
    sink text NOT NULL, topic text NOT NULL, partition int NOT NULL,
    next_offset bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sink, topic, partition))"""
REJECTS_DDL = """CREATE TABLE IF NOT EXISTS ledgerflow_rejects (
    sink text NOT NULL, topic text NOT NULL, partition int NOT NULL, "offset" bigint NOT NULL,
    token_id text NOT NULL, error text NOT NULL, at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sink, topic, partition, "offset"))"""

TYPE_ALIASES = {
    "text": "text",
    "varchar": "character varying",
    "int": "integer",
    "integer": "integer",
    "bigint": "bigint",
    "smallint": "smallint",
    "double precision": "double precision",
    "float8": "double precision",
    "real": "real",
    "numeric": "numeric",
    "boolean": "boolean",
    "bool": "boolean",
    "jsonb": "jsonb",
    "timestamptz": "timestamp with time zone",
    "timestamp": "timestamp without time zone",
    "date": "date",
}


class SchemaMismatch(RuntimeError):
    """The table does not match the spec (named table, column and types)."""


class CasFailed(SinkFenced):
    """Another owner moved the partition's offset: this worker must not write it."""


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # SQL type as written in the spec, e.g. "bigint", "varchar(20)"
    source: str  # payload field (or "_token_id", "_key", "_event_time_ms")


META_FIELDS = {"_token_id": "token_id", "_key": "key", "_event_time_ms": "event_time_ms"}


class JsonTextDumper(Dumper):
    """Payload objects and arrays go to the database as JSON text (type left for the
    server to infer from the column: ``jsonb``, ``json`` or a text type)."""

    def dump(self, obj: Any) -> bytes:
        return orjson.dumps(obj)


def row_plan(columns: Sequence[Column]) -> tuple[list[Column], Callable[[Token], tuple[Any, ...]]]:
    """The order the sink writes ``columns`` in (token fields first, then payload
    fields) and a function from a token to its row in that order. One C-level
    ``map`` over the payload per row; objects and arrays are dumped as JSON by
    ``JsonTextDumper`` on the writing cursor, not checked here."""
    meta = [c for c in columns if c.source in META_FIELDS]
    fields = [c for c in columns if c.source not in META_FIELDS]
    names = tuple(c.source for c in fields)
    keys = [META_FIELDS[c.source] for c in meta]
    if not keys:

        def row(t: Token) -> tuple[Any, ...]:
            return tuple(map(t["payload"].get, names))

    elif len(keys) == 1:
        k = keys[0]

        def row(t: Token) -> tuple[Any, ...]:
            return (t[k], *map(t["payload"].get, names))  # type: ignore[literal-required]

    else:

        def row(t: Token) -> tuple[Any, ...]:
            return (*[t[k] for k in keys], *map(t["payload"].get, names))  # type: ignore[literal-required]

    return meta + fields, row


@dataclass(frozen=True)
class PgPartResult:
    written: int
    rejects: list[tuple[int, str]]  # (index in the part, database error)


def _base_type(t: str) -> str:
    t = t.strip().lower()
    base = t.split("(")[0].strip()
    return TYPE_ALIASES.get(base, base)


class PostgresWriter:
    def __init__(
        self,
        sink: str,
        dsn: str,
        table: str,
        columns: Sequence[Column],
        key: Sequence[str],
        *,
        create_table: bool = False,
        statement_timeout_ms: int = 30_000,
        use_copy: bool = True,
        retries: int = 8,
    ) -> None:
        self.sink = sink
        self.dsn = dsn
        self.table = table
        self.columns = list(columns)
        self.key = list(key)
        self.create_table = create_table
        self.statement_timeout_ms = statement_timeout_ms
        self.use_copy = use_copy
        self.retries = retries
        self._conn: psycopg.Connection[Any] | None = None
        self._write_order, self._row = row_plan(self.columns)
        names = [c.name for c in self.columns]
        missing = [k for k in self.key if k not in names]
        if missing:
            raise ValueError(f"sink {sink}: key column(s) {missing} are not among the columns {names}")

    # -- connection -----------------------------------------------------------------
    def conn(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.dsn, autocommit=False, connect_timeout=10)
            with self._conn.cursor() as cur:
                cur.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(self.statement_timeout_ms)))
            self._conn.commit()
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _with_retry(self, what: str, fn: Any) -> Any:
        delay = 0.2
        for attempt in range(1, self.retries + 1):
            try:
                return fn()
            except psycopg.OperationalError as exc:
                self.close()
                if attempt == self.retries:
                    raise
                log.warning("sink %s: %s failed (%s); retry %d in %.1fs", self.sink, what, exc, attempt, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    # -- schema -----------------------------------------------------------------------
    def ensure_schema(self) -> None:
        """Create the tables (``create_table``) and check the target table's columns.

        Safe when several sink workers start at once: ``CREATE TABLE IF NOT EXISTS`` is
        not (two creators can both pass the check), so the DDL runs under a transaction
        advisory lock that serializes it across every ledgerflow sink on the database."""

        def run() -> None:
            c = self.conn()
            with c.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
                cur.execute(OFFSETS_DDL)
                cur.execute(REJECTS_DDL)
                if self.create_table:
                    cols = [
                        sql.SQL("{} {}").format(sql.Identifier(col.name), sql.SQL(col.type)) for col in self.columns
                    ]
                    pk = sql.SQL(", ").join(sql.Identifier(k) for k in self.key)
                    cur.execute(
                        sql.SQL("CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({}))").format(
                            sql.Identifier(self.table), sql.SQL(", ").join(cols), pk
                        )
                    )
                cur.execute(
                    "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s",
                    (self.table,),
                )
                actual = dict(cur.fetchall())
            c.commit()
            if not actual:
                raise SchemaMismatch(f"table {self.table!r} does not exist (set create_table: true to create it)")
            for col in self.columns:
                have = actual.get(col.name)
                if have is None:
                    raise SchemaMismatch(f"table {self.table!r} has no column {col.name!r} (spec type {col.type})")
                if _base_type(col.type) != have:
                    raise SchemaMismatch(f"table {self.table!r} column {col.name!r} is {have}, spec says {col.type}")

        self._with_retry("schema check", run)

    def stored_offsets(self, topic: str, partitions: Sequence[int]) -> dict[int, int]:
        """The authoritative next offset per partition (absent: never written)."""

        def run() -> dict[int, int]:
            c = self.conn()
            with c.cursor() as cur:
                cur.execute(
                    "SELECT partition, next_offset FROM ledgerflow_offsets "
                    "WHERE sink = %s AND topic = %s AND partition = ANY(%s)",
                    (self.sink, topic, list(partitions)),
                )
                out = {int(p): int(o) for p, o in cur.fetchall()}
            c.commit()
            return out

        result: dict[int, int] = self._with_retry("read offsets", run)
        return result

    def rejects(self, topic: str, partition: int, start: int, end: int) -> dict[int, str]:
        """Rejected offsets in ``[start, end)`` with the database error (for reconciliation)."""

        def run() -> dict[int, str]:
            c = self.conn()
            with c.cursor() as cur:
                cur.execute(
                    'SELECT "offset", error FROM ledgerflow_rejects WHERE sink = %s AND topic = %s '
                    'AND partition = %s AND "offset" >= %s AND "offset" < %s',
                    (self.sink, topic, partition, start, end),
                )
                out = {int(o): str(e) for o, e in cur.fetchall()}
            c.commit()
            return out

        result: dict[int, str] = self._with_retry("read rejects", run)
        return result

    # -- the part transaction ----------------------------------------------------------------
    def write_part(
        self,
        topic: str,
        partition: int,
        expected: int | None,
        next_offset: int,
        tokens: Sequence[Token],
        offsets: Sequence[int],
    ) -> PgPartResult:
        """Upsert ``tokens`` and move the partition's offset ``expected -> next_offset``
        in one DB transaction. Raises ``CasFailed`` (rolled back) if the stored offset
        is not ``expected``."""
        row = self._row
        rows = [row(t) for t in tokens]

        def attempt() -> PgPartResult:
            c = self.conn()
            try:
                with c.cursor() as cur:
                    # rows only: the sink's own queries pass lists as arrays
                    cur.adapters.register_dumper(dict, JsonTextDumper)
                    cur.adapters.register_dumper(list, JsonTextDumper)
                    self._cas(cur, topic, partition, expected, next_offset)
                    rejects: list[tuple[int, str]] = []
                    self._upsert(cur, rows, 0, rejects, first=True)
                    for idx, err in rejects:
                        cur.execute(
                            'INSERT INTO ledgerflow_rejects (sink, topic, partition, "offset", token_id, error) '
                            "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                            (self.sink, topic, partition, offsets[idx], tokens[idx]["token_id"], err[:2000]),
                        )
                crash_point("sink.db_before_commit")
                c.commit()  # ---- THE COMMIT POINT of a transactional sink ----
                if fault_point("sink.db_commit_ack_lost"):
                    c.close()  # the server committed; the client never reads the acknowledgement
                    raise psycopg.OperationalError("connection lost during COMMIT (injected fault)")
            except BaseException:
                if not c.closed:
                    c.rollback()
                raise
            return PgPartResult(len(rows) - len(rejects), rejects)

        def run() -> PgPartResult:
            try:
                return attempt()
            except psycopg.OperationalError:
                # The connection died; if it died during COMMIT the outcome is unknown:
                # the offsets row says whether this exact transaction landed.
                self.close()
                try:
                    stored = self.stored_offsets(topic, [partition]).get(partition)
                except psycopg.OperationalError:
                    raise
                if stored == next_offset and stored != expected:
                    # It landed, rejects included: read them back, so the caller still
                    # dead-letters them in the Kafka transaction that records this part.
                    start = offsets[0] if offsets else next_offset
                    index = {off: i for i, off in enumerate(offsets)}
                    stored_rejects = self.rejects(topic, partition, start, next_offset)
                    rejects = [(index[o], err) for o, err in sorted(stored_rejects.items()) if o in index]
                    log.warning(
                        "sink %s: commit of %s/%d landed before the connection dropped (%d reject(s) read back)",
                        self.sink,
                        topic,
                        partition,
                        len(rejects),
                    )
                    return PgPartResult(len(rows) - len(rejects), rejects)
                raise

        result: PgPartResult = self._with_retry(f"write part {topic}/{partition}", run)
        return result

    def _cas(self, cur: Any, topic: str, partition: int, expected: int | None, new: int) -> None:
        cur.execute(
            "SELECT next_offset FROM ledgerflow_offsets WHERE sink = %s AND topic = %s AND partition = %s FOR UPDATE",
            (self.sink, topic, partition),
        )
        row = cur.fetchone()
        current = None if row is None else int(row[0])
        if current != expected:
            raise CasFailed(
                f"sink {self.sink} {topic}/{partition}: stored offset is {current}, this worker expected "
                f"{expected}; another owner advanced it"
            )
        if row is None:
            cur.execute(
                "INSERT INTO ledgerflow_offsets (sink, topic, partition, next_offset) VALUES (%s, %s, %s, %s)",
                (self.sink, topic, partition, new),
            )
        else:
            cur.execute(
                "UPDATE ledgerflow_offsets SET next_offset = %s, updated_at = now() "
                "WHERE sink = %s AND topic = %s AND partition = %s",
                (new, self.sink, topic, partition),
            )

    def _upsert(
        self, cur: Any, rows: list[tuple[Any, ...]], base: int, rejects: list[tuple[int, str]], first: bool
    ) -> None:
        """Write ``rows``; on a database error bisect under savepoints down to single rows."""
        if not rows:
            return
        cur.execute("SAVEPOINT lf_chunk")
        try:
            self._write_rows(cur, rows)
            cur.execute("RELEASE SAVEPOINT lf_chunk")
            if first:
                crash_point("sink.db_mid_batch")
            return
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            cur.execute("ROLLBACK TO SAVEPOINT lf_chunk")
            cur.execute("RELEASE SAVEPOINT lf_chunk")
            if len(rows) == 1:
                diag = exc.diag.message_primary or str(exc)
                rejects.append((base, f"{type(exc).__name__}: {diag}"))
                return
        mid = len(rows) // 2
        self._upsert(cur, rows[:mid], base, rejects, first=False)
        self._upsert(cur, rows[mid:], base + mid, rejects, first=False)

    def _write_rows(self, cur: Any, rows: list[tuple[Any, ...]]) -> None:
        table = sql.Identifier(self.table)
        cols = sql.SQL(", ").join(sql.Identifier(c.name) for c in self._write_order)
        key = sql.SQL(", ").join(sql.Identifier(k) for k in self.key)
        non_key = [c.name for c in self._write_order if c.name not in self.key]
        update = (
            sql.SQL("DO UPDATE SET ")
            + sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(n)) for n in non_key)
            if non_key
            else sql.SQL("DO NOTHING")
        )
        if self.use_copy:
            # After a successful compare-and-set this offset range was never committed,
            # so its rows are new: COPY them straight in. Only a token id seen before
            # (re-delivered by an at-least-once upstream) needs the upsert below.
            cur.execute("SAVEPOINT lf_direct")
            try:
                with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(table, cols)) as copy:
                    for r in rows:
                        copy.write_row(r)
                cur.execute("RELEASE SAVEPOINT lf_direct")
                return
            except psycopg.errors.UniqueViolation:
                cur.execute("ROLLBACK TO SAVEPOINT lf_direct")
                cur.execute("RELEASE SAVEPOINT lf_direct")
            cur.execute(
                sql.SQL(
                    "CREATE TEMP TABLE IF NOT EXISTS lf_stage (LIKE {} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
                ).format(table)
            )
            cur.execute("TRUNCATE lf_stage")
            with cur.copy(sql.SQL("COPY lf_stage ({}) FROM STDIN").format(cols)) as copy:
                for r in rows:
                    copy.write_row(r)
            cur.execute(
                sql.SQL("INSERT INTO {} ({}) SELECT {} FROM lf_stage ON CONFLICT ({}) ").format(table, cols, cols, key)
                + update
            )
        else:
            placeholders = sql.SQL(", ").join(sql.Placeholder() * len(self.columns))
            cur.executemany(
                sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) ").format(table, cols, placeholders, key)
                + update,
                rows,
            )
