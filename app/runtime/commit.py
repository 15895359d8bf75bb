"""The commit seam: the one place that decides the order of durability steps.

Every runner (source, transform, sink) ends a batch by handing a ``Batch`` to
``CommitSeam.commit``. The order, for every runner:

0. transactional sinks only (PostgreSQL): the sink's own transaction commits
   rows + its stored offsets: THE commit point for them
                                                            -> ``sink.db_after_commit_before_kafka``
1. two-phase sinks: the part is already prepared (staged + fsynced) by the caller:
   that is the sink's acknowledgement                      -> ``sink.after_prepare``
2. begin the Kafka transaction
3. produce output records, state changelog records (stateful transforms), DLQ
   records and journal events (checkpoints, ``part_committed``, ``part_finalized``
   left over from earlier batches)
        -> ``<stage>.after_produce``, ``state.after_changelog_before_commit``, ``journal.after_write``
4. ``send_offsets_to_transaction`` with *fresh* group metadata (KIP-447 fencing)
                                                            -> ``<stage>.before_commit``
5. commit the transaction: THE COMMIT POINT                 -> ``<stage>.after_commit``
6. stateful transforms: the local state stores apply the committed changes and the
   changelog offset they reach                  -> ``state.after_commit_before_local_write``
7. metrics hooks move (row counters never move before 5: invariant I4)
8. finalize parts (atomic rename, fsync dir)                -> ``sink.after_finalize``;
   their ``part_finalized`` events ride in the next transaction.

Failures: a retriable error retries the same call; an abortable one aborts the
transaction, discards prepared parts (they never become visible) and raises
``BatchAborted`` so the runner rewinds its input to the last committed position; a
fatal or fenced one raises ``WorkerFenced``: the worker must stop, because another
instance owns its work now (invariant I5).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from app.codecs.tokens import SCHEMA_HEADER
from app.faults import crash_point
from app.journal.events import JournalEvent, PartInfo, encode_event, part_key
from app.journal.writer import Correlation, part_event
from app.kafka.clients import BatchConsumer, Headers, TxnProducer
from app.kafka.errors import (
    AbortableKafkaError,
    FatalKafkaError,
    LedgerKafkaError,
    RetriableKafkaError,
)
from app.observability.hooks import Hooks, NullHooks
from app.sinks.base import PartWriter, PreparedPart

log = logging.getLogger("ledgerflow.seam")
T = TypeVar("T")

MAX_RETRIES = 5


class BatchAborted(Exception):
    """The Kafka transaction was aborted; nothing of it is visible. Rewind and go on.

    ``external_committed`` says the sink's own commit (step 0) had already happened:
    the sink's stored offsets are then ahead of Kafka and the runner reconciles."""

    def __init__(self, message: str, external_committed: bool = False) -> None:
        super().__init__(message)
        self.external_committed = external_committed


class WorkerFenced(Exception):
    """Another instance owns this work now (or the producer is unusable): stop."""


@dataclass(slots=True)
class TopicRecords:
    """Records for one output topic, already encoded (column form: cheap to build).

    ``partition`` -1 lets the partitioner choose by key; ``on_last`` receives the
    offset of the last record once delivered (changelogs track their offsets so)."""

    topic: str
    values: Sequence[bytes | None]
    keys: Sequence[bytes | None]
    headers: Headers | None = None
    partition: int = -1
    on_last: Callable[[int], None] | None = None


@dataclass(slots=True)
class Batch:
    """Everything one transaction commits. Counts feed metrics after the commit point."""

    outputs: list[TopicRecords] = field(default_factory=list)
    dlq: list[bytes] = field(default_factory=list)
    journal: list[JournalEvent] = field(default_factory=list)  # checkpoints, part events
    offsets: list[tuple[str, int, int]] = field(default_factory=list)  # (topic, partition, next offset)
    parts: list[PreparedPart] = field(default_factory=list)
    changelog: list[TopicRecords] = field(default_factory=list)  # state changes (stateful transforms)
    # stateful transforms: apply the committed changes to the local stores (after the commit point)
    after_commit: Callable[[], None] | None = None
    rows_in: int = 0
    rows_written: int = 0  # rows a transactional sink committed (metrics only)
    dlq_reasons: dict[str, int] = field(default_factory=dict)  # reason class -> rows (metrics)
    # transactional sinks: the sink's own commit (the commit point); returns DLQ records
    external: Callable[[], list[bytes]] | None = None

    @property
    def empty(self) -> bool:
        return not (
            self.outputs or self.changelog or self.dlq or self.journal or self.offsets or self.parts or self.external
        )


