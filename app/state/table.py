"""A versioned table store: a compacted table topic materialised in RocksDB (rocksdict).

The table topic is its own changelog (nothing is copied anywhere else): the store
records, per table partition it holds, the next topic offset it has applied, and is
caught up by reading the topic from there (``app.state.changelog.Restorer.read``).
A store holds one partition (a co-partitioned table) or all of them (a global one).

Versions: every table record is kept as the version of its key from its timestamp
on; a tombstone is a version saying "absent". ``lookup(key, t)`` answers with the
version in force at event time ``t``, so the answer for a row never depends on
table records with a later timestamp, whenever they arrived. History older than
``retention_ms`` behind the table's time (the largest version timestamp applied) is
purged, except each key's last version before that cutoff (still in force after it);
``lookup`` refuses a time behind the cutoff (``HistoryExpired``) instead of answering
from purged history.

Each chunk of records is written with the offset it reaches in ONE RocksDB write
batch, so a crash leaves the store at some applied offset, never between two.
Table records that cannot be decoded are kept (``x|<partition>|<offset>`` -> a DLQ
record) until the transform commits them to the DLQ with a batch.
"""

from __future__ import annotations

import logging
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

from rocksdict import Options, Rdict, WriteBatch

log = logging.getLogger("ledgerflow.state")

_VERSION = b"v|"
_DEAD = b"x|"
_META_OFFSET = b"\x00lf.table_offset|"
_META_TIME = b"\x00lf.table_time"
_META_TOPIC = b"\x00lf.table_topic"
_ABSENT = b""  # a tombstone's version value
_TS = struct.Struct(">Q")
_NO_TIME = -(2**62)


class HistoryExpired(LookupError):
    """A lookup at a time older than the history the store keeps."""


def _ts(t: int) -> bytes:
    return _TS.pack(t + (1 << 63))  # order-preserving for negative times too


def _vkey(key: bytes, t: int) -> bytes:
    return _VERSION + key + b"\x00" + _ts(t)


class VersionedTable:
    """Versions of a table topic's keys, for the partitions ``partitions``."""

    def __init__(self, path: Path, topic: str, partitions: list[int], retention_ms: int) -> None:
        self.path = path
        self.topic = topic
        self.partitions = partitions
        self.retention = retention_ms
        self._db = self._open()
        self.offsets = {p: self._int(_META_OFFSET + str(p).encode(), 0) for p in partitions}
        self.time = self._int(_META_TIME, _NO_TIME)
        self._purged_at = self.time

    def _open(self) -> Rdict:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = Rdict(str(self.path), Options(raw_mode=True))
        owner = db.get(_META_TOPIC)
        if owner is not None and owner != self.topic.encode():
            db.close()
            log.warning("table store %s belonged to %s: rebuilding it from %s", self.path, owner.decode(), self.topic)
            shutil.rmtree(self.path, ignore_errors=True)
            db = Rdict(str(self.path), Options(raw_mode=True))
        db.put(_META_TOPIC, self.topic.encode())
        return db

    def _int(self, key: bytes, default: int) -> int:
        raw = self._db.get(key)
        return default if raw is None else int(raw)

    def close(self) -> None:
        self._db.close()

    def wipe(self) -> None:
        """Start empty (the table topic rebuilds it from offset 0)."""
        self._db.close()
        shutil.rmtree(self.path, ignore_errors=True)
        self._db = self._open()
        self.offsets = dict.fromkeys(self.partitions, 0)
        self.time = self._purged_at = _NO_TIME

    # -- applying the topic ----------------------------------------------------------
    def apply(
        self,
        partition: int,
        versions: list[tuple[bytes, int, bytes | None]],
        dead: list[tuple[int, bytes]],
        next_offset: int,
    ) -> None:
        """Write one chunk read from ``partition``: ``(key, timestamp, value or None for
        a tombstone)`` versions and ``(offset, DLQ record)`` refusals, with the offset
        the chunk reaches, atomically; then purge expired history now and then."""
        wb = WriteBatch(raw_mode=True)
        for key, t, value in versions:
            wb.put(_vkey(key, t), _ABSENT if value is None else value)
            if t > self.time:
                self.time = t
        for offset, record in dead:
            wb.put(_DEAD + b"%d|%020d" % (partition, offset), record)
        wb.put(_META_OFFSET + str(partition).encode(), str(next_offset).encode())
        wb.put(_META_TIME, str(self.time).encode())
        self._db.write(wb)
        self.offsets[partition] = next_offset
        if self.time - self._purged_at >= max(1, self.retention // 4):
            self._purge()

    def _purge(self) -> None:
        """Delete versions older than the cutoff that a later version (also before the
        cutoff) has replaced: lookups at or after the cutoff answer the same."""
        cutoff = self.cutoff
        self._purged_at = self.time
        wb = WriteBatch(raw_mode=True)
        prev_key: bytes | None = None
        prev_old: bytes | None = None  # the previous version of the same key, if before the cutoff
        n = 0
        for k, _v in self._items(_VERSION):
            key, t = k[2:-9], _TS.unpack(k[-8:])[0] - (1 << 63)
            if key != prev_key:
                prev_key, prev_old = key, None
            if t >= cutoff:
                continue
            if prev_old is not None:
                wb.delete(prev_old)
                n += 1
            prev_old = k
        if n:
            self._db.write(wb)
            log.info("table store %s: purged %d versions older than %d", self.path, n, cutoff)

    @property
    def cutoff(self) -> int:
        """The oldest event time a lookup may ask for."""
        return self.time - self.retention if self.time > _NO_TIME else _NO_TIME

    # -- reads -----------------------------------------------------------------------
    def lookup(self, key: bytes, t: int) -> bytes | None:
        """The value of ``key`` in force at time ``t`` (None: absent or deleted)."""
        if t < self.cutoff:
            raise HistoryExpired(
                f"event time {t} is older than the history table {self.topic} keeps "
                f"(table time {self.time} - history_retention_ms {self.retention})"
            )
        prefix = _VERSION + key + b"\x00"
        it = self._db.iter()
        try:
            it.seek_for_prev(prefix + _ts(t))
            if not it.valid():
                return None
            found = it.key()
            if not isinstance(found, bytes) or not found.startswith(prefix) or len(found) != len(prefix) + 8:
                return None
            value: bytes = it.value()
        finally:
            del it
        return None if value == _ABSENT else value

    def dead_letters(self) -> list[tuple[bytes, bytes]]:
        """Refused table records not yet committed to the DLQ: (store key, DLQ record)."""
        return list(self._items(_DEAD))

    def forget_dead_letters(self, keys: list[bytes]) -> None:
        """Their DLQ records committed: drop them."""
        wb = WriteBatch(raw_mode=True)
        for k in keys:
            wb.delete(k)
        self._db.write(wb)

    def _items(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self._db.items(from_key=prefix):
            if not isinstance(key, bytes) or not key.startswith(prefix):
                return
            yield key, value
