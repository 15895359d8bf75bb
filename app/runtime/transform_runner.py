"""Topic → topic runner (read_committed in, transactional out, KIP-447 fencing).

Records are accumulated per partition for one commit interval (or ``max_rows``),
then transformed and handed to the seam as ONE batch: outputs + DLQ records +
changelog records + the offsets of exactly the records processed. Nothing is
produced between commits, so a revoked partition's pending records are simply
dropped (its new owner re-reads them from the committed offset), and an aborted
batch or a healed producer means: drop the batch, restore state to the committed
changelog, rewind to the committed offsets, redo.
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import Any

from app.codecs.decoders import Decoder
from app.codecs.tokens import CodecError, TokenCodec
from app.kafka.clients import TP, InRecord
from app.observability.hooks import Hooks
from app.runtime.batch import Batch, BatchAborted, TopicRecords
from app.runtime.consuming import ConsumingRunner
from app.runtime.stage import StageContext
from app.state.manager import StateManager
from app.tokens import Token
from app.transforms.chain import CompiledChain

log = logging.getLogger("ledgerflow.transform")


class TransformRunner(ConsumingRunner):
    stage = "transform"

    def __init__(
        self,
        ctx: StageContext,
        *,
        name: str,
        input_topic: str,
        chain: CompiledChain,
        decoder: Decoder,
        hooks: Hooks,
        state: StateManager | None = None,
    ) -> None:
        super().__init__(ctx, name=name, input_topic=input_topic, decoder=decoder, hooks=hooks)
        self.chain = chain
        self.codec = TokenCodec()
        self.state = state
        if state is not None:
            state.on_restore = lambda p, n, rem: hooks.on_restore("transform", name, p, n, rem)
        self.pending: dict[TP, list[InRecord]] = {}
        self._idle_since: float | None = None

    def _partitions(self, parts: list[TP]) -> list[int]:
        return [p for t, p in parts if t == self.input_topic]

    def assigned(self, parts: list[TP]) -> None:
        if self.state is not None:  # restore before the first row of these partitions
            try:
                self.state.assign(self._partitions(parts))
            except BaseException:
                log.exception("transform %s: restoring state for %s failed", self.name, parts)
                raise
        return None

    def revoked(self, parts: list[TP]) -> None:
        for tp in parts:
            self.pending.pop(tp, None)
        if self.state is not None:
            self.state.revoke(self._partitions(parts))

    def close(self) -> None:
        if self.state is not None:
            self.state.close()

    def drop_all(self) -> None:
        self.pending = {}
        if self.state is not None:  # re-restored from the changelog on the next assignment
            self.state.revoke(list(self.state.stores))

    def rewind(self) -> None:
        self.pending = {}
        parts = self.consumer.assignment()
        if self.state is not None:  # whether the lost transaction committed: the changelog knows
            ps = self._partitions(parts)
            self.state.revoke(ps)
            self.state.assign(ps)
        self.consumer.rewind_to_committed(parts)

    def step(self) -> bool:
        ctx = self.ctx
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
        if count:
            self.saw_rows()
        self.report_lag()
        if not self.pending:
            if ctx.exit_when_done and self.drained(self._idle_since):
                return True
            self._idle_since = self._idle_since or time.monotonic()
            if self.seam.has_pending:
                self.account(self.seam.commit(Batch()))
            return False
        self._idle_since = None
        self._commit_pending()
        return False

    def _commit_pending(self) -> None:
        by_topic: dict[str, tuple[list[Token], list[bytes]]] = {}
        dlq: list[bytes] = []
        reasons: dict[str, int] = {}
        offsets: list[tuple[str, int, int]] = []
        rows_in = 0
        decode, chain, state = self.decode, self.chain, self.state

        def refuse(rec: InRecord, reason: str, message: str) -> None:
            dlq.append(self.dead_letter(rec, reason, message))
            reasons[reason] = reasons.get(reason, 0) + 1

        for (topic, partition), recs in self.pending.items():
            if state is not None and partition not in state.stores:
                raise RuntimeError(f"transform {self.name}: no state store for {topic}/{partition} (not restored)")
            rows_in += len(recs)
            offsets.append((topic, partition, recs[-1].offset + 1))
            for rec in recs:
                try:
                    token = decode(rec)
                except CodecError as exc:
                    refuse(rec, exc.reason_class, str(exc))
                    continue
                try:
                    outs = chain(token)
                    if state is not None:
                        outs = state.process_row(partition, outs)
                except CodecError as exc:  # a stateful operator refusing the row (no key, late, ...)
                    refuse(rec, exc.reason_class, str(exc))
                    continue
                except Exception as exc:
                    refuse(
                        rec, "transform_error", f"{type(exc).__name__}: {exc} | {traceback.format_exc(limit=3)[-800:]}"
                    )
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
        batch = Batch(
            outputs=outputs,
            dlq=dlq,
            dlq_reasons=reasons,
            offsets=offsets,
            rows_in=rows_in,
            filtered=chain.take_dropped(),
        )
        if state is not None:
            batch.changelog = state.changelog_records([p for _t, p in self.pending])
            batch.after_commit = state.after_commit
        self.pending = {}
        try:
            report = self.seam.commit(batch)
        except BatchAborted:
            if state is not None:
                state.abort()
            self.progress.aborts += 1
            self.healer.after_abort()
            self.consumer.rewind_to_committed()
            return
        self.account(report)
