"""What every consuming runner (transform, sink) shares: the group consumer and its
assignment and revoke handling, the seam and its producer, lag and drain checks,
DLQ records for input, counters from commit reports, and healing.

A subclass fills in ``assigned`` (recover before the first row of new partitions),
``revoked`` (drop what it holds for them), ``step`` (one consume + commit round)
and ``rewind`` (after an aborted batch or a healed producer: drop the open batch and
go back to the last committed position). It never orders durability steps: that is
the seam's job.

A producer lost inside a rebalance callback is not raised through librdkafka: it is
kept, and the main loop heals and rewinds (which re-runs recovery for every
assigned partition) before the next round.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from app.codecs.decoders import Decoder, InputRecord, dead_letter
from app.journal.events import JournalEvent
from app.kafka.admin import Admin
from app.kafka.clients import TP, BatchConsumer, TxnProducer
from app.kafka.errors import FatalKafkaError
from app.observability.hooks import Hooks
from app.runtime.batch import Batch, BatchAborted, CommitReport, ProducerLost
from app.runtime.commit import CommitSeam
from app.runtime.healing import Healer, read_journal, run_started, run_stopped
from app.runtime.ownership import write_partitions
from app.runtime.stage import Progress, StageContext, group_id, transactional_id
from app.sinks.base import Sink

log = logging.getLogger("ledgerflow.runtime")


class ConsumingRunner:
    stage = ""  # "transform" | "sink"

    def __init__(
        self,
        ctx: StageContext,
        *,
        name: str,
        input_topic: str,
        decoder: Decoder,
        hooks: Hooks,
        sink: Sink | None = None,
    ) -> None:
        self.ctx = ctx
        self.name = name
        self.input_topic = input_topic
        self.decode = decoder
        self.hooks = hooks
        self.progress = Progress()
        self.dlq_stage = f"{self.stage}/{name}"
        self._lag_at = 0.0
        self._rows_at = time.monotonic()  # when input last arrived (stall detection)
        self._stall_checked_at = 0.0
        self._lost: ProducerLost | None = None
        self.consumer = self._new_consumer()
        self.seam = CommitSeam(
            stage=self.stage,
            name=name,
            producer=self._new_producer(),
            corr=ctx.corr,
            journal_topic=ctx.journal_topic,
            dlq_topic=ctx.dlq_topic,
            consumer=self.consumer,
            sink=sink,
            hooks=hooks,
        )
        self.healer = Healer(
            self.seam,
            self._new_producer,
            self.journal,
            hooks,
            ctx.stop.is_set,
            write_partitions=self._write_partitions,
            bootstrap=ctx.bootstrap,
            extra=ctx.kafka_extra,
            owned_topics=frozenset({*ctx.owned_topics, ctx.journal_topic, ctx.dlq_topic}),
        )

    def _new_consumer(self) -> BatchConsumer:
        ctx = self.ctx
        return BatchConsumer(
            ctx.bootstrap,
            group_id(ctx.corr.pipeline, self.stage, self.name),
            extra={"group.instance.id": ctx.corr.worker_id, **ctx.kafka_extra},
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
        )

    def _write_partitions(self) -> list[TP]:
        """Where this stage's transactions write: the pipeline's own topics (outputs among
        them), journal, DLQ and the group's offsets partition."""
        ctx = self.ctx
        topics = (
            {*ctx.owned_topics, ctx.journal_topic, ctx.dlq_topic}
            if self.stage == "transform"
            else {ctx.journal_topic, ctx.dlq_topic}
        )
        return write_partitions(Admin(ctx.bootstrap, ctx.kafka_extra), topics, self.consumer.group_id)

    def _new_producer(self) -> TxnProducer:
        ctx = self.ctx
        return TxnProducer(
            ctx.bootstrap,
            transactional_id(ctx.corr, self.name),
            transaction_timeout_ms=ctx.transaction_timeout_ms,
            extra=ctx.kafka_extra,
        )

    def journal(self, wait_s: float = 300.0) -> Mapping[str, JournalEvent]:
        """The journal's latest committed events (read to its end now; a read stalled
        behind a hanging transaction of this pipeline clears it and reads on)."""
        return read_journal(self.ctx, self.seam.queue, wait_s)

    # -- subclass steps ------------------------------------------------------------------
    def assigned(self, parts: list[TP]) -> dict[TP, int] | None:
        """Recover ``parts`` before their first row; may return start offsets."""
        return None

    def revoked(self, parts: list[TP]) -> None:
        """Drop whatever is held for ``parts``."""

    def step(self) -> bool:
        """One round: consume, maybe commit. True when a finite run is done."""
        raise NotImplementedError

    def rewind(self) -> None:
        """Drop the open batch; continue from the last committed position."""
        raise NotImplementedError

    def drop_all(self) -> None:
        """Forget every partition's held work and state (the consumer is being replaced)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the subclass holds (after the consumer closed)."""

    # -- rebalance -------------------------------------------------------------------------
    def _on_assign(self, parts: list[TP]) -> dict[TP, int] | None:
        self.hooks.on_rebalance(self.stage, self.name, "assigned", len(parts))
        log.info("%s %s: assigned %s", self.stage, self.name, parts)
        seek: dict[TP, int] | None = None
        if parts:
            try:
                seek = self.assigned(parts)
            except ProducerLost as exc:  # heal from the main loop, not inside librdkafka's callback
                self._lost = exc
                return None
        self.hooks.on_assigned(self.stage, self.name)  # /readyz: assigned and recovered
        return seek

    def _on_revoke(self, parts: list[TP], lost: bool) -> None:
        kind = "lost" if lost else "revoked"
        self.hooks.on_rebalance(self.stage, self.name, kind, len(parts))
        self.hooks.on_partitions_gone(self.stage, self.name, parts)
        self.revoked(parts)
        log.info("%s %s: %s %s", self.stage, self.name, kind, parts)

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> None:
        ctx = self.ctx
        self.seam.init()
        self.seam.queue([run_started(ctx.corr, self.name, self.healer.started_ms)])
        self.consumer.subscribe([self.input_topic])
        try:
            while not ctx.stop.is_set():
                try:
                    if self._lost is not None:
                        lost, self._lost = self._lost, None
                        raise lost
                    if self.step():
                        break
                except ProducerLost as lost:
                    self._heal(lost)
                except FatalKafkaError as exc:
                    if exc.operation != "consume":
                        raise
                    self._replace_consumer(exc)
            self.seam.queue([run_stopped(ctx.corr, self.name, self.healer.started_ms)])
            try:
                self.seam.commit(Batch())
            except (ProducerLost, BatchAborted) as exc:  # stopping anyway: only the audit event is lost
                log.warning("%s %s: run_stopped not recorded: %s", self.seam.stage, self.name, exc)
        finally:
            self.consumer.close()
            self.close()

    def _heal(self, lost: ProducerLost) -> None:
        """Re-create the producer and rewind to the last commit. The rewind recovers the
        assigned partitions in a transaction of its own, so the new producer can be lost
        there too (fenced by a newer instance, say): that loss is healed the same way, and
        ``heal`` raises ``WorkerFenced`` once a newer run holds the work or the heal budget
        without a commit is spent, so this ends."""
        while True:
            self.healer.heal(lost)
            try:
                self.rewind()
            except ProducerLost as again:
                lost = again
                continue
            self.hooks.on_assigned(self.stage, self.name)
            return

    def _replace_consumer(self, cause: FatalKafkaError) -> None:
        """The group consumer hit a fatal error. After a coordinator move librdkafka can
        see its own rejoin under the same ``group.instance.id`` as a fencing instance;
        unless the journal shows a newer live run of this worker (then ``WorkerFenced``),
        drop everything held, re-create the consumer and rejoin: the assignment that
        follows recovers the partitions as on any assignment."""
        self.hooks.on_unready(self.stage, self.name)
        self.healer.check_not_superseded(cause)
        self.healer.count_heal(cause)
        log.warning("%s %s: group consumer lost (%s); re-creating it and rejoining", self.stage, self.name, cause)
        self.drop_all()
        try:
            self.consumer.close()
        except Exception as exc:  # a fenced consumer may refuse a clean leave: it is replaced anyway
            log.warning("%s %s: closing the lost consumer: %s", self.stage, self.name, exc)
        self.consumer = self._new_consumer()
        self.seam.consumer = self.consumer
        self.hooks.on_consumer_reinit(self.stage, self.name, cause.name)
        self.consumer.subscribe([self.input_topic])

    def account(self, report: CommitReport | None) -> None:
        """Move the live counters from a committed report (never before the commit point)."""
        if report is None:
            return
        self.healer.committed()
        p = self.progress
        p.rows_in += report.rows_in
        p.rows_out += report.rows_out
        p.dlq += sum(report.dlq.values())
        p.commits += 1

    def dead_letter(self, rec: InputRecord, reason: str, message: str) -> bytes:
        return dead_letter(self.ctx.corr.pipeline, self.dlq_stage, rec, reason, message)

    def saw_rows(self) -> None:
        self._rows_at = time.monotonic()

    def report_lag(self) -> None:
        now = time.monotonic()
        if now - self._lag_at >= 1.0:
            self._lag_at = now
            lags = self.consumer.lags()
            self.progress.lag = sum(lags.values())
            self.hooks.on_lag(self.stage, self.name, lags)
            self._check_stall(now)

    def _check_stall(self, now: float) -> None:
        """No input for longer than a transaction may stay open, yet records beyond the
        position: the read is stalled behind a hanging transaction. The pipeline's own
        are aborted (journal events in the next transaction); a foreign one stops the
        stage with the command that aborts it."""
        ctx = self.ctx
        after = ctx.transaction_timeout_ms / 1000 + 5
        if now - self._rows_at < after or now - self._stall_checked_at < after:
            return
        self._stall_checked_at = now
        parts = self.consumer.assignment()
        if not parts:
            return
        from app.kafka.hanging import heal_hanging
        from app.kafka.txn_tool import HangingToolError

        try:
            highs = Admin(ctx.bootstrap, ctx.kafka_extra).end_offsets(parts)
        except Exception as exc:  # the cluster is unreachable: nothing to decide now
            log.warning("%s %s: stall check: cannot read end offsets: %s", self.stage, self.name, exc)
            return
        pos = self.consumer.position(parts)
        stalled = [tp for tp in parts if (at := pos.get(tp)) is not None and highs.get(tp, 0) > at]
        if any(pos.get(tp) is None for tp in parts):
            # no position yet: the group's committed offsets may be held by a pending
            # offset commit of a hanging transaction on its __consumer_offsets partition
            from app.kafka.hanging import OFFSETS_TOPIC, offsets_partition

            try:
                n = len(Admin(ctx.bootstrap, ctx.kafka_extra).partitions_of(OFFSETS_TOPIC))
            except Exception as exc:
                log.warning("%s %s: stall check: cannot read %s: %s", self.stage, self.name, OFFSETS_TOPIC, exc)
                n = 0
            if n:
                stalled.append((OFFSETS_TOPIC, offsets_partition(self.consumer.group_id, n)))
        if not stalled:
            return
        log.warning(
            "%s %s: no input for %.0fs with records beyond %s: checking for hanging transactions",
            self.stage,
            self.name,
            now - self._rows_at,
            stalled,
        )
        try:
            report = heal_hanging(
                ctx.bootstrap,
                pipeline=ctx.corr.pipeline,
                partitions=stalled,
                owned_topics={*ctx.owned_topics, ctx.journal_topic, ctx.dlq_topic},
                max_age_ms=ctx.transaction_timeout_ms,
                corr=ctx.corr,
                extra=ctx.kafka_extra,
            )
        except HangingToolError as exc:
            log.warning("%s %s: hanging-transaction check failed: %s", self.stage, self.name, exc)
            return
        if report.events:
            self.seam.queue(report.events)

    def drained(self, idle_since: float | None) -> bool:
        """Upstream finished, input idle for a second and every partition at its end."""
        if idle_since is None or time.monotonic() - idle_since < 1.0 or not self.ctx.upstream_finished():
            return False
        parts = self.consumer.assignment()
        if not parts:
            return False
        ends = self.consumer.end_offsets(parts)
        pos = self.consumer.position(parts)
        unknown = [tp for tp in parts if pos.get(tp) is None]
        if unknown:  # nothing fetched yet (e.g. input fully committed by an earlier run): start there
            pos.update(self.consumer.committed(unknown))
        self.progress.lag = sum(max(0, ends[tp] - (pos.get(tp) or 0)) for tp in parts)
        return all(ends[tp] - (pos.get(tp) or 0) <= 1 for tp in parts)
