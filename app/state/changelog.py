"""Changelog topics: naming, creation, and restoring a local store from one.

A store's changelog is the compacted topic ``<pipeline>.state.<store>.changelog``
with as many partitions as the transform's input topic; partition ``p`` of the
changelog belongs to input partition ``p``. Its records are written only inside
the transform's Kafka transactions, so what a read_committed reader sees is
exactly the state of committed batches.

Restore guarantees (``restore``):

* reads read_committed from the store's own offset up to the changelog's *high*
  watermark observed at the start, so a transaction committed by the partition's
  previous owner whose markers are still in flight is waited for, never missed;
  nothing uncommitted is applied;
* a store whose offset is past the changelog's end (the topic was recreated, or the
  store belongs to another history) is wiped and rebuilt from offset 0;
* progress (records, records/s) is logged every few seconds, and applied in chunks
  that each record the offset they reach, so a crash mid-restore resumes there.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from app.faults import crash_point
from app.kafka.admin import Admin
from app.kafka.clients import THROWAWAY_GROUP_PREFIX, InRecord
from app.kafka.errors import classify
from app.state.store import PartitionStore

log = logging.getLogger("ledgerflow.state")

CHANGELOG_CONFIGS = {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"}


def changelog_topic(pipeline: str, store: str) -> str:
    return f"{pipeline}.state.{store}.changelog"


class ChangelogMismatch(RuntimeError):
    pass


R = TypeVar("R")


def _in_record(m: Any) -> InRecord:
    ts_type, ts = m.timestamp()
    return InRecord(m.topic(), m.partition(), m.offset(), m.key(), m.value(), m.headers(), ts if ts_type else None)


def _pair(m: Any) -> tuple[bytes, bytes | None]:
    """What a store restore needs of a changelog record (a restore reads millions)."""
    return m.key(), m.value()


class ChangelogGap(RuntimeError):
    """Records the store needs were deleted from its changelog (retention or
    delete-records): restoring would silently lose state, so it is refused."""


def ensure_changelog(admin: Admin, topic: str, input_topic: str, replication_factor: int | None = None) -> int:
    """Create the changelog with the input topic's partition count (idempotent); refuse a
    changelog whose partition count differs, because partition p must map to p. The
    replication factor defaults to min(3, brokers), with ``min.insync.replicas`` 2 at 3."""
    want = len(admin.partitions_of(input_topic))
    shapes = admin.describe_topics([topic])
    if topic not in shapes:
        rf = replication_factor or min(3, admin.broker_count())
        configs = {**CHANGELOG_CONFIGS, **({"min.insync.replicas": "2"} if rf >= 3 else {})}
        admin.create_topic(topic, want, rf, configs)
        return want
    have = shapes[topic][0]
    if have != want:
        raise ChangelogMismatch(
            f"changelog {topic} has {have} partitions but its input topic {input_topic} has {want}; "
            "they must match (partition p of the input owns partition p of the changelog)"
        )
    return want


class Restorer:
    """Reads changelog partitions into local stores (one reusable assign-mode consumer)."""

    def __init__(self, bootstrap: str, extra: Mapping[str, Any] | None = None) -> None:
        conf: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "group.id": f"{THROWAWAY_GROUP_PREFIX}restore-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "auto.offset.reset": "error",  # never skip silently past records that are gone
            "fetch.max.bytes": 64 << 20,
            "max.partition.fetch.bytes": 16 << 20,
            "queued.max.messages.kbytes": 262_144,
            "logger": log,
        }
        conf.update(extra or {})
        self._admin = Admin(bootstrap, extra)
        self._c = Consumer(conf)

    def close(self) -> None:
        self._c.close()

    def end_offset(self, topic: str, partition: int) -> int:
        """The partition's high watermark, from a ListOffsets request to its leader."""
        return self._admin.end_offsets([(topic, partition)])[(topic, partition)]

    def end_offsets(self, topic: str, partitions: list[int]) -> dict[int, int]:
        """High watermarks of several partitions of ``topic`` in one request."""
        ends = self._admin.end_offsets([(topic, p) for p in partitions])
        return {p: ends[(topic, p)] for p in partitions}

    def restore(
        self,
        store: PartitionStore,
        chunk: int = 50_000,
        timeout: float = 600.0,
        progress: Callable[[int, int], None] | None = None,
        quiet: bool = False,
    ) -> int:
        """Bring ``store`` up to the changelog's end; returns the records applied.
        ``quiet``: a routine catch-up (a standby copy), its summary lines at debug level.

        ``progress(applied, remaining)`` is called after every chunk written to the
        store and once at the end (``remaining == 0``): records applied since the last
        call, and changelog offsets still to read."""
        topic, partition = store.changelog_topic, store.partition
        report = progress or (lambda _applied, _remaining: None)
        end = self.end_offset(topic, partition)
        if store.offset > end:
            log.warning(
                "state store %s is ahead of changelog %s/%d (%d > %d): rebuilding it",
                store.path,
                topic,
                partition,
                store.offset,
                end,
            )
            store.wipe()
        if store.offset >= end:
            log.log(
                logging.DEBUG if quiet else logging.INFO,
                "state store %s is up to date with %s/%d (offset %d)",
                store.path,
                topic,
                partition,
                end,
            )
            report(0, 0)
            return 0
        applied = self.read(
            topic,
            partition,
            store.offset,
            end,
            lambda pairs, next_offset: store.apply_restored([kv for kv in pairs if kv[0] is not None], next_offset),
            chunk=chunk,
            convert=_pair,
            timeout=timeout,
            progress=report,
            quiet=quiet,
        )
        return applied

    def read(
        self,
        topic: str,
        partition: int,
        start: int,
        end: int,
        apply: Callable[[list[R], int], None],
        *,
        chunk: int = 50_000,
        timeout: float = 600.0,
        progress: Callable[[int, int], None] | None = None,
        quiet: bool = False,
        allow_gap: bool = False,
        convert: Callable[[Any], R] = _in_record,  # type: ignore[assignment]
    ) -> int:
        """Read ``topic/partition`` read_committed from ``start`` up to ``end``, handing
        ``apply(records, next_offset)`` chunks of at most ``chunk`` records, each with
        the offset to resume from once it is applied; returns the records read.
        ``next_offset`` moves past transaction markers and aborted records too.
        ``quiet``: the summary line at debug level (a routine catch-up, not a restore).
        A ``start`` below the partition's first offset raises ``ChangelogGap``, or with
        ``allow_gap`` reads from the first offset (logged as a warning). ``convert`` makes
        each message what ``apply`` receives (default: an ``InRecord``)."""
        report = progress or (lambda _applied, _remaining: None)
        low, _high = self._c.get_watermark_offsets(TopicPartition(topic, partition), timeout=15, cached=False)
        if start < low:
            if not allow_gap:
                raise ChangelogGap(
                    f"changelog {topic}/{partition} starts at offset {low}, but the store needs its records from "
                    f"offset {start}: records were deleted (retention or delete-records), so the state cannot be "
                    "rebuilt from it. Recreate the changelog and reprocess the input from the start to rebuild it."
                )
            log.warning("%s/%d starts at offset %d, not %d: reading from there", topic, partition, low, start)
            start = low
        started = time.monotonic()
        last_log = started
        applied = 0
        tp = TopicPartition(topic, partition, start)
        self._c.assign([tp])
        buf: list[R] = []
        next_offset = start
        try:
            while next_offset < end:
                if time.monotonic() - started > timeout:
                    raise TimeoutError(
                        f"restoring {topic}/{partition} timed out at offset {next_offset} of {end} "
                        "(an open transaction on the changelog?)"
                    )
                msgs: list[Any] = self._c.consume(min(chunk, 10_000), 0.1)
                for m in msgs:
                    err = m.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            continue
                        raise classify("consume", KafkaException(err))
                    buf.append(convert(m))
                    next_offset = m.offset() + 1
                # transaction markers and aborted records never surface: trust the position
                pos: Any = self._c.position([TopicPartition(topic, partition)])[0].offset
                if pos is not None and pos > next_offset:
                    next_offset = pos
                if len(buf) >= chunk:
                    apply(buf, next_offset)
                    applied += len(buf)
                    report(len(buf), end - next_offset)
                    buf = []
                    crash_point("state.mid_restore")
                now = time.monotonic()
                if now - last_log >= 5.0:
                    last_log = now
                    rate = applied / (now - started)
                    log.info(
                        "restoring %s/%d: %d records applied (offset %d of %d, %.0f records/s)",
                        topic,
                        partition,
                        applied,
                        next_offset,
                        end,
                        rate,
                    )
            if buf or next_offset > start:
                apply(buf, next_offset)
                applied += len(buf)
            report(len(buf), 0)
        finally:
            self._c.unassign()
        took = time.monotonic() - started
        log.log(
            logging.DEBUG if quiet else logging.INFO,
            "restored %s/%d: %d records in %.2fs (%.0f records/s), at offset %d",
            topic,
            partition,
            applied,
            took,
            applied / took if took > 0 else 0.0,
            next_offset,
        )
        return applied
