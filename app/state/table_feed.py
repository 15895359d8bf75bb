"""Feeding versioned table stores from their table topic, and the checks at start.

``TableFeed`` opens the store(s) a worker needs and catches them up with the topic
(read_committed, from each partition's applied offset to the current end). A
co-partitioned table has one store per input partition, holding table partition
``p`` for input partition ``p``; a global table has one store holding every
partition, shared by all input partitions of the worker.

Decoding: a record's key is the table key; its value is a JSON object (``None``: a
tombstone). The version's time is the record timestamp, or ``time_field`` of the
value. A record without a key, with a value that is not a JSON object, or without
an integer time becomes a DLQ record (``no_key``, ``json_decode`` /
``json_not_object``, ``no_event_time``) kept in the store until a batch commits it.

``check_table_topic`` refuses, at start, a table whose history the topic may lose:
it is the store's only changelog, so compaction or retention must keep at least
``history_retention_ms`` of it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from app.codecs.decoders import dead_letter
from app.kafka.admin import Admin
from app.kafka.clients import InRecord
from app.state.changelog import Restorer
from app.state.table import VersionedTable

log = logging.getLogger("ledgerflow.state")

_GLOBAL = -1  # the stores key of a global table's one store


class TableTopicError(ValueError):
    """The table topic cannot serve as the store's changelog (names topic and setting)."""


def check_table_topic(admin: Admin, table: str, input_topic: str, retention_ms: int, global_table: bool) -> None:
    """Co-partitioning (same partition count as the input, unless global) and a topic
    that keeps ``retention_ms`` of history (compaction lag, or retention)."""
    if not global_table:
        have, want = len(admin.partitions_of(table)), len(admin.partitions_of(input_topic))
        if have != want:
            raise TableTopicError(
                f"lookup_join table {table} has {have} partitions but the input topic {input_topic} has {want}; "
                "a co-partitioned table needs the same count (or set global: true)"
            )
    configs = admin.non_default_configs([table]).get(table, {})
    policy = configs.get("cleanup.policy", "delete")
    if "compact" in policy and int(configs.get("min.compaction.lag.ms", "0")) < retention_ms:
        raise TableTopicError(
            f"lookup_join table {table}: min.compaction.lag.ms is {configs.get('min.compaction.lag.ms', '0')}, "
            f"below history_retention_ms {retention_ms}; compaction could remove versions a restore needs "
            f"(set min.compaction.lag.ms >= {retention_ms} on the topic, or lower history_retention_ms)"
        )
    kept = int(configs.get("retention.ms", "604800000"))  # the broker's default: 7 days
    if "delete" in policy and kept != -1 and kept < retention_ms:
        raise TableTopicError(
            f"lookup_join table {table}: retention.ms {kept} is below history_retention_ms {retention_ms}; "
            "deleted segments would lose versions a restore needs"
        )


class TableFeed:
    """The versioned table stores of one transform in one worker."""

    def __init__(
        self,
        *,
        bootstrap: str,
        extra: Mapping[str, Any] | None,
        root: Path,
        topic: str,
        time_field: str | None,
        retention_ms: int,
        global_table: bool,
        pipeline: str,
        stage: str,
        chunk: int = 50_000,
    ) -> None:
        self.root = root
        self.topic = topic
        self.time_field = time_field
        self.retention = retention_ms
        self.global_table = global_table
        self.pipeline = pipeline
        self.stage = stage
        self.chunk = chunk
        self._bootstrap, self._extra = bootstrap, extra
        self._restorer: Restorer | None = None  # while any store is open
        self._admin = Admin(bootstrap, extra)
        self._stores: dict[int, VersionedTable] = {}
        self._users: dict[int, set[int]] = {}  # store -> input partitions using it

    def open(self, partition: int) -> VersionedTable:
        """The store serving input ``partition``, opened and caught up."""
        slot = _GLOBAL if self.global_table else partition
        store = self._stores.get(slot)
        if store is None:
            parts = self._admin.partitions_of(self.topic) if self.global_table else [partition]
            name = "global" if self.global_table else f"p{partition}"
            store = VersionedTable(self.root / name, self.topic, parts, self.retention)
            self._stores[slot] = store
            self.catch_up(store, quiet=False)
        self._users.setdefault(slot, set()).add(partition)
        return store

    def close(self, partition: int) -> None:
        slot = _GLOBAL if self.global_table else partition
        users = self._users.get(slot)
        if users is None:
            return
        users.discard(partition)
        if not users:
            del self._users[slot]
            self._stores.pop(slot).close()
        if not self._stores and self._restorer is not None:  # nothing left to feed: release its consumer
            self._restorer.close()
            self._restorer = None

    def _reader(self) -> Restorer:
        if self._restorer is None:
            self._restorer = Restorer(self._bootstrap, self._extra)
        return self._restorer

    def catch_up(self, store: VersionedTable, *, quiet: bool = True) -> int:
        """Read every partition of ``store`` from its applied offset to the topic's end."""
        reader = self._reader()
        ends = reader.end_offsets(self.topic, store.partitions)
        if any(store.offsets[p] > end for p, end in ends.items()):
            log.warning(
                "table store %s is ahead of %s (%s > %s): rebuilding it", store.path, self.topic, store.offsets, ends
            )
            store.wipe()
        n = 0
        for p, end in ends.items():
            if store.offsets[p] >= end:
                continue

            def apply(recs: list[InRecord], next_offset: int, p: int = p) -> None:
                self._apply(store, p, recs, next_offset)

            # records gone to retention are older than the history kept (check_table_topic)
            n += reader.read(self.topic, p, store.offsets[p], end, apply, chunk=self.chunk, quiet=quiet, allow_gap=True)
        return n

    def _apply(self, store: VersionedTable, partition: int, recs: list[InRecord], next_offset: int) -> None:
        versions: list[tuple[bytes, int, bytes | None]] = []
        dead: list[tuple[int, bytes]] = []
        for rec in recs:
            try:
                versions.append(decode_version(rec, self.time_field))
            except TableRecordRefused as exc:
                record = dead_letter(self.pipeline, self.stage, rec, exc.reason, str(exc))
                dead.append((rec.offset, exc.reason.encode() + b"\x00" + record))
        store.apply(partition, versions, dead, next_offset)


class TableRecordRefused(Exception):
    """A table record that cannot be a version; ``reason`` is its DLQ reason class."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def decode_version(rec: InRecord, time_field: str | None) -> tuple[bytes, int, bytes | None]:
    """A table record as ``(key, version time, JSON value or None for a tombstone)``;
    ``TableRecordRefused`` (with the DLQ reason) when it cannot be one."""
    where = f"table {rec.topic}/{rec.partition}@{rec.offset}"
    if rec.key is None:
        raise TableRecordRefused("no_key", f"{where}: table record has no key")
    if rec.value is None:
        if rec.timestamp_ms is None:
            raise TableRecordRefused("no_event_time", f"{where}: tombstone without a timestamp")
        return rec.key, rec.timestamp_ms, None
    try:
        obj = orjson.loads(rec.value)
    except orjson.JSONDecodeError as exc:
        raise TableRecordRefused("json_decode", f"{where}: invalid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise TableRecordRefused("json_not_object", f"{where}: JSON value is a {type(obj).__name__}, not an object")
    t: Any = rec.timestamp_ms if time_field is None else obj.get(time_field)
    if isinstance(t, bool) or not isinstance(t, int):
        src = "the record timestamp" if time_field is None else f"field {time_field!r}"
        raise TableRecordRefused("no_event_time", f"{where}: no integer version time in {src} (got {t!r})")
    return rec.key, t, orjson.dumps(obj)
