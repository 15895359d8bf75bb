"""Readers that never join a consumer group: the journal to its end, one offset
range, record counts. Each opens a short-lived read_committed consumer with a
throwaway group id and closes it before returning, so they can run beside the
stage consumers (recovery, reconciliation, ``inspect``) without touching group state.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from app.kafka.admin import Admin
from app.kafka.clients import THROWAWAY_GROUP_PREFIX, TP, InRecord, principal_of
from app.kafka.errors import ACCESS_CODES, Identity, classify

log = logging.getLogger("ledgerflow.kafka")


def _consumer(bootstrap: str, kind: str, extra: Mapping[str, Any] | None, *, eof: bool) -> Consumer:
    """A read_committed consumer under a throwaway group id that never joins or commits."""
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "group.id": f"{THROWAWAY_GROUP_PREFIX}{kind}-{uuid.uuid4().hex}",
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "logger": log,
    }
    if eof:
        conf["enable.partition.eof"] = True
    conf.update(extra or {})
    return Consumer(conf)


def _record(m: Any) -> InRecord:
    ts_type, ts = m.timestamp()
    return InRecord(m.topic(), m.partition(), m.offset(), m.key(), m.value(), m.headers(), ts if ts_type else None)


def read_topic_to_end(
    bootstrap: str,
    topic: str,
    *,
    extra: Mapping[str, Any] | None = None,
    timeout: float = 60.0,
) -> list[InRecord]:
    """Read every committed record of ``topic`` (all partitions) up to the high
    watermark observed at the start, without joining a consumer group.

    Reading to the *high* watermark (not the last stable offset) means any
    transaction already pending when the call starts is resolved before it returns,
    so a committed transaction is never missed because its markers were in flight.
    """
    c = _consumer(bootstrap, "reader", extra, eof=True)
    try:
        meta = c.list_topics(topic, timeout=10)
        tmeta = meta.topics.get(topic)
        who = Identity(principal_of(extra or {}), group=f"{THROWAWAY_GROUP_PREFIX}* (the readers')", topics=(topic,))
        if tmeta is not None and tmeta.error is not None and tmeta.error.code() in ACCESS_CODES:
            raise classify("describe", KafkaException(tmeta.error), who)  # refused, not absent
        if tmeta is None or tmeta.error is not None:
            raise KeyError(f"topic {topic!r} does not exist")
        highs = Admin(bootstrap, extra).end_offsets([(topic, p) for p in tmeta.partitions])
        targets = {p: high for (_t, p), high in highs.items() if high > 0}
        if not targets:
            return []
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in targets])
        out: list[InRecord] = []
        done: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(done) < len(targets):
            if time.monotonic() > deadline:
                missing = {p: targets[p] for p in targets if p not in done}
                raise TimeoutError(f"reading {topic} to its end timed out (open transaction?); waiting for {missing}")
            batch: list[Any] = c.consume(10_000, 0.5)
            for m in batch:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        # EOF at the LSO; done only once the position passed the target
                        pos: Any = c.position([TopicPartition(topic, m.partition())])[0].offset
                        if pos >= targets[m.partition()]:
                            done.add(m.partition())
                        continue
                    raise classify("consume", KafkaException(err), who)
                out.append(_record(m))
                if m.offset() + 1 >= targets[m.partition()]:
                    done.add(m.partition())
            # control records at the tail never surface; position tells the truth
            positions: list[Any] = c.position([TopicPartition(topic, p) for p in targets if p not in done])
            for tp in positions:
                if tp.offset >= targets[tp.partition]:
                    done.add(tp.partition)
        return out
    finally:
        c.close()


def read_range(
    bootstrap: str,
    topic: str,
    partition: int,
    start: int,
    end: int,
    *,
    extra: Mapping[str, Any] | None = None,
    timeout: float = 60.0,
) -> list[InRecord]:
    """Committed records of one partition with offsets in ``[start, end)``."""
    c = _consumer(bootstrap, "range", extra, eof=False)
    out: list[InRecord] = []
    try:
        c.assign([TopicPartition(topic, partition, start)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch: list[Any] = c.consume(10_000, 0.3)
            for m in batch:
                if m.error() is None and m.offset() < end:
                    out.append(_record(m))
            pos: Any = c.position([TopicPartition(topic, partition)])[0].offset
            if pos >= end:
                return out
        raise TimeoutError(f"reading {topic}/{partition} [{start}, {end}) timed out")
    finally:
        c.close()


def count_records(
    bootstrap: str,
    ranges: Mapping[TP, tuple[int, int]],
    *,
    extra: Mapping[str, Any] | None = None,
    timeout: float = 30.0,
) -> dict[TP, int]:
    """Committed data records in ``[start, end)`` per partition (transaction markers and
    aborted records are not counted): the true lag behind a group offset."""
    todo = {tp: r for tp, r in ranges.items() if r[1] > r[0]}
    counts = dict.fromkeys(ranges, 0)
    if not todo:
        return counts
    c = _consumer(bootstrap, "count", extra, eof=False)
    try:
        c.assign([TopicPartition(t, p, start) for (t, p), (start, _end) in todo.items()])
        deadline = time.monotonic() + timeout
        while todo and time.monotonic() < deadline:
            batch: list[Any] = c.consume(10_000, 0.3)
            for m in batch:
                if m.error() is None:
                    tp = (m.topic(), m.partition())
                    if tp in todo and m.offset() < todo[tp][1]:
                        counts[tp] += 1
            positions: list[Any] = c.position([TopicPartition(t, p) for t, p in todo])
            for pos in positions:
                tp = (pos.topic, pos.partition)
                if pos.offset >= todo[tp][1]:
                    del todo[tp]
        return counts
    finally:
        c.close()
