"""One local state store: a RocksDB database (rocksdict) per (transform, input partition).

The changelog topic is the truth; the local database is a cache of it. Guarantees:

* Changes made while a batch is processed live only in memory (``pending``) until
  the Kafka transaction carrying their changelog records has committed; only then
  does ``apply_committed`` write them, together with the changelog offset they
  reflect, in ONE atomic RocksDB write batch. A crash at any point therefore leaves
  the database at some committed changelog offset, never between two.
* ``offset`` is the next changelog offset the database has not applied; restore
  continues from there (``app.state.changelog``).
* Per-row changes are staged separately (``begin_row`` / ``end_row``), so a row whose
  processing raises leaves no trace in the batch.

Keys and values are bytes. Values are JSON documents (readable in the changelog
with stock tools); a ``None`` value is a deletion (a tombstone in the changelog).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from rocksdict import Options, Rdict, WriteBatch

log = logging.getLogger("ledgerflow.state")

META_OFFSET = b"\x00lf.changelog_offset"
META_TOPIC = b"\x00lf.changelog_topic"


class StoreCorrupt(RuntimeError):
    """The local database cannot be opened or its metadata is inconsistent."""


class PartitionStore:
    """RocksDB-backed store for one partition, with a batch overlay and a row overlay."""

    def __init__(self, path: Path, changelog_topic: str, partition: int) -> None:
        self.path = path
        self.changelog_topic = changelog_topic
        self.partition = partition
        self.pending: dict[bytes, bytes | None] = {}
        self._row: dict[bytes, bytes | None] = {}
        self._db = self._open()
        self.offset = self._read_offset()

    # -- lifecycle ---------------------------------------------------------------
    def _open(self) -> Rdict:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = Rdict(str(self.path), Options(raw_mode=True))
        except Exception as exc:  # rocksdict raises plain Exception on corruption
            raise StoreCorrupt(f"state store {self.path}: cannot open: {exc}") from exc
        topic = db.get(META_TOPIC)
        if topic is not None and topic != self.changelog_topic.encode():
            db.close()
            raise StoreCorrupt(f"state store {self.path} belongs to changelog {topic.decode()!r}")
        if topic is None:
            db.put(META_TOPIC, self.changelog_topic.encode())
        return db

    def _read_offset(self) -> int:
        raw = self._db.get(META_OFFSET)
        if raw is None:
            return 0
        try:
            return int(raw)
        except ValueError as exc:
            raise StoreCorrupt(f"state store {self.path}: bad changelog offset {raw!r}") from exc

    def close(self) -> None:
        self.pending.clear()
        self._row.clear()
        self._db.close()

    def wipe(self) -> None:
        """Delete the local database and start empty (the changelog rebuilds it)."""
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)
        self._db = self._open()
        self.offset = 0

    @classmethod
    def open_or_rebuild(cls, path: Path, changelog_topic: str, partition: int) -> PartitionStore:
        """Open the store; a corrupt or foreign one is deleted and recreated empty."""
        try:
            return cls(path, changelog_topic, partition)
        except StoreCorrupt as exc:
            log.warning("%s; deleting it and rebuilding from the changelog", exc)
            shutil.rmtree(path, ignore_errors=True)
            return cls(path, changelog_topic, partition)

    # -- reads and writes during a batch ------------------------------------------
    def get(self, key: bytes) -> bytes | None:
        row = self._row
        if key in row:
            return row[key]
        pending = self.pending
        if key in pending:
            return pending[key]
        value: bytes | None = self._db.get(key)
        return value

    def put(self, key: bytes, value: bytes) -> None:
        self._row[key] = value

    def delete(self, key: bytes) -> None:
        self._row[key] = None

    def begin_row(self) -> None:
        self._row.clear()

    def end_row(self, ok: bool) -> None:
        """Keep (``ok``) or drop the changes of the row just processed."""
        if ok and self._row:
            self.pending.update(self._row)
        self._row.clear()

    def discard_pending(self) -> None:
        """The batch was aborted: forget its changes (the database never saw them)."""
        self.pending.clear()
        self._row.clear()

    def take_changes(self) -> dict[bytes, bytes | None]:
        """The batch's changes (key -> value or ``None`` for a deletion), for the changelog."""
        self.end_row(True)
        return self.pending

    def apply_committed(self, next_offset: int) -> None:
        """Write the committed batch and the changelog offset it reflects, atomically."""
        self._write(self.pending.items(), next_offset)
        self.pending.clear()

    # -- restore -----------------------------------------------------------------
    def apply_restored(self, records: list[tuple[bytes, bytes | None]], next_offset: int) -> None:
        """Apply changelog records read during restore (no overlay involved)."""
        self._write(records, next_offset)

    def _write(self, changes: Iterable[tuple[bytes, bytes | None]], next_offset: int) -> None:
        wb = WriteBatch(raw_mode=True)
        for key, value in changes:
            if value is None:
                wb.delete(key)
            else:
                wb.put(key, value)
        wb.put(META_OFFSET, str(next_offset).encode())
        self._db.write(wb)
        self.offset = next_offset

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Committed entries whose key starts with ``prefix`` (overlay not included)."""
        for key, value in self._db.items(from_key=prefix):
            if not isinstance(key, bytes) or not key.startswith(prefix):
                return
            yield key, value

    def scan_live(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Entries under ``prefix`` as the batch sees them: committed, then the batch's
        changes over them (the current row's excluded), in key order."""
        live = dict(self.scan(prefix))
        for key, value in self.pending.items():
            if key.startswith(prefix):
                if value is None:
                    live.pop(key, None)
                else:
                    live[key] = value
        yield from sorted(live.items())
