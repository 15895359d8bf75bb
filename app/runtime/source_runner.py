"""Source → topic runner (exactly-once source, invariant I1 and I6).

One transaction = the tokens produced + DLQ records for undecodable input + the
``source_checkpoint`` events covering exactly those records. On start the
transactional id is registered first (which aborts whatever a crashed previous
instance left open) and only then is the journal read, so the restored checkpoints
are the committed ones. The transactional id is per *source*, not per worker: a
second instance of the same source fences the first, so two can never both emit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from app.codecs.dlq import encode_dlq
from app.codecs.tokens import TokenCodec
from app.journal.events import JournalEvent
from app.journal.view import source_checkpoints
from app.journal.writer import checkpoint_event
from app.kafka.admin import Admin
from app.kafka.clients import TxnProducer
from app.observability.hooks import Hooks
from app.runtime.batch import Batch, BatchAborted, ProducerLost, TopicRecords
from app.runtime.commit import CommitSeam
from app.runtime.healing import Healer, read_journal, run_started, run_stopped
from app.runtime.ownership import write_partitions
from app.runtime.stage import Progress, StageContext
from app.sources.base import Checkpoint, DeadLetter, Source
from app.tokens import Token

log = logging.getLogger("ledgerflow.source")


class SourceRunner:
    def __init__(
        self,
        ctx: StageContext,
        *,
        name: str,
        source: Source,
        topic: str,
        hooks: Hooks,
    ) -> None:
        self.ctx = ctx
        self.name = name
        self.source = source
        self.topic = topic
        self.codec = TokenCodec()
        self.progress = Progress()
        self.seam = CommitSeam(
            stage="source",
            name=name,
            producer=self._new_producer(),
            corr=ctx.corr,
            journal_topic=ctx.journal_topic,
            dlq_topic=ctx.dlq_topic,
            hooks=hooks,
        )
        self.healer = Healer(
            self.seam,
            self._new_producer,
            self._journal,
            hooks,
            ctx.stop.is_set,
            write_partitions=lambda: write_partitions(
                Admin(ctx.bootstrap, ctx.kafka_extra), {topic, ctx.journal_topic, ctx.dlq_topic}
            ),
            bootstrap=ctx.bootstrap,
            extra=ctx.kafka_extra,
            owned_topics=frozenset({*ctx.owned_topics, topic, ctx.journal_topic, ctx.dlq_topic}),
            any_worker=True,
        )
        self.committed: dict[str, Checkpoint] = {}

    def _new_producer(self) -> TxnProducer:
        ctx = self.ctx
        return TxnProducer(
            ctx.bootstrap,
            f"ledgerflow.{ctx.corr.pipeline}.source.{self.name}",
            transaction_timeout_ms=ctx.transaction_timeout_ms,
            extra=ctx.kafka_extra,
        )

    def _journal(self, wait_s: float = 300.0) -> Mapping[str, JournalEvent]:
        """The journal's latest committed events (read to its end now; a read stalled
        behind a hanging transaction of this pipeline clears it and reads on)."""
        return read_journal(self.ctx, self.seam.queue, wait_s)

    def recover(self) -> None:
        """Restore the committed checkpoints (read only after ``init``: those are final)."""
        self.committed = source_checkpoints(self._journal(), self.name)
        self.source.restore(self.committed)
        log.info("source %s: restored %d checkpoint(s)", self.name, len(self.committed))

    def run(self) -> None:
        self.seam.init()
        self.seam.queue([run_started(self.ctx.corr, self.name, self.healer.started_ms)])
        self.recover()
        try:
            while not self.ctx.stop.is_set():
                try:
                    if self._step():
                        break
                except ProducerLost as lost:
                    self.healer.heal(lost)
                    self.recover()
            self.seam.queue([run_stopped(self.ctx.corr, self.name, self.healer.started_ms)])
            try:
                self.seam.commit(Batch())
            except (ProducerLost, BatchAborted) as exc:  # stopping anyway: only the audit event is lost
                log.warning("%s %s: run_stopped not recorded: %s", self.seam.stage, self.name, exc)
        finally:
            self.source.close()

    def _step(self) -> bool:
        ctx = self.ctx
        header = [self.codec.header]
        deadline = time.monotonic() + ctx.interval_s
        tokens: list[Token] = []
        dead: list[DeadLetter] = []
        cps: dict[str, Checkpoint] = {}
        exhausted = False
        while len(tokens) + len(dead) < ctx.max_rows and time.monotonic() < deadline:
            got = self.source.poll(ctx.max_rows - len(tokens) - len(dead))
            tokens.extend(got.tokens)
            dead.extend(got.dead_letters)
            for cp in got.checkpoints:
                cps[cp.key] = cp
            exhausted = got.exhausted
            if exhausted or not (got.tokens or got.dead_letters or got.checkpoints):
                break
        if not cps:
            if exhausted and ctx.exit_when_done:
                log.info("source %s: input exhausted", self.name)
                return True
            time.sleep(min(ctx.interval_s, 0.05))
            return False
        keys = [(t["key"] or t["token_id"]).encode() for t in tokens]
        reasons: dict[str, int] = {}
        for d in dead:
            reasons[d.reason_class] = reasons.get(d.reason_class, 0) + 1
        batch = Batch(
            outputs=[TopicRecords(self.topic, self.codec.encode_many(tokens), list(keys), header)],
            dlq=[
                encode_dlq(
                    pipeline=ctx.corr.pipeline,
                    stage=f"source/{self.name}",
                    error_class=d.reason_class,
                    error_message=d.message,
                    original_key=None,
                    original_value=d.raw,
                    original_headers=[],
                    origin=d.origin,
                )
                for d in dead
            ],
            dlq_reasons=reasons,
            journal=[checkpoint_event(ctx.corr, cp) for cp in cps.values()],
            rows_in=len(tokens) + len(dead),
        )
        try:
            report = self.seam.commit(batch)
        except BatchAborted:
            self.progress.aborts += 1
            self.source.restore(self.committed)
            return False
        self.committed.update(cps)
        self.healer.committed()
        if report is not None:
            self.progress.rows_in += report.rows_in
            self.progress.rows_out += report.rows_out
            self.progress.dlq += sum(report.dlq.values())
            self.progress.commits += 1
        return False
