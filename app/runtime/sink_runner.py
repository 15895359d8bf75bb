"""Topic → sink runner: cuts parts, hands them to the seam; invariants I2, I3, I5, I7, I8.

Per assigned partition the runner buffers consumed records into an *open part*
(kept encoded: a backlog costs its bytes, not Python row objects). A part is cut
when it reaches ``max_rows``/``max_bytes``/``max_age`` or when input goes idle, and
the cut parts go to ``CommitSeam.commit_parts``, which drives the sink protocol
(prepare → external commit → Kafka transaction → finalize) in its fixed order. The
runner decides only what is in a part.

Recovery runs on every assignment, before any record of the partitions is consumed:
the sink's ``recover`` plans it (committed parts to finalize, staging to discard,
ranges a transactional sink holds that Kafka lags) and the seam carries it out;
consumption starts at the sink's authoritative offsets where it has them. After an
aborted batch, a refused compare-and-set or a healed producer, the open parts are
dropped and recovery runs again for every assigned partition.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field

from app.codecs.decoders import Decoder
from app.codecs.tokens import CodecError
from app.kafka.clients import TP, InRecord
from app.kafka.readers import read_range
from app.observability.hooks import Hooks
from app.runtime.batch import BatchAborted
from app.runtime.consuming import ConsumingRunner
from app.runtime.stage import StageContext
from app.sinks.base import Chunk, Reconcile, Sink
from app.tokens import Token

log = logging.getLogger("ledgerflow.sink")
DECODE_CHUNK = 5_000  # rows decoded at a time when a part is cut (bounds the sink's memory)


@dataclass(frozen=True, slots=True)
class PartLimits:
    max_rows: int = 50_000
    max_bytes: int = 64 << 20
    max_age_s: float = 5.0
    idle_s: float = 0.0  # cut every open part once input has been idle this long
    max_open_rows: int = 50_000  # rows held in open parts across all partitions (the memory bound)


@dataclass(slots=True)
class OpenPart:
    """One partition's consumed records since the last cut; the seam's ``SinkInput``."""

    runner: SinkRunner
    topic: str
    partition: int
    first_offset: int
    last_offset: int = -1
    records: list[InRecord] = field(default_factory=list)
    nbytes: int = 0
    opened: float = field(default_factory=time.monotonic)
    failed: list[tuple[str, bytes]] = field(default_factory=list)

    @property
    def records_in(self) -> int:
        return len(self.records)

    def chunks(self) -> Iterator[Chunk]:
        """Decoded rows, ``DECODE_CHUNK`` at a time; undecodable records are set aside."""
        decode, records, runner = self.runner.decode, self.records, self.runner
        self.failed = []
        for start in range(0, len(records), DECODE_CHUNK):
            tokens: list[Token] = []
            offsets: list[int] = []
            sizes: list[int] = []
            for rec in records[start : start + DECODE_CHUNK]:
                try:
                    tokens.append(decode(rec))
                except CodecError as exc:
                    self.failed.append((exc.reason_class, runner.dead_letter(rec, exc.reason_class, str(exc))))
                    continue
                offsets.append(rec.offset)
                sizes.append(len(rec.value or b""))
            if tokens:
                yield Chunk(tokens, offsets, sizes)

    def undecodable(self) -> list[tuple[str, bytes]]:
        return self.failed

    def dead_letter(self, offset: int, reason: str, message: str) -> bytes:
        i = bisect_left(self.records, offset, key=lambda r: r.offset)
        if i == len(self.records) or self.records[i].offset != offset:
            raise KeyError(f"sink {self.runner.name}: no record at offset {offset} in {self.topic}/{self.partition}")
        return self.runner.dead_letter(self.records[i], reason, message)


class SinkRunner(ConsumingRunner):
    stage = "sink"

    def __init__(
        self,
        ctx: StageContext,
        *,
        name: str,
        input_topic: str,
        decoder: Decoder,
        sink: Sink,
        limits: PartLimits,
        hooks: Hooks,
    ) -> None:
        super().__init__(ctx, name=name, input_topic=input_topic, decoder=decoder, hooks=hooks, sink=sink)
        self.sink = sink
        self.limits = limits
        self.open: dict[TP, OpenPart] = {}
        self._idle_since: float | None = None

    # -- recovery --------------------------------------------------------------------
    def assigned(self, parts: list[TP]) -> dict[TP, int]:
        """Plan and carry out recovery of ``parts``; the start offsets the sink knows."""
        committed = self.consumer.committed(parts)
        plan = self.sink.recover(parts, committed, self.journal)
        self.seam.recover_parts(plan, self._reconcile_dlq)
        log.info(
            "sink %s: recovered %s: %d part(s) finalized, %d staging file(s) discarded, %d range(s) reconciled",
            self.name,
            parts,
            len(plan.finalize),
            len(plan.discard),
            len(plan.reconcile),
        )
        return plan.seek

    def _reconcile_dlq(self, rc: Reconcile) -> list[bytes]:
        """DLQ records for the rows a transactional sink refused in ``[start, end)``."""
        rejects = rc.rejects
        if not rejects:
            return []
        ctx = self.ctx
        return [
            self.dead_letter(rec, rc.reason, rejects[rec.offset])
            for rec in read_range(ctx.bootstrap, rc.topic, rc.partition, rc.start, rc.end, extra=ctx.kafka_extra)
            if rec.offset in rejects
        ]

    def revoked(self, parts: list[TP]) -> None:
        for tp in parts:
            self.open.pop(tp, None)
        self.sink.forget(parts)

    def drop_all(self) -> None:
        self.sink.forget(list(self.open) + self.consumer.assignment())
        self.open.clear()

    def rewind(self) -> None:
        """Drop the open parts, recover every assigned partition again, restart there."""
        self.open.clear()
        parts = self.consumer.assignment()
        if not parts:
            return
        seek = self.assigned(parts)
        committed = self.consumer.committed(parts)
        for t, p in parts:
            self.consumer.seek(t, p, seek.get((t, p), committed.get((t, p))))

    # -- main loop ---------------------------------------------------------------------
    def step(self) -> bool:
        ctx = self.ctx
        room = self.limits.max_open_rows - sum(len(p.records) for p in self.open.values())
        recs = self.consumer.consume(max(1, min(ctx.max_rows, room)), ctx.interval_s)
        for rec in recs:
            tp = (rec.topic, rec.partition)
            part = self.open.get(tp)
            if part is None:
                part = self.open[tp] = OpenPart(self, rec.topic, rec.partition, rec.offset)
            part.last_offset = rec.offset
            part.records.append(rec)
            part.nbytes += len(rec.value or b"")
        idle = not recs
        if not idle:
            self.saw_rows()
            self._idle_since = None
        self.report_lag()
        now = time.monotonic()
        due = self._due(idle and now - (self._idle_since or now) >= self.limits.idle_s)
        if due:
            self._idle_since = None
            self._commit(due)
        elif idle:
            if self.seam.has_pending:
                self._commit([])
            if ctx.exit_when_done and not self.open and self.drained(self._idle_since):
                return True
            self._idle_since = self._idle_since or time.monotonic()
        return False

    def _due(self, idle: bool) -> list[TP]:
        """The open parts to cut now: those at a limit of their own, and, while the worker
        holds ``max_open_rows`` or more in open parts, the largest others until it holds at
        most half of that (memory bounded however many partitions it is assigned)."""
        lim, now = self.limits, time.monotonic()
        due: list[TP] = []
        rest: list[tuple[int, TP]] = []  # (rows held, partition) of the parts not due
        for tp, p in self.open.items():
            n = len(p.records)
            if idle or n >= lim.max_rows or p.nbytes >= lim.max_bytes or now - p.opened >= lim.max_age_s:
                due.append(tp)
            else:
                rest.append((n, tp))
        held = sum(n for n, _tp in rest)
        if held >= lim.max_open_rows:
            rest.sort()
            while rest and held > lim.max_open_rows // 2:
                n, tp = rest.pop()
                due.append(tp)
                held -= n
        return due

    def _commit(self, due: list[TP]) -> None:
        parts = [self.open[tp] for tp in due]
        try:
            report = self.seam.commit_parts(parts)
        except BatchAborted as exc:
            self.progress.aborts += 1
            log.warning("sink %s: batch aborted (%s); recovering and redoing it", self.name, exc)
            self.healer.after_abort()
            self.rewind()
            return
        for tp in due:
            del self.open[tp]
        self.account(report)