class CommitSeam:
    """Owns one transactional producer and the order of every durability step."""

    def __init__(
        self,
        *,
        stage: str,
        name: str,
        producer: TxnProducer,
        corr: Correlation,
        journal_topic: str,
        dlq_topic: str,
        consumer: BatchConsumer | None = None,
        writer: PartWriter | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        self.stage = stage
        self.name = name
        self.producer = producer
        self.corr = corr
        self.journal_topic = journal_topic
        self.dlq_topic = dlq_topic
        self.consumer = consumer
        self.writer = writer
        self.hooks: Hooks = hooks or NullHooks()
        self._pending_finalized: list[JournalEvent] = []
        self._dlq_header: Headers | None = None

    def init(self) -> None:
        """Register the transactional id (fences older instances, aborts their open txn)."""
        self._call("init", self.producer.init)

    def queue_finalized(self, events: list[JournalEvent]) -> None:
        """``part_finalized`` events to write in the next transaction (recovery uses this)."""
        self._pending_finalized.extend(events)

    @property
    def has_pending(self) -> bool:
        return bool(self._pending_finalized)

    # -- the protocol ------------------------------------------------------------
    def commit(self, batch: Batch) -> None:
        """Commit ``batch`` atomically, then finalize its parts. See the module docstring."""
        if batch.empty and not self._pending_finalized:
            return
        stage = self.stage
        if batch.parts:
            crash_point("sink.after_prepare")
        started = time.perf_counter()
        dlq = batch.dlq
        if batch.external is not None:
            # transactional sink (PostgreSQL): ITS commit is the commit point; the Kafka
            # transaction below only records it (journal + offsets + DLQ).
            dlq = [*dlq, *batch.external()]
            crash_point("sink.db_after_commit_before_kafka")
        journal = list(self._pending_finalized)
        journal.extend(batch.journal)
        part_events = [self._part_event("part_committed", p) for p in batch.parts]
        journal.extend(part_events)
        self.hooks.on_txn_open(self.stage, self.name, True)
        try:
            self._call("begin", self.producer.begin)
            for out in batch.outputs:
                self.producer.produce_batch(out.topic, out.values, out.keys, out.headers)
            crash_point(f"{stage}.after_produce")
            for cl in batch.changelog:
                self.producer.produce_batch(cl.topic, cl.values, cl.keys, partition=cl.partition, on_last=cl.on_last)
            if batch.changelog:
                crash_point("state.after_changelog_before_commit")
            for value in dlq:
                self.producer.produce(self.dlq_topic, value, None, self._dlq_headers())
            for ev in journal:
                self.producer.produce(self.journal_topic, encode_event(ev), ev.key.encode())
            crash_point("journal.after_write")
            if batch.offsets:
                if self.consumer is None:
                    raise RuntimeError("offsets in a batch of a runner without a consumer")
                consumer = self.consumer
                self._call("send_offsets", lambda: self.producer.send_offsets(batch.offsets, consumer))
            crash_point(f"{stage}.before_commit")
            self._call("commit", self.producer.commit)  # ---- THE COMMIT POINT ----
        except (AbortableKafkaError, RetriableKafkaError) as exc:
            self._abort(batch, exc)
            raise BatchAborted(str(exc), external_committed=batch.external is not None) from exc
        finally:
            self.hooks.on_txn_open(self.stage, self.name, False)
        crash_point(f"{stage}.after_commit")
        self._pending_finalized.clear()
        if batch.after_commit is not None:
            self.producer.serve_callbacks()  # delivery reports carry the changelog offsets
            crash_point("state.after_commit_before_local_write")
            batch.after_commit()
        self.hooks.on_commit(self.stage, self.name, batch, time.perf_counter() - started)
        if batch.parts:
            crash_point("sink.after_commit_before_finalize")
            self._finalize(batch.parts)

    def _finalize(self, parts: list[PreparedPart]) -> None:
        assert self.writer is not None
        for part in parts:
            self.writer.finalize(part)
            crash_point("sink.after_finalize")
            self._pending_finalized.append(self._part_event("part_finalized", part))
            self.hooks.on_part_finalized(self.stage, self.name, part)

    def _part_event(self, kind: str, part: PreparedPart) -> JournalEvent:
        info = PartInfo(
            sink=part.sink,
            topic=part.topic,
            partition=part.partition,
            first_offset=part.first_offset,
            last_offset=part.last_offset,
            rows=part.rows,
            bytes=part.bytes,
            checksum=part.checksum,
            staging_path=part.staging_path,
            final_path=part.final_path,
        )
        key = part_key(part.sink, part.topic, part.partition, part.first_offset)
        return part_event(self.corr, kind, key, info)

    def _dlq_headers(self) -> Headers | None:
        if self._dlq_header is None:
            from app.codecs.dlq import DLQ_FINGERPRINT

            self._dlq_header = [(SCHEMA_HEADER, DLQ_FINGERPRINT)]
        return self._dlq_header

    def _abort(self, batch: Batch, cause: LedgerKafkaError) -> None:
        log.warning("%s %s: aborting transaction after %s", self.stage, self.name, cause)
        try:
            self._call("abort", self.producer.abort)
        finally:
            if self.writer is not None:
                for part in batch.parts:
                    self.writer.discard(part)
            self.hooks.on_abort(self.stage, self.name, str(cause.name))

    def _call(self, op: str, fn: Callable[[], T]) -> T:
        """Run one producer call: retry retriable errors, translate fatal ones."""
        for attempt in range(1, MAX_RETRIES + 1):
            try:
                return fn()
            except RetriableKafkaError as exc:
                if attempt == MAX_RETRIES:
                    raise
                log.warning("%s %s: %s failed (%s), retry %d", self.stage, self.name, op, exc, attempt)
                time.sleep(min(0.1 * 2**attempt, 2.0))
            except FatalKafkaError as exc:
                self.hooks.on_fenced(self.stage, self.name)
                why = "fenced by a newer instance" if exc.fenced else "fatal producer error"
                raise WorkerFenced(
                    f"{self.stage} {self.name} (transactional.id {self.producer.transactional_id}): "
                    f"{why} during {op}: {exc}"
                ) from exc
        raise AssertionError("unreachable")
