"""The commit seam: the one place that orders durability steps, for every stage.

Runners decide only *what* goes into a batch; the seam decides in which order it
becomes durable. Two entry points share one Kafka transaction path:

``commit(batch)`` — sources and transforms::

    1 begin                                                        (one transaction per batch)
    2 produce outputs                                              -> <stage>.after_produce
    3 produce state changelog records                              -> state.after_changelog_before_commit
    4 produce DLQ records, journal events (checkpoints, queued part_finalized)
                                                                   -> journal.after_write
    5 send_offsets_to_transaction with fresh group metadata (KIP-447) -> <stage>.before_commit
    6 commit: THE COMMIT POINT                                     -> <stage>.after_commit
    7 stateful transforms: local stores apply the committed changes -> state.after_commit_before_local_write
    8 hooks receive the ``CommitReport`` (counters move only now: I4)

``commit_parts(parts)`` — sinks, through the ``app.sinks.base.Sink`` protocol::

    1 sink.prepare(part) for every part (two-phase: staged + fsynced = the ack)
                                                                   -> sink.after_prepare
    2 transactional sinks: sink.commit_external(prepared): THEIR commit point
                                                                   -> sink.db_after_commit_before_kafka
    3 rows the sink refused (prepare or external commit) and rows that could not be
      decoded become DLQ records of this same transaction (I7)
    4-6 as above: part_committed + DLQ + offsets just past each part (I2);
        for two-phase sinks step 6 is THE COMMIT POINT
    7 hooks receive the ``CommitReport``
    8 two-phase sinks: sink.finalize(part) -> sink.after_finalize;
      its ``part_finalized`` rides in the next transaction (I3)

``recover_parts(...)`` runs a sink's ``RecoveryPlan`` on assignment in a fixed order:
finalize committed parts, remove unreferenced staging, then one transaction with the
``part_finalized`` events, the reconciliation DLQ records and offsets.

Failures: a retriable error retries the same call; an abortable one aborts the
transaction and raises ``BatchAborted`` (prepared parts are discarded: they never
become visible) so the runner rewinds. A producer that is fenced, timed out or in an
unknown state raises ``ProducerLost``: nothing is discarded (the outcome of a failed
commit is unknown), and the runner decides from facts whether another live instance
owns its work (``WorkerFenced``: stop) or the producer is re-created and the stage
rewinds and recovers (``app.runtime.healing``). A refused compare-and-set of a
transactional sink (``SinkFenced``) aborts the batch with ``external_committed`` set
when earlier parts already committed in the sink.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from app.codecs.tokens import SCHEMA_HEADER
from app.faults import crash_point
from app.journal.events import JournalEvent, PartInfo, encode_event
from app.journal.keys import part_key, recovery_key
from app.journal.writer import Correlation, info_event, part_event
from app.kafka.clients import BatchConsumer, Headers, TxnProducer
from app.kafka.errors import AbortableKafkaError, FatalKafkaError, LedgerKafkaError, RetriableKafkaError
from app.observability.hooks import Hooks, NullHooks
from app.runtime.batch import (
    Batch,
    BatchAborted,
    CommitReport,
    Offsets,
    ProducerLost,
    SinkInput,
    TopicRecords,
)
from app.sinks.base import Outcome, Prepared, Reconcile, RecoveryPlan, Sink, SinkFenced

log = logging.getLogger("ledgerflow.seam")
T = TypeVar("T")

MAX_RETRIES = 3  # a retriable failure: the same call again, then the producer is lost (healing)


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
        sink: Sink | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        self.stage = stage
        self.name = name
        self.producer = producer
        self.corr = corr
        self.journal_topic = journal_topic
        self.dlq_topic = dlq_topic
        self.consumer = consumer
        self.sink = sink
        self.hooks: Hooks = hooks or NullHooks()
        self._pending: list[JournalEvent] = []  # part_finalized, run events: next transaction
        self._dlq_header: Headers = [(SCHEMA_HEADER, _dlq_fingerprint())]

    def init(self) -> None:
        """Register the transactional id (fences older instances, aborts their open txn)."""
        self._call("init", self.producer.init)

    def replace_producer(self, producer: TxnProducer) -> None:
        """Use a new producer (healing); the old one is closed without waiting."""
        old, self.producer = self.producer, producer
        old.close()

    def queue(self, events: Sequence[JournalEvent]) -> None:
        """Journal events to write in the next transaction."""
        self._pending.extend(events)

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    # -- sources and transforms ----------------------------------------------------
    def commit(self, batch: Batch) -> CommitReport | None:
        """Commit ``batch`` atomically (see the module docstring); None if there was nothing."""
        empty = not (batch.outputs or batch.changelog or batch.dlq or batch.journal or batch.offsets)
        if empty and not self._pending:
            return None
        started = time.perf_counter()
        self._transact(batch.outputs, batch.changelog, batch.dlq, batch.journal, batch.offsets)
        if batch.after_commit is not None:
            self.producer.serve_callbacks()  # delivery reports carry the changelog offsets
            crash_point("state.after_commit_before_local_write")
            batch.after_commit()
        report = CommitReport(
            stage=self.stage,
            name=self.name,
            rows_in=batch.rows_in,
            rows_out=sum(len(o.values) for o in batch.outputs),
            dlq=dict(batch.dlq_reasons),
            parts=0,
            offsets=tuple(batch.offsets),
            checkpoints=sum(1 for ev in batch.journal if ev.kind == "source_checkpoint"),
            filtered=dict(batch.filtered),
            seconds=time.perf_counter() - started,
        )
        self.hooks.on_commit(report)
        return report

    # -- sinks -------------------------------------------------------------------------
    def commit_parts(self, parts: Sequence[SinkInput]) -> CommitReport:
        """Prepare, commit and finalize ``parts`` through the sink protocol, in order."""
        sink = self._sink()
        started = time.perf_counter()
        prepared: list[Prepared] = []
        try:
            for part in parts:
                prepared.append(sink.prepare(part))  # 1 the sink's acknowledgement
        except BaseException:
            self._discard(prepared)
            raise
        if prepared:  # a batch that only journals earlier parts' finalization prepares nothing
            crash_point("sink.after_prepare")
        outcomes: list[Outcome] = []
        if sink.external:
            try:
                for p in prepared:
                    outcomes.append(sink.commit_external(p))  # 2 a transactional sink's commit point
            except SinkFenced as exc:
                self.hooks.on_fenced(self.stage, self.name)
                raise BatchAborted(str(exc), external_committed=bool(outcomes)) from exc
            crash_point("sink.db_after_commit_before_kafka")
        else:
            outcomes = [sink.commit_external(p) for p in prepared]
        dlq: list[bytes] = []
        reasons: dict[str, int] = {}
        journal: list[JournalEvent] = []
        committed: list[PartInfo] = []
        for part, p, out in zip(parts, prepared, outcomes, strict=True):
            for reason, record in part.undecodable():
                dlq.append(record)
                reasons[reason] = reasons.get(reason, 0) + 1
            if p.repeated:
                log.warning(
                    "%s %s: %s/%d %d..%d: %d row(s) repeated a token id of the part (redelivered), written once",
                    self.stage,
                    self.name,
                    part.topic,
                    part.partition,
                    part.first_offset,
                    part.last_offset,
                    p.repeated,
                )
            for r in (*p.rejects, *out.rejects):  # 3 refused rows: DLQ in this transaction
                dlq.append(part.dead_letter(r.offset, r.reason, r.message))
                reasons[r.reason] = reasons.get(r.reason, 0) + 1
            if sink.two_phase and out.info.rows == 0:
                sink.discard(p)  # nothing to make visible (every row refused or undecodable)
                continue
            committed.append(out.info)
            journal.append(self._part_event("part_committed", out.info))
        offsets = [(part.topic, part.partition, part.last_offset + 1) for part in parts]
        try:
            self._transact([], [], dlq, journal, offsets)  # 4-6
        except BatchAborted as exc:
            if sink.two_phase:
                self._discard(prepared)
            raise BatchAborted(str(exc), external_committed=sink.external) from exc
        report = CommitReport(
            stage=self.stage,
            name=self.name,
            rows_in=sum(part.records_in for part in parts),
            rows_out=sum(info.rows for info in committed),
            dlq=reasons,
            parts=len(committed),
            offsets=tuple(offsets),
            checkpoints=0,
            filtered={},
            seconds=time.perf_counter() - started,
        )
        self.hooks.on_commit(report)  # 7
        if sink.two_phase and committed:
            crash_point("sink.after_commit_before_finalize")
            self._finalize(committed)  # 8
        return report

    def recover_parts(self, plan: RecoveryPlan, reconcile_dlq: Callable[[Reconcile], list[bytes]]) -> None:
        """Carry out a sink's recovery plan: finalize committed parts (idempotent), remove
        staging no committed part names, then record it all in one Kafka transaction."""
        sink = self._sink()
        for info in plan.finalize:
            renamed = sink.finalize(info)
            self.hooks.on_recovery(self.stage, self.name, "finalized" if renamed else "already_final")
            self._pending.append(self._part_event("part_finalized", info))
        dlq: list[bytes] = []
        offsets: Offsets = []
        journal: list[JournalEvent] = []
        for location in plan.discard:
            sink.remove_staging(location)
        self.hooks.on_staging_leftovers(self.stage, self.name, len(plan.discard))
        if plan.discard:
            self.hooks.on_recovery(self.stage, self.name, "staging_discarded")
            detail = {"staging_discarded": str(len(plan.discard))}
            journal.append(info_event(self.corr, "recovery", recovery_key(self.name, plan.discard_topic), detail))
        for rc in plan.reconcile:
            rejects = rc.rejects
            dlq.extend(reconcile_dlq(rc))
            offsets.append((rc.topic, rc.partition, rc.end))
            detail = {
                "action": "reconciled_from_db",
                "topic": rc.topic,
                "partition": str(rc.partition),
                "from": str(rc.start),
                "to": str(rc.end),
                "rejects": str(len(rejects)),
            }
            journal.append(info_event(self.corr, "recovery", recovery_key(self.name, rc.topic, rc.partition), detail))
            self.hooks.on_recovery(self.stage, self.name, "reconciled_from_db")
            log.warning(
                "sink %s: %s/%d: Kafka lagged the sink (%d < %d); reconciled",
                self.name,
                rc.topic,
                rc.partition,
                rc.start,
                rc.end,
            )
        if dlq or offsets or journal or self._pending:
            self._transact([], [], dlq, journal, offsets)

    def _finalize(self, parts: Sequence[PartInfo]) -> None:
        sink = self._sink()
        for info in parts:
            sink.finalize(info)
            crash_point("sink.after_finalize")
            self._pending.append(self._part_event("part_finalized", info))
            self.hooks.on_part_finalized(self.stage, self.name, info)

    def _discard(self, prepared: Sequence[Prepared]) -> None:
        sink = self._sink()
        for p in prepared:
            sink.discard(p)
        if prepared:
            log.warning(
                "%s %s: discarded %d prepared part(s) of the aborted batch", self.stage, self.name, len(prepared)
            )

    def _sink(self) -> Sink:
        if self.sink is None:
            raise RuntimeError(f"{self.stage} {self.name}: sink protocol used on a seam without a sink")
        return self.sink

    def _part_event(self, kind: str, info: PartInfo) -> JournalEvent:
        return part_event(self.corr, kind, part_key(info.sink, info.topic, info.partition, info.first_offset), info)

    # -- the one transaction path ---------------------------------------------------
    def _transact(
        self,
        outputs: Sequence[TopicRecords],
        changelog: Sequence[TopicRecords],
        dlq: Sequence[bytes],
        journal: Sequence[JournalEvent],
        offsets: Offsets,
    ) -> None:
        stage, producer = self.stage, self.producer
        events = [*self._pending, *journal]
        self.hooks.on_txn_open(stage, self.name, True)
        try:
            self._call("begin", producer.begin)
            for out in outputs:
                producer.produce_batch(out.topic, out.values, out.keys, out.headers)
            crash_point(f"{stage}.after_produce")
            for cl in changelog:
                producer.produce_batch(cl.topic, cl.values, cl.keys, partition=cl.partition, on_last=cl.on_last)
            if changelog:
                crash_point("state.after_changelog_before_commit")
            for value in dlq:
                producer.produce(self.dlq_topic, value, None, self._dlq_header)
            for ev in events:
                producer.produce(self.journal_topic, encode_event(ev), ev.key.encode())
            crash_point("journal.after_write")
            if offsets:
                consumer = self.consumer
                if consumer is None:
                    raise RuntimeError(f"{stage} {self.name}: offsets in a batch of a runner without a consumer")
                self._call("send_offsets", lambda: producer.send_offsets(offsets, consumer))
            crash_point(f"{stage}.before_commit")
            self._call("commit", producer.commit)  # ---- THE COMMIT POINT ----
        except (AbortableKafkaError, RetriableKafkaError) as exc:
            self._abort(exc)
            raise BatchAborted(str(exc)) from exc
        except FatalKafkaError as exc:  # raised by a produce call (the others go through _call)
            raise ProducerLost(
                self._lost_message(exc.operation, exc), "fenced" if exc.fenced else "fatal", exc.operation
            ) from exc
        finally:
            self.hooks.on_txn_open(stage, self.name, False)
        crash_point(f"{stage}.after_commit")
        self._pending.clear()

    def _abort(self, cause: LedgerKafkaError) -> None:
        """Abort the open transaction; raises ``ProducerLost`` when even that fails."""
        log.warning("%s %s: aborting transaction after %s", self.stage, self.name, cause)
        self.hooks.on_abort(self.stage, self.name, str(cause.name))
        try:
            self._call("abort", self.producer.abort)
        except RetriableKafkaError as exc:
            raise ProducerLost(self._lost_message("abort", exc), "timed_out", "abort") from exc

    def _lost_message(self, op: str, exc: Exception) -> str:
        tid = self.producer.transactional_id
        return f"{self.stage} {self.name} (transactional.id {tid}): producer lost during {op}: {exc}"

    def _call(self, op: str, fn: Callable[[], T]) -> T:
        """Run one producer call: retry retriable errors, report an unusable producer."""
        for attempt in range(1, MAX_RETRIES + 1):
            try:
                return fn()
            except RetriableKafkaError as exc:
                if attempt == MAX_RETRIES:
                    if op in ("commit", "init"):  # the outcome is unknown: heal, never guess
                        raise ProducerLost(self._lost_message(op, exc), "timed_out", op) from exc
                    raise
                log.warning("%s %s: %s failed (%s), retry %d", self.stage, self.name, op, exc, attempt)
                time.sleep(min(0.1 * 2**attempt, 2.0))
            except FatalKafkaError as exc:
                raise ProducerLost(self._lost_message(op, exc), "fenced" if exc.fenced else "fatal", op) from exc
        raise AssertionError("unreachable")


def _dlq_fingerprint() -> bytes:
    from app.codecs.dlq import DLQ_FINGERPRINT

    return DLQ_FINGERPRINT
