"""Topic → topic runner (read_committed in, transactional out, KIP-447 fencing).

Records are accumulated per partition for one commit interval (or ``max_rows``),
then transformed and committed in ONE transaction: outputs + DLQ records +
``send_offsets_to_transaction`` for exactly the records processed. Nothing is
produced between commits, so a revoked partition's pending records are simply
dropped (its new owner re-reads them from the committed offset) and an aborted
batch is redone after rewinding to the committed offsets.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from typing import Any

from app.codecs.dlq import encode_dlq
from app.codecs.tokens import CodecError, TokenCodec, check_fingerprint
from app.kafka.clients import TP, BatchConsumer, InRecord, TxnProducer
from app.observability.hooks import Hooks
from app.runtime.commit import Batch, BatchAborted, CommitSeam, TopicRecords
from app.runtime.stage import Progress, StageContext, group_id, transactional_id
from app.state.manager import StateManager
from app.tokens import Token
from app.transforms.chain import Chain

log = logging.getLogger("ledgerflow.transform")

Decoder = Callable[[InRecord], Token]


def token_decoder(codec: TokenCodec) -> Decoder:
    """Decode ledgerflow tokens; a record whose ``lf.schema`` header names another
    schema is refused (DLQ ``schema_mismatch``) rather than misread."""
    decode, expected = codec.decode, codec.header

    def run(rec: InRecord) -> Token:
        if rec.value is None:
            raise CodecError("tombstone", "record has no value")
        headers = rec.headers
        if headers and headers[0] != expected:
            check_fingerprint(headers, expected[1])
        return decode(rec.value)

    return run


def external_decoder(fn: Callable[..., Token]) -> Decoder:
    def run(rec: InRecord) -> Token:
        return fn(rec.topic, rec.partition, rec.offset, rec.key, rec.value, rec.timestamp_ms)

    return run


def dead_letter(ctx: StageContext, stage: str, rec: InRecord, error_class: str, message: str) -> bytes:
    """DLQ record for an input record: original bytes, headers and where it came from."""
    return encode_dlq(
        pipeline=ctx.corr.pipeline,
        stage=stage,
        error_class=error_class,
        error_message=message,
        original_key=rec.key,
        original_value=rec.value or b"",
        original_headers=list(rec.headers or []),
        origin={"topic": rec.topic, "partition": str(rec.partition), "offset": str(rec.offset)},
    )


class TransformRunner:
    def __init__(
        self,
        ctx: StageContext,
        *,
        name: str,
        input_topic: str,
        chain: Chain,
        decoder: Decoder,
        hooks: Hooks,
        state: StateManager | None = None,
    ) -> None:
        self.ctx = ctx
        self.name = name
        self.input_topic = input_topic
        self.chain = chain
        self.decode = decoder
        self.codec = TokenCodec()
        self.hooks = hooks
        self.state = state
        if state is not None:
            state.on_restore = lambda p, n, rem: hooks.on_restore("transform", name, p, n, rem)
        self.progress = Progress()
        self.pending: dict[TP, list[InRecord]] = {}
        self._lag_at = 0.0
        self.consumer = BatchConsumer(
            ctx.bootstrap,
            group_id(ctx.corr.pipeline, "transform", name),
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
            stage="transform",
            name=name,
            producer=producer,
            corr=ctx.corr,
            journal_topic=ctx.journal_topic,
            dlq_topic=ctx.dlq_topic,
            consumer=self.consumer,
            hooks=hooks,
        )

    def _on_assign(self, parts: list[TP]) -> None:
        self.hooks.on_rebalance("transform", self.name, "assigned", len(parts))
        log.info("transform %s: assigned %s", self.name, parts)
        if self.state is not None:  # restore before the first row of these partitions
            try:
                self.state.assign([p for t, p in parts if t == self.input_topic])
            except BaseException:
                log.exception("transform %s: restoring state for %s failed", self.name, parts)
                raise
        self.hooks.on_assigned("transform", self.name)

    def _on_revoke(self, parts: list[TP], lost: bool) -> None:
        self.hooks.on_rebalance("transform", self.name, "lost" if lost else "revoked", len(parts))
        self.hooks.on_partitions_gone("transform", self.name, parts)
        for tp in parts:
            self.pending.pop(tp, None)
        if self.state is not None:
            self.state.revoke([p for t, p in parts if t == self.input_topic])
        log.info("transform %s: %s %s", self.name, "lost" if lost else "revoked", parts)

    def run(self) -> None:
        ctx = self.ctx
        self.seam.init()
        self.consumer.subscribe([self.input_topic])
        idle_since: float | None = None
        try:
            while not ctx.stop.is_set():
                deadline = time.monotonic() + ctx.interval_s
                count = 0
                while count < ctx.max_rows:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    recs = self.consumer.consume(min(ctx.max_rows - count, 10_000), min(left, 0.1))
                    for rec in recs:
                        self.pending.setdefault((rec.topic, rec.partition), []).append(rec)
                    count += len(recs)
                self._report_lag()
                if not self.pending:
                    if ctx.exit_when_done and self._drained(idle_since):
                        return
                    idle_since = idle_since or time.monotonic()
                    continue
                idle_since = None
                self._commit_pending()
        finally:
            self.consumer.close()
            if self.state is not None:
                self.state.close()

    def _report_lag(self) -> None:
        now = time.monotonic()
        if now - self._lag_at >= 1.0:
            self._lag_at = now
            lags = self.consumer.lags()
            self.progress.lag = sum(lags.values())
            self.hooks.on_lag("transform", self.name, lags)

    def _drained(self, idle_since: float | None) -> bool:
        if idle_since is None or time.monotonic() - idle_since < 1.0 or not self.ctx.upstream_finished():
            return False
        parts = self.consumer.assignment()
        if not parts:
            return False
        ends = self.consumer.end_offsets(parts)
        pos = self.consumer.position(parts)
        lag = sum(max(0, ends[tp] - (pos.get(tp) or 0)) for tp in parts)
        self.progress.lag = lag
        return all(ends[tp] - (pos.get(tp) or 0) <= 1 for tp in parts)

    def _commit_pending(self) -> None:
        ctx = self.ctx
        stage = f"transform/{self.name}"
        by_topic: dict[str, tuple[list[Token], list[bytes]]] = {}
        dlq: list[bytes] = []
        reasons: dict[str, int] = {}
        offsets: list[tuple[str, int, int]] = []
        rows_in = 0
        decode, chain, state = self.decode, self.chain, self.state
        for (topic, partition), recs in self.pending.items():
            if state is not None and partition not in state.stores:
                raise RuntimeError(f"transform {self.name}: no state store for {topic}/{partition} (not restored)")
            rows_in += len(recs)
            offsets.append((topic, partition, recs[-1].offset + 1))
            for rec in recs:
                try:
                    token = decode(rec)
                except CodecError as exc:
                    dlq.append(dead_letter(ctx, stage, rec, exc.reason_class, str(exc)))
                    reasons[exc.reason_class] = reasons.get(exc.reason_class, 0) + 1
                    continue
                try:
                    outs = chain(token)
                    if state is not None:
                        outs = state.process_row(partition, outs)
                except CodecError as exc:  # a stateful operator refusing the row (no key, late, ...)
                    dlq.append(dead_letter(ctx, stage, rec, exc.reason_class, str(exc)))
                    reasons[exc.reason_class] = reasons.get(exc.reason_class, 0) + 1
                    continue
                except Exception as exc:
                    detail = f"{type(exc).__name__}: {exc} | {traceback.format_exc(limit=3)[-800:]}"
                    dlq.append(dead_letter(ctx, stage, rec, "transform_error", detail))
                    reasons["transform_error"] = reasons.get("transform_error", 0) + 1
                    continue
                for dest, out in outs:
                    entry = by_topic.get(dest)
                    if entry is None:
                        entry = by_topic[dest] = ([], [])
                    entry[0].append(out)
                    entry[1].append((out["key"] or out["token_id"]).encode())
        header = [self.codec.header]
        outputs = [
            TopicRecords(dest, self.codec.encode_many(tokens), list[Any](keys), header)
            for dest, (tokens, keys) in by_topic.items()
        ]
        batch = Batch(outputs=outputs, dlq=dlq, offsets=offsets, rows_in=rows_in, dlq_reasons=reasons)
        if state is not None:
            batch.changelog = state.changelog_records([p for _t, p in self.pending])
            batch.after_commit = state.after_commit
        self.pending = {}
        try:
            self.seam.commit(batch)
        except BatchAborted:
            if state is not None:
                state.abort()
            self.progress.aborts += 1
            self.consumer.rewind_to_committed()
            return
        self.progress.rows_in += rows_in
        self.progress.rows_out += sum(len(o.values) for o in outputs)
        self.progress.dlq += len(dlq)
        self.progress.commits += 1
