"""Topic → two-phase sink runner (files): invariants I2, I3, I5, I8.

Per assigned partition the runner buffers records into an *open part* (the file
sink keeps them encoded and decodes a part only when it is cut, so a backlog costs
its bytes, not Python row objects). A
part is cut when it reaches ``max_rows``/``max_bytes``/``max_age`` or when input
goes idle. Cut parts are *prepared* by the part writer (staged, fsynced: the
sink's acknowledgement) and handed to the commit seam, which commits
``part_committed`` + the consumer offsets just past the part in one transaction
and only then finalizes (renames) them. Consumer offsets therefore never pass a
row that is not in an acknowledged part (I2).

Recovery runs on every partition assignment, before any record of the partition
is consumed: the journal is read to its high watermark; committed parts that are
not finalized are finalized now (idempotent, I3) and their ``part_finalized``
events queued; staging files of the partition that no committed event names are
deleted (their rows are re-read from the committed offset). On revoke, open
parts of the revoked partitions are dropped: nothing of them was staged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from app.codecs.tokens import CodecError
from app.journal.events import PartInfo, part_key
from app.journal.reader import load_journal, pending_parts
from app.journal.writer import info_event, part_event
from app.kafka.clients import TP, BatchConsumer, InRecord, TxnProducer, read_range
from app.observability.hooks import Hooks
from app.runtime.commit import Batch, BatchAborted, CommitSeam
from app.runtime.stage import Progress, StageContext, group_id, transactional_id
from app.runtime.transform_runner import Decoder, dead_letter
from app.sinks.base import PartWriter, PreparedPart
from app.sinks.postgres import CasFailed, PostgresWriter
from app.tokens import Token

log = logging.getLogger("ledgerflow.sink")
DECODE_CHUNK = 5_000  # rows decoded at a time when a file part is cut (bounds the sink's memory)


class RecoveryError(RuntimeError):
    """Recovery found a state it must not paper over (e.g. a committed part is gone)."""


@dataclass(slots=True)
class OpenPart:
    first: int = -1
    last: int = -1
    tokens: list[Token] = field(default_factory=list)
    records: list[InRecord] = field(default_factory=list)  # transactional sinks: for DLQ of rejects
    dlq: list[bytes] = field(default_factory=list)
    dlq_reasons: dict[str, int] = field(default_factory=dict)
    nbytes: int = 0
    opened: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class PartLimits:
    max_rows: int = 50_000
    max_bytes: int = 64 << 20
    max_age_s: float = 5.0


class SinkRunner:
    def __init__(
        self,
        ctx: StageContext,
        *,
        name: str,
        input_topic: str,
        decoder: Decoder,
        writer: PartWriter | None,
        limits: PartLimits,
        hooks: Hooks,
        db: PostgresWriter | None = None,
    ) -> None:
        self.ctx = ctx
        self.name = name
        self.input_topic = input_topic
        self.decode = decoder
        self.writer = writer
        self.db = db
        self.expected: dict[TP, int | None] = {}  # transactional sinks: stored offset per partition
        self.limits = limits
        self.hooks = hooks
        self.progress = Progress()
        self.open: dict[TP, OpenPart] = {}
        self._lag_at = 0.0
        self.consumer = BatchConsumer(
            ctx.bootstrap,
            group_id(ctx.corr.pipeline, "sink", name),
            extra={"group.instance.id": ctx.corr.worker_id, **ctx.kafka_extra},
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
        )
        producer = TxnProducer(
            ctx.bootstrap,
            transactional_id(ctx.corr, name),
            transaction_timeout_ms=ctx.transaction_timeout_ms,
            extra=ctx.kafka_extra,
        )
        self.seam = CommitSeam(
            stage="sink",
            name=name,
            producer=producer,
            corr=ctx.corr,
            journal_topic=ctx.journal_topic,
            dlq_topic=ctx.dlq_topic,
            consumer=self.consumer,
            writer=writer,
            hooks=hooks,
        )

    # -- rebalance ---------------------------------------------------------------
    def _on_assign(self, parts: list[TP]) -> dict[TP, int] | None:
        self.hooks.on_rebalance("sink", self.name, "assigned", len(parts))
        log.info("sink %s: assigned %s", self.name, parts)
        seek: dict[TP, int] | None = None
        if parts:
            if self.db is not None:
                seek = self.recover_db(parts)
            else:
                self.recover(parts)
        self.hooks.on_assigned("sink", self.name)  # /readyz: assigned and recovered
        return seek

    def _on_revoke(self, parts: list[TP], lost: bool) -> None:
        self.hooks.on_rebalance("sink", self.name, "lost" if lost else "revoked", len(parts))
        self.hooks.on_partitions_gone("sink", self.name, parts)
        for tp in parts:
            self.open.pop(tp, None)
            self.expected.pop(tp, None)
        log.info("sink %s: %s %s; open parts dropped", self.name, "lost" if lost else "revoked", parts)

    def recover_db(self, parts: list[TP]) -> dict[TP, int]:
        """Transactional sink: the database's stored offsets are authoritative. Where
        Kafka (group offsets, journal, DLQ) lags them, record what the database already
        committed in one Kafka transaction, then start consuming at the stored offsets."""
        assert self.db is not None
        starts: dict[TP, int] = {}
        committed = self.consumer.committed(parts)
        by_topic: dict[str, list[int]] = {}
        for t, p in parts:
            by_topic.setdefault(t, []).append(p)
        for topic, ps in by_topic.items():
            stored = self.db.stored_offsets(topic, ps)
            for p in ps:
                tp = (topic, p)
                self.expected[tp] = stored.get(p)
                if p not in stored:
                    continue
                starts[tp] = stored[p]
                kafka_at = committed.get(tp) or 0
                if kafka_at < stored[p]:
                    self._reconcile(topic, p, kafka_at, stored[p])
        return starts

    def _reconcile(self, topic: str, partition: int, start: int, end: int) -> None:
        assert self.db is not None
        rejects = self.db.rejects(topic, partition, start, end)
        dlq: list[bytes] = []
        if rejects:
            stage = f"sink/{self.name}"
            for rec in read_range(self.ctx.bootstrap, topic, partition, start, end, extra=self.ctx.kafka_extra):
                if rec.offset in rejects:
                    dlq.append(dead_letter(self.ctx, stage, rec, "db_rejected", rejects[rec.offset]))
        detail = {
            "action": "reconciled_from_db",
            "topic": topic,
            "partition": str(partition),
            "from": str(start),
            "to": str(end),
            "rejects": str(len(rejects)),
        }
        event = info_event(self.ctx.corr, "recovery", f"recovery/{self.name}/{topic}/{partition}", detail)
        self.seam.commit(Batch(dlq=dlq, journal=[event], offsets=[(topic, partition, end)]))
        self.hooks.on_recovery("sink", self.name, "reconciled_from_db")
        log.warning(
            "sink %s: %s/%d: Kafka lagged the database (%d < %d); reconciled",
            self.name,
            topic,
            partition,
            start,
            end,
        )

    def recover(self, parts: list[TP]) -> None:
        """Finalize committed-but-unfinalized parts; delete unreferenced staging."""
        assert self.writer is not None
        events = load_journal(self.ctx.bootstrap, self.ctx.journal_topic, extra=self.ctx.kafka_extra)
        pending = pending_parts(events, self.name, set(parts))
        keep: set[str] = set()
        finalized = []
        for ev in pending:
            info = ev.part
            assert info is not None
            part = PreparedPart(
                sink=info.sink,
                topic=info.topic,
                partition=info.partition,
                first_offset=info.first_offset,
                last_offset=info.last_offset,
                rows=info.rows,
                bytes=info.bytes,
                checksum=info.checksum,
                staging_path=info.staging_path,
                final_path=info.final_path,
            )
            keep.add(info.staging_path)
            try:
                renamed = self.writer.finalize(part)
            except Exception as exc:
                raise RecoveryError(f"sink {self.name}: committed part {ev.key} cannot be finalized: {exc}") from exc
            self.hooks.on_recovery("sink", self.name, "finalized" if renamed else "already_final")
            finalized.append(self.seam._part_event("part_finalized", part))
        if finalized:
            self.seam.queue_finalized(finalized)
        discarded = 0
        for topic, partition in parts:
            for path in self.writer.leftover_staging(topic, partition):
                if path not in keep:
                    self.writer.remove_staging(path)
                    discarded += 1
        self.hooks.on_staging_leftovers("sink", self.name, discarded)
        if discarded:
            self.hooks.on_recovery("sink", self.name, "staging_discarded")
            self.seam.queue_finalized(
                [
                    info_event(
                        self.ctx.corr,
                        "recovery",
                        f"recovery/{self.name}/{parts[0][0]}",
                        {"staging_discarded": str(discarded)},
                    )
                ]
            )
        log.info(
            "sink %s: recovered %s: %d part(s) finalized, %d staging file(s) discarded",
            self.name,
            parts,
            len(finalized),
            discarded,
        )

    # -- main loop ---------------------------------------------------------------
    def run(self) -> None:
        ctx = self.ctx
        self.seam.init()
        self.consumer.subscribe([self.input_topic])
        idle_since: float | None = None
        stage = f"sink/{self.name}"
        decode = self.decode
        keep_records = self.db is not None
        try:
            while not ctx.stop.is_set():
                recs = self.consumer.consume(ctx.max_rows, ctx.interval_s)
                for rec in recs:
                    tp = (rec.topic, rec.partition)
                    part = self.open.get(tp)
                    if part is None:
                        part = self.open[tp] = OpenPart(first=rec.offset)
                    part.last = rec.offset
                    if not keep_records:  # file sink: keep the encoded record, decode when the part is cut
                        part.records.append(rec)
                        part.nbytes += len(rec.value or b"")
                        continue
                    try:
                        part.tokens.append(decode(rec))
                        part.records.append(rec)
                        part.nbytes += len(rec.value or b"")
                    except CodecError as exc:
                        self._dead_letter(part, stage, rec, exc)
                idle = not recs
                self._report_lag()
                due = self._due(idle)
                if due:
                    idle_since = None
                    self._commit(due)
                elif idle:
                    if self.seam.has_pending:
                        self._commit([])
                    if ctx.exit_when_done and not self.open and self._drained(idle_since):
                        return
                    idle_since = idle_since or time.monotonic()
        finally:
            self.consumer.close()

    def _dead_letter(self, part: OpenPart, stage: str, rec: InRecord, exc: CodecError) -> None:
        part.dlq.append(dead_letter(self.ctx, stage, rec, exc.reason_class, str(exc)))
        part.dlq_reasons[exc.reason_class] = part.dlq_reasons.get(exc.reason_class, 0) + 1

    def _decoded_chunks(self, part: OpenPart, stage: str) -> Iterator[list[Token]]:
        """A file-sink part's records decoded ``DECODE_CHUNK`` at a time (undecodable
        ones go to the part's DLQ list), so the writer never needs all rows as objects."""
        decode, records = self.decode, part.records
        for start in range(0, len(records), DECODE_CHUNK):
            tokens: list[Token] = []
            append = tokens.append
            for rec in records[start : start + DECODE_CHUNK]:
                try:
                    append(decode(rec))
                except CodecError as exc:
                    self._dead_letter(part, stage, rec, exc)
            if tokens:
                yield tokens

    def _report_lag(self) -> None:
        now = time.monotonic()
        if now - self._lag_at >= 1.0:
            self._lag_at = now
            lags = self.consumer.lags()
            self.progress.lag = sum(lags.values())
            self.hooks.on_lag("sink", self.name, lags)

    def _due(self, idle: bool) -> list[TP]:
        lim, now = self.limits, time.monotonic()
        return [
            tp
            for tp, p in self.open.items()
            if idle or len(p.records) >= lim.max_rows or p.nbytes >= lim.max_bytes or now - p.opened >= lim.max_age_s
        ]

    def _drained(self, idle_since: float | None) -> bool:
        if idle_since is None or time.monotonic() - idle_since < 1.0 or not self.ctx.upstream_finished():
            return False
        parts = self.consumer.assignment()
        if not parts:
            return False
        ends = self.consumer.end_offsets(parts)
        pos = self.consumer.position(parts)
        self.progress.lag = sum(max(0, ends[tp] - (pos.get(tp) or 0)) for tp in parts)
        return all(ends[tp] - (pos.get(tp) or 0) <= 1 for tp in parts)

    def _commit(self, due: list[TP]) -> None:
        if self.db is not None:
            self._commit_db(due)
            return
        assert self.writer is not None
        prepared: list[PreparedPart] = []
        dlq: list[bytes] = []
        offsets: list[tuple[str, int, int]] = []
        rows_in = 0
        stage = f"sink/{self.name}"
        for tp in due:
            p = self.open[tp]
            # decoded only now, a chunk at a time: a backlog holds encoded bytes, not row objects
            part = self.writer.prepare_chunks(tp[0], tp[1], p.first, p.last, self._decoded_chunks(p, stage))
            if part.rows:
                prepared.append(part)
            else:  # every record of the part was undecodable: nothing to stage
                self.writer.discard(part)
            dlq.extend(p.dlq)
            offsets.append((tp[0], tp[1], p.last + 1))
            rows_in += part.rows + len(p.dlq)
        reasons: dict[str, int] = {}
        for tp in due:
            for k, v in self.open[tp].dlq_reasons.items():
                reasons[k] = reasons.get(k, 0) + v
        batch = Batch(dlq=dlq, offsets=offsets, parts=prepared, rows_in=rows_in, dlq_reasons=reasons)
        try:
            self.seam.commit(batch)
        except BatchAborted:
            self.progress.aborts += 1
            self.open.clear()
            self.consumer.rewind_to_committed()
            return
        for tp in due:
            del self.open[tp]
        self.progress.rows_in += rows_in
        self.progress.rows_out += sum(p.rows for p in prepared)
        self.progress.dlq += len(dlq)
        self.progress.commits += 1

    def _commit_db(self, due: list[TP]) -> None:
        """One DB transaction per part (the commit point), then one Kafka transaction
        recording them all: part_committed events, DLQ for rejected rows, offsets."""
        db = self.db
        assert db is not None
        stage = f"sink/{self.name}"
        offsets: list[tuple[str, int, int]] = []
        journal = []
        dlq: list[bytes] = []
        rows_in = 0
        for tp in due:
            p = self.open[tp]
            offsets.append((tp[0], tp[1], p.last + 1))
            dlq.extend(p.dlq)
            rows_in += len(p.tokens) + len(p.dlq)
        written = 0
        reasons: dict[str, int] = {}
        for tp in due:
            for k, v in self.open[tp].dlq_reasons.items():
                reasons[k] = reasons.get(k, 0) + v

        def external() -> list[bytes]:
            nonlocal written
            out: list[bytes] = []
            for tp in due:
                p = self.open[tp]
                nxt = p.last + 1
                res = db.write_part(tp[0], tp[1], self.expected.get(tp), nxt, p.tokens, [r.offset for r in p.records])
                self.expected[tp] = nxt
                written += res.written
                for idx, err in res.rejects:
                    out.append(dead_letter(self.ctx, stage, p.records[idx], "db_rejected", err))
                    reasons["db_rejected"] = reasons.get("db_rejected", 0) + 1
                info = PartInfo(
                    self.name, tp[0], tp[1], p.first, p.last, res.written, 0, "", "", f"postgres:{db.table}"
                )
                journal.append(
                    part_event(self.ctx.corr, "part_committed", part_key(self.name, tp[0], tp[1], p.first), info)
                )
            return out

        batch = Batch(
            dlq=dlq, journal=journal, offsets=offsets, rows_in=rows_in, external=external, dlq_reasons=reasons
        )
        try:
            self.seam.commit(batch)
        except CasFailed as exc:
            log.error("sink %s: %s; rolled back, giving up the partition state and re-syncing", self.name, exc)
            self.hooks.on_fenced("sink", self.name)
            self._resync()
            return
        except BatchAborted:
            self.progress.aborts += 1
            self._resync()
            return
        batch.rows_written = written
        for tp in due:
            del self.open[tp]
        self.progress.rows_in += rows_in
        self.progress.rows_out += written
        self.progress.dlq += len(dlq)
        self.progress.commits += 1

    def _resync(self) -> None:
        """After a failed part: drop open parts, reconcile, restart at the stored offsets."""
        self.open.clear()
        parts = self.consumer.assignment()
        starts = self.recover_db(parts) if parts else {}
        for t, p in parts:
            self.consumer.seek(
                t,
                p,
                starts.get((t, p), None) if (t, p) in starts else self.consumer.committed([(t, p)]).get((t, p)),
            )
