"""Topic → topic runner (read_committed in, transactional out, KIP-447 fencing).

Records are accumulated per partition for one commit interval (or ``max_rows``),
then transformed and handed to the seam as ONE batch: outputs + DLQ records +
changelog records + the offsets of exactly the records processed. Nothing is
produced between commits, so a revoked partition's pending records are simply
dropped (its new owner re-reads them from the committed offset), and an aborted
batch or a healed producer means: drop the batch, restore state to the committed
changelog, rewind to the committed offsets, redo.

An interval join (``right``) reads a second topic: for every input partition *p* the
group assigns, right partition *p* is read by an assign-mode consumer from the offset
the transform's group has committed for it. Its records join the batch like input
records (the join operator's ``process_right``; the later steps apply to the join's
outputs, not to the rows), and their next offsets go into the same
``send_offsets_to_transaction`` as the input's: both sides' offsets, the changelog
and the outputs commit atomically, and every revoke, abort or rewind re-positions
the right side at the group's committed offsets.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from app.codecs.decoders import Decoder
from app.codecs.registry import RegistryEncoder
from app.codecs.tokens import CodecError, TokenCodec
from app.kafka.clients import TP, AssignedConsumer, InRecord
from app.observability.hooks import Hooks
from app.runtime.batch import Batch, BatchAborted, TopicRecords
from app.runtime.consuming import ConsumingRunner
from app.runtime.stage import StageContext
from app.state.manager import StateManager
from app.transforms.chain import CompiledChain

if TYPE_CHECKING:  # pyarrow is loaded only by a transform that has a columnar chain
    from app.transforms.columnar import ColumnarChain

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
        encoder: RegistryEncoder | None = None,
        columnar: ColumnarChain | None = None,
        right: tuple[str, Decoder] | None = None,
    ) -> None:
        super().__init__(ctx, name=name, input_topic=input_topic, decoder=decoder, hooks=hooks)
        self.chain = chain
        self.codec = TokenCodec()
        self.encoder = encoder  # Confluent-framed output (output_format *_registry); None: tokens
        self.state = state
        self.columnar = columnar  # the chain's declarative steps over whole batches; None: row by row
        if state is not None:
            state.on_restore = lambda p, n, rem: hooks.on_restore("transform", name, p, n, rem)
        self.pending: dict[TP, list[InRecord]] = {}
        self._idle_since: float | None = None
        self._next_cut: float | None = None  # when the next batch closes (see _cut_at)
        # an interval join's right topic and its decoder; its reader and the partitions it reads
        self.right_topic: str | None = right[0] if right is not None else None
        self.right_decode: Decoder | None = right[1] if right is not None else None
        self._right_reader: AssignedConsumer | None = None
        self._right_parts: set[int] = set()

    # -- an interval join's right side ---------------------------------------------------
    def _right(self) -> AssignedConsumer:
        if self._right_reader is None:
            self._right_reader = AssignedConsumer(self.ctx.bootstrap, extra=self.ctx.kafka_extra)
        return self._right_reader

    def _right_tps(self, partitions: list[int] | set[int]) -> list[TP]:
        assert self.right_topic is not None
        return [(self.right_topic, p) for p in sorted(partitions)]

    def _right_assign(self, partitions: list[int]) -> None:
        """Read right partition p for each input partition p, from the group's committed offset."""
        new = [p for p in partitions if p not in self._right_parts]
        if self.right_topic is None or not new:
            return
        committed = self.consumer.committed(self._right_tps(new))
        for (t, p), off in committed.items():
            self._right().assign(t, p, off)
            self._right_parts.add(p)

    def _right_drop(self, partitions: list[int] | set[int]) -> None:
        gone = [p for p in partitions if p in self._right_parts]
        if self.right_topic is None or not gone:
            return
        for tp in self._right_tps(gone):
            self.pending.pop(tp, None)
        self._right().unassign(self._right_tps(gone))
        self._right_parts.difference_update(gone)

    def _right_rewind(self) -> None:
        """Back to the group's committed offsets of every right partition read."""
        if self.right_topic is None or not self._right_parts:
            return
        reader = self._right()
        for (t, p), off in self.consumer.committed(self._right_tps(self._right_parts)).items():
            reader.seek(t, p, off)  # the group's offsets: the reader's own group commits nothing

    def _partitions(self, parts: list[TP]) -> list[int]:
        return [p for t, p in parts if t == self.input_topic]

    def assigned(self, parts: list[TP]) -> None:
        if self.state is not None:  # restore before the first row of these partitions
            try:
                self.state.assign(self._partitions(parts))
            except BaseException:
                log.exception("transform %s: restoring state for %s failed", self.name, parts)
                raise
        self._right_assign(self._partitions(parts))
        return None

    def revoked(self, parts: list[TP]) -> None:
        for tp in parts:
            self.pending.pop(tp, None)
        self._right_drop(self._partitions(parts))
        if self.state is not None:
            self.state.revoke(self._partitions(parts))

    def close(self) -> None:
        if self.columnar is not None:
            c = self.columnar
            log.info(
                "transform %s: %d batches on the columnar path, %d on the row path",
                self.name,
                c.batches - c.fallbacks,
                c.fallbacks,
            )
        if self.state is not None:
            self.state.close()
        if self._right_reader is not None:
            self._right_reader.close()

    def drop_all(self) -> None:
        self._right_drop(set(self._right_parts))
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
        self._right_rewind()

    def drained(self, idle_since: float | None) -> bool:
        """The input drained, and (an interval join) every right partition read to its end."""
        if not super().drained(idle_since):
            return False
        if self.right_topic is None:
            return True
        tps = self._right_tps(self._right_parts)
        if not tps:
            return False
        reader = self._right()
        ends, pos = reader.end_offsets(tps), reader.position(tps)
        unknown = [tp for tp in tps if pos.get(tp) is None]
        if unknown:  # nothing fetched yet: the committed offset is where it stands
            pos.update(self.consumer.committed(unknown))
        self.progress.lag = (self.progress.lag or 0) + sum(max(0, ends[tp] - (pos.get(tp) or 0)) for tp in tps)
        return all(ends[tp] - (pos.get(tp) or 0) <= 1 for tp in tps)

    def _cut_at(self) -> float:
        """When this batch closes: one commit interval after the previous batch closed,
        so the interval is the commit cadence and the time spent transforming and
        committing a batch is not added to the next one's wait (a row waits at most one
        interval plus one commit). A batch due already (the last one took longer than an
        interval) takes what is fetched and closes at once."""
        now = time.monotonic()
        cut = self._next_cut
        if cut is None:
            return now + self.ctx.interval_s
        return max(cut, now)

    def step(self) -> bool:
        ctx = self.ctx
        deadline = self._cut_at()
        count = 0
        while count < ctx.max_rows:
            left = max(0.0, deadline - time.monotonic())
            if self._right_parts:  # an interval join: its right side too, half the wait each
                recs = self.consumer.consume(min(ctx.max_rows - count, 10_000), min(left, 0.05))
                room = min(ctx.max_rows - count - len(recs), 10_000)
                if room > 0:
                    recs += self._right().consume(room, min(left, 0.05))
            else:
                recs = self.consumer.consume(min(ctx.max_rows - count, 10_000), min(left, 0.1))
            for rec in recs:
                self.pending.setdefault((rec.topic, rec.partition), []).append(rec)
            count += len(recs)
            if left <= 0 and not recs:  # past the cut: take what is already fetched, then close
                break
        # the next batch closes one interval after this one (earlier than planned when
        # max_rows closed it)
        self._next_cut = min(deadline, time.monotonic()) + ctx.interval_s
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
        by_topic: dict[str, tuple[list[Any], list[bytes]]] = {}  # encoded values and keys per output topic
        dlq: list[bytes] = []
        reasons: dict[str, int] = {}
        offsets: list[tuple[str, int, int]] = []
        rows_in = 0
        decode, chain, state, encoder, columnar = self.decode, self.chain, self.state, self.encoder, self.columnar
        encode_token = self.codec.encode

        def refuse(rec: InRecord, reason: str, message: str) -> None:
            dlq.append(self.dead_letter(rec, reason, message))
            reasons[reason] = reasons.get(reason, 0) + 1

        partitions = sorted({p for _t, p in self.pending})  # an interval join: two topics per partition
        if state is not None:
            state.begin_batch(partitions)
        for (topic, partition), recs in self.pending.items():
            if state is not None and partition not in state.stores:
                raise RuntimeError(f"transform {self.name}: no state store for {topic}/{partition} (not restored)")
            rows_in += len(recs)
            offsets.append((topic, partition, recs[-1].offset + 1))
            fast = columnar.run(topic, partition, recs) if columnar is not None else None
            if fast is not None:  # same records, same bytes as the row path below
                for label, n in fast.dropped.items():
                    chain.count_dropped(label, n)
                for dest, (values, keys) in fast.outputs.items():
                    entry = by_topic.get(dest)
                    if entry is None:
                        entry = by_topic[dest] = ([], [])
                    entry[0].extend(values)
                    entry[1].extend(keys)
                continue
            right = topic == self.right_topic
            decode_rec = self.right_decode if right and self.right_decode is not None else decode
            for rec in recs:
                try:
                    token = decode_rec(rec)
                except CodecError as exc:
                    refuse(rec, exc.reason_class, str(exc))
                    continue
                try:
                    if self.right_topic is not None and state is not None:
                        outs = self._join_row(partition, token, right, rec, refuse)
                    else:
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
                if encoder is not None:  # every output of the row fits its schema, or the row is refused
                    try:
                        encoded: list[tuple[str, Any, Any]] = [
                            (dest, encoder.encode(dest, out["payload"]), out) for dest, out in outs
                        ]
                    except CodecError as exc:
                        refuse(rec, exc.reason_class, str(exc))
                        continue
                else:
                    encoded = [(dest, encode_token(out), out) for dest, out in outs]
                for dest, value, out in encoded:
                    entry = by_topic.get(dest)
                    if entry is None:
                        entry = by_topic[dest] = ([], [])
                    entry[0].append(value)
                    entry[1].append((out["key"] or out["token_id"]).encode())
        if state is not None:  # the operator's own refusals (e.g. table records) commit with the batch
            for reason, record in state.take_dead_letters():
                dlq.append(record)
                reasons[reason] = reasons.get(reason, 0) + 1
        header = [] if encoder is not None else [self.codec.header]  # framed records carry their schema id
        outputs = [TopicRecords(dest, values, list[Any](keys), header) for dest, (values, keys) in by_topic.items()]
        batch = Batch(
            outputs=outputs,
            dlq=dlq,
            dlq_reasons=reasons,
            offsets=offsets,
            rows_in=rows_in,
            filtered=chain.take_dropped(),
        )
        if state is not None:
            batch.changelog = state.changelog_records(partitions)
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
            self._right_rewind()
            return
        self.account(report)

    def _join_row(
        self, partition: int, token: Any, right: bool, rec: InRecord, refuse: Callable[[InRecord, str, str], None]
    ) -> list[tuple[str, Any]]:
        """One row of an interval join (``right``: of its right topic): the join first,
        then the transform's later steps on each of its outputs. An output those steps
        fail on is refused alone (DLQ ``transform_error`` with the record that produced
        it, naming the output); the row's join state stays, so the set of pairs stays
        independent of how the two sides interleave."""
        state = self.state
        assert state is not None and self.chain.default_output is not None
        out: list[tuple[str, Any]] = []
        for _dest, joined in state.process_row(partition, [(self.chain.default_output, token)], right=right):
            try:
                out.extend(self.chain(joined))
            except Exception as exc:
                refuse(rec, "transform_error", f"join output {joined['token_id']}: {type(exc).__name__}: {exc}")
        return out
