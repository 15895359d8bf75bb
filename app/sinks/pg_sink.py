"""PostgreSQL behind the seam's sink protocol: the database transaction is the commit point.

* ``prepare`` collects the part's rows in order (no I/O: nothing to stage);
* ``commit_external`` runs the part's DB transaction (``PostgresWriter.write_part``):
  rows upserted by token id plus the compare-and-set of the partition's stored
  offset from the one this worker last saw. A refused CAS raises ``CasFailed``
  (a ``SinkFenced``): another owner moved the partition and nothing was written (I5).
  Rows the database refused come back as ``db_rejected`` rejects;
* ``finalize`` / ``discard``: nothing (a committed DB transaction is visible; an
  uncommitted one rolled back);
* ``recover``: the stored offsets are authoritative. Consumption starts there, and
  where Kafka's group offset lags them the plan reconciles the range (offsets and
  DLQ records for the rejects the database recorded).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from app.journal.events import JournalEvent, PartInfo
from app.sinks.base import DB_REJECTED, TP, Outcome, PartRows, Prepared, Reconcile, RecoveryPlan, Reject, StoreCommitted
from app.sinks.postgres import PostgresWriter
from app.tokens import Token


class PostgresSink(StoreCommitted):
    """``Sink`` over one ``PostgresWriter`` (one table)."""

    external = True
    two_phase = False

    def __init__(self, db: PostgresWriter) -> None:
        self.db = db
        self.name = db.sink
        self.expected: dict[TP, int | None] = {}  # stored next offset per partition, as last seen

    def prepare(self, part: PartRows) -> Prepared:
        tokens: list[Token] = []
        offsets: list[int] = []
        for chunk in part.chunks():
            tokens.extend(chunk.tokens)
            offsets.extend(chunk.offsets)
        info = PartInfo(
            self.name,
            part.topic,
            part.partition,
            part.first_offset,
            part.last_offset,
            len(tokens),
            0,
            "",
            "",
            f"postgres:{self.db.table}",
        )
        return Prepared(info, [], (tokens, offsets))

    def commit_external(self, prepared: Prepared) -> Outcome:
        info = prepared.info
        tokens, offsets = prepared.state
        tp, nxt = (info.topic, info.partition), info.last_offset + 1
        try:
            res = self.db.write_part(info.topic, info.partition, self.expected.get(tp), nxt, tokens, offsets)
        except BaseException:
            self.expected.pop(tp, None)  # unknown now: recovery reads it again
            raise
        self.expected[tp] = nxt
        rejects = [Reject(offsets[i], DB_REJECTED, err) for i, err in res.rejects]
        return Outcome(replace(info, rows=res.written), rejects)

    def recover(
        self,
        partitions: Sequence[TP],
        committed: Mapping[TP, int | None],
        journal: Callable[[], Mapping[str, JournalEvent]],
    ) -> RecoveryPlan:
        plan = RecoveryPlan()
        by_topic: dict[str, list[int]] = {}
        for t, p in partitions:
            by_topic.setdefault(t, []).append(p)
        for topic, ps in by_topic.items():
            stored = self.db.stored_offsets(topic, ps)
            for p in ps:
                tp = (topic, p)
                self.expected[tp] = stored.get(p)
                if p not in stored:
                    continue
                plan.seek[tp] = stored[p]
                kafka_at = committed.get(tp) or 0
                if kafka_at < stored[p]:
                    rejects = self.db.rejects(topic, p, kafka_at, stored[p])
                    plan.reconcile.append(Reconcile(topic, p, kafka_at, stored[p], rejects))
        return plan

    def forget(self, partitions: Sequence[TP]) -> None:
        for tp in partitions:
            self.expected.pop(tp, None)
