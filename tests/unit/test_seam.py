"""The commit seam without a broker: a recording producer, sink and hooks share one event
list, so each test pins the exact order of the durability steps (issue 15).

Every call is recorded as one string:

* producer: ``begin``, ``commit``, ``abort``, ``send_offsets [...]``, ``serve_callbacks``,
  ``dlq <record>`` (DLQ topic), ``journal <kind> <key>`` (journal topic),
  ``produce_batch <topic> x<n>``;
* sink: ``prepare|commit_external|finalize|discard <topic>/<partition>@<first>``,
  ``remove_staging <location>``;
* hooks: ``on_commit``, ``on_abort``, ``on_fenced``, ``on_part_finalized <part>``,
  ``on_recovery <action>``, ``on_staging_leftovers <n>``;
* crash points (recorded, never crashing): ``crash:<point>``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

import app.runtime.commit as seam_mod
from app.codecs.dlq import DLQ_FINGERPRINT
from app.codecs.tokens import SCHEMA_HEADER
from app.journal.events import PartInfo, decode_event
from app.journal.keys import part_key
from app.journal.writer import Correlation, checkpoint_event
from app.kafka.errors import AbortableKafkaError, FatalKafkaError, RetriableKafkaError
from app.observability.hooks import Hooks, NullHooks
from app.runtime.batch import Batch, BatchAborted, CommitReport, ProducerLost, TopicRecords
from app.runtime.commit import CommitSeam
from app.sinks.base import (
    DB_REJECTED,
    UNWRITABLE,
    Chunk,
    Outcome,
    PartMissingError,
    PartRows,
    Prepared,
    Reconcile,
    RecoveryPlan,
    Reject,
    SinkFenced,
)
from app.sinks.files import FileSink
from app.sources.base import Checkpoint
from app.tokens import Token

CORR = Correlation("p", "sink", "w1", "r1")


# -- recording stand-ins ----------------------------------------------------------------


class RecConsumer:
    """Where offsets are sent: only passed through to ``send_offsets``."""


class RecProducer:
    """Duck-typed ``TxnProducer``; ``fail(op, exc, nth)`` raises ``exc`` at the nth call of ``op``."""

    transactional_id = "tid-1"

    def __init__(self, ev: list[str], consumer: RecConsumer) -> None:
        self.ev = ev
        self.consumer = consumer
        self.counts: dict[str, int] = {}
        self.failures: dict[tuple[str, int], Exception] = {}
        self.dlq_headers: list[Any] = []
        self.journal: list[Any] = []  # decoded journal events, in produce order
        self.pending_last: list[tuple[Any, int]] = []
        self.next_offset = 40
        self.closed = False

    def fail(self, op: str, exc: Exception, nth: int = 1, times: int = 1) -> None:
        for k in range(nth, nth + times):
            self.failures[(op, k)] = exc

    def _hit(self, op: str, label: str | None = None) -> None:
        self.ev.append(label or op)
        self.counts[op] = n = self.counts.get(op, 0) + 1
        exc = self.failures.get((op, n))
        if exc is not None:
            raise exc

    def init(self, timeout: float = 60.0) -> None:
        self._hit("init")

    def begin(self) -> None:
        self._hit("begin")

    def produce(
        self, topic: str, value: bytes | None, key: bytes | None = None, headers: Any = None, partition: int = -1
    ) -> None:
        assert value is not None
        if topic == "dlq":
            self.dlq_headers.append(headers)
            self._hit("produce", f"dlq {value.decode()}")
        elif topic == "journal":
            ev = decode_event(value)
            assert key == ev.key.encode()
            self.journal.append(ev)
            self._hit("produce", f"journal {ev.kind} {ev.key}")
        else:
            self._hit("produce", f"produce {topic}")

    def produce_batch(
        self,
        topic: str,
        values: Sequence[bytes | None],
        keys: Sequence[bytes | None],
        headers: Any = None,
        *,
        partition: int = -1,
        on_last: Any = None,
    ) -> None:
        assert len(values) == len(keys)
        self._hit(
            "produce_batch", f"produce_batch {topic} x{len(values)}" + (f" p{partition}" if partition >= 0 else "")
        )
        self.next_offset += len(values)
        if on_last is not None:
            self.pending_last.append((on_last, self.next_offset - 1))

    def send_offsets(self, offsets: Sequence[tuple[str, int, int]], consumer: Any) -> None:
        assert consumer is self.consumer, "offsets must go with the runner's consumer (its group metadata)"
        self._hit("send_offsets", f"send_offsets {list(offsets)}")

    def commit(self, timeout: float = 60.0) -> None:
        self._hit("commit")

    def abort(self, timeout: float = 60.0) -> None:
        self._hit("abort")

    def serve_callbacks(self) -> None:
        self._hit("serve_callbacks")
        for cb, offset in self.pending_last:
            cb(offset)
        self.pending_last.clear()

    def close(self) -> None:
        self.closed = True
        self.ev.append("close")


def _pid(topic: str, partition: int, first: int) -> str:
    return f"{topic}/{partition}@{first}"


class RecSink:
    """A ``Sink`` of either kind: ``files`` (two-phase) or ``pg`` (transactional)."""

    def __init__(self, ev: list[str], kind: str) -> None:
        self.ev = ev
        self.kind = kind
        self.name = "s"
        self.external = kind == "pg"
        self.two_phase = kind == "files"
        self.prepare_rejects: dict[int, str] = {}  # offset -> message: refused by prepare
        self.db_rejects: dict[int, str] = {}  # offset -> message: refused by commit_external
        self.fence: set[str] = set()  # parts whose commit_external raises SinkFenced
        self.broken: set[str] = set()  # parts whose prepare raises OSError (sink unusable)
        self.missing: set[str] = set()  # parts whose finalize raises PartMissingError
        self.already_final: set[str] = set()  # parts whose finalize returns False

    def prepare(self, part: PartRows) -> Prepared:
        pid = _pid(part.topic, part.partition, part.first_offset)
        self.ev.append(f"prepare {pid}")
        if pid in self.broken:
            raise OSError(f"disk full preparing {pid}")
        rows, rejects, offsets = 0, [], []
        for chunk in part.chunks():
            for off in chunk.offsets:
                if off in self.prepare_rejects:
                    rejects.append(Reject(off, UNWRITABLE, self.prepare_rejects[off]))
                else:
                    rows += 1
                    offsets.append(off)
        staging = f"/staging/{pid}.tmp" if self.two_phase else ""
        info = PartInfo(
            self.name,
            part.topic,
            part.partition,
            part.first_offset,
            part.last_offset,
            rows,
            10 * rows,
            "c",
            staging,
            f"/final/{pid}",
        )
        return Prepared(info, rejects, offsets)

    def commit_external(self, prepared: Prepared) -> Outcome:
        info = prepared.info
        pid = _pid(info.topic, info.partition, info.first_offset)
        self.ev.append(f"commit_external {pid}")
        if pid in self.fence:
            raise SinkFenced(f"{pid}: stored offset moved")
        if not self.external:
            return Outcome(info)
        refused = [Reject(off, DB_REJECTED, self.db_rejects[off]) for off in prepared.state if off in self.db_rejects]
        return Outcome(replace(info, rows=info.rows - len(refused)), refused)

    def finalize(self, info: PartInfo) -> bool:
        pid = _pid(info.topic, info.partition, info.first_offset)
        self.ev.append(f"finalize {pid}")
        if pid in self.missing:
            raise PartMissingError(pid)
        return pid not in self.already_final

    def discard(self, prepared: Prepared) -> None:
        info = prepared.info
        self.ev.append(f"discard {_pid(info.topic, info.partition, info.first_offset)}")

    def remove_staging(self, location: str) -> None:
        self.ev.append(f"remove_staging {location}")

    def recover(self, partitions: Any, committed: Any, journal: Any) -> RecoveryPlan:
        raise AssertionError("the seam never plans recovery itself")

    def forget(self, partitions: Any) -> None:
        raise AssertionError("the seam never forgets partitions")


class RecHooks(NullHooks):
    def __init__(self, ev: list[str]) -> None:
        self.ev = ev
        self.reports: list[CommitReport] = []
        self.txn_open: list[bool] = []

    def on_commit(self, report: CommitReport) -> None:
        self.ev.append("on_commit")
        self.reports.append(report)

    def on_abort(self, stage: str, name: str, reason: str) -> None:
        self.ev.append("on_abort")

    def on_fenced(self, stage: str, name: str) -> None:
        self.ev.append("on_fenced")

    def on_part_finalized(self, stage: str, name: str, part: PartInfo) -> None:
        self.ev.append(f"on_part_finalized {_pid(part.topic, part.partition, part.first_offset)}")

    def on_recovery(self, stage: str, name: str, action: str) -> None:
        self.ev.append(f"on_recovery {action}")

    def on_staging_leftovers(self, stage: str, name: str, count: int) -> None:
        self.ev.append(f"on_staging_leftovers {count}")

    def on_txn_open(self, stage: str, name: str, open_: bool) -> None:
        self.txn_open.append(open_)


@dataclass
class RecPart:
    """A ``SinkInput``: rows at ``offsets``; those in ``bad`` cannot be decoded (found, like
    ``OpenPart``, only while ``chunks`` runs)."""

    topic: str
    partition: int
    offsets: list[int]
    bad: dict[int, str] = field(default_factory=dict)  # offset -> decode error class
    payloads: dict[int, dict[str, Any]] = field(default_factory=dict)  # offset -> payload (default {"i": offset})
    failed: list[tuple[str, bytes]] = field(default_factory=list)

    @property
    def first_offset(self) -> int:
        return self.offsets[0]

    @property
    def last_offset(self) -> int:
        return self.offsets[-1]

    @property
    def records_in(self) -> int:
        return len(self.offsets)

    def chunks(self) -> Iterator[Chunk]:
        self.failed = []
        tokens: list[Token] = []
        offsets: list[int] = []
        for off in self.offsets:
            if off in self.bad:
                self.failed.append((self.bad[off], self.dead_letter(off, self.bad[off], "undecodable")))
                continue
            tokens.append(
                Token(
                    token_id=f"x:{off}",
                    key=None,
                    payload=self.payloads.get(off, {"i": off}),
                    source_id="x",
                    source_position=str(off),
                    event_time_ms=None,
                    lineage=[],
                )
            )
            offsets.append(off)
        if tokens:
            yield Chunk(tokens, offsets, [10] * len(tokens))

    def undecodable(self) -> list[tuple[str, bytes]]:
        return self.failed

    def dead_letter(self, offset: int, reason: str, message: str) -> bytes:
        assert offset in self.offsets
        return f"{self.topic}/{self.partition}@{offset} {reason}: {message}".encode()


@dataclass
class Rig:
    ev: list[str]
    producer: RecProducer
    sink: RecSink
    hooks: RecHooks
    consumer: RecConsumer
    seam: CommitSeam
    sleeps: list[float]


@pytest.fixture
def rig(monkeypatch: pytest.MonkeyPatch) -> Any:
    sleeps: list[float] = []
    monkeypatch.setattr(seam_mod.time, "sleep", sleeps.append)  # retries wait without waiting

    def make(kind: str = "files", stage: str = "sink") -> Rig:
        ev: list[str] = []
        monkeypatch.setattr(seam_mod, "crash_point", lambda point: ev.append(f"crash:{point}"))
        consumer = RecConsumer()
        producer = RecProducer(ev, consumer)
        sink = RecSink(ev, kind)
        hooks = RecHooks(ev)
        _: Hooks = hooks
        seam = CommitSeam(
            stage=stage,
            name="s",
            producer=producer,  # type: ignore[arg-type]
            corr=CORR,
            journal_topic="journal",
            dlq_topic="dlq",
            consumer=consumer,  # type: ignore[arg-type]
            sink=sink,
            hooks=hooks,
        )
        return Rig(ev, producer, sink, hooks, consumer, seam, sleeps)

    return make


def _key(topic: str, partition: int, first: int) -> str:
    return part_key("s", topic, partition, first)


def _since(ev: list[str], marker: str) -> list[str]:
    """Events after the last ``marker``."""
    i = len(ev) - 1 - ev[::-1].index(marker)
    return ev[i + 1 :]


ABORTABLE = AbortableKafkaError("commit_transaction", 48, "INVALID_TXN_STATE", "abortable")
RETRIABLE = RetriableKafkaError("commit_transaction", 7, "REQUEST_TIMED_OUT", "timed out")
FENCED = FatalKafkaError("commit_transaction", 90, "PRODUCER_FENCED", "fenced", fenced=True)
FATAL = FatalKafkaError("commit_transaction", -1, "UNKNOWN", "fatal", fenced=False)


# -- the exact order, per sink kind ---------------------------------------------------


def test_two_phase_sink_exact_order(rig: Any) -> None:
    r: Rig = rig("files")
    a, b = RecPart("t", 0, [0, 1, 2]), RecPart("t", 1, [5, 6])
    report = r.seam.commit_parts([a, b])
    assert r.ev == [
        "prepare t/0@0",
        "prepare t/1@5",
        "crash:sink.after_prepare",
        "commit_external t/0@0",
        "commit_external t/1@5",
        "begin",
        "crash:sink.after_produce",
        f"journal part_committed {_key('t', 0, 0)}",
        f"journal part_committed {_key('t', 1, 5)}",
        "crash:journal.after_write",
        "send_offsets [('t', 0, 3), ('t', 1, 7)]",
        "crash:sink.before_commit",
        "commit",
        "crash:sink.after_commit",
        "on_commit",
        "crash:sink.after_commit_before_finalize",
        "finalize t/0@0",
        "crash:sink.after_finalize",
        "on_part_finalized t/0@0",
        "finalize t/1@5",
        "crash:sink.after_finalize",
        "on_part_finalized t/1@5",
    ]
    assert r.hooks.reports == [report]
    assert (report.rows_in, report.rows_out, report.parts, dict(report.dlq)) == (5, 5, 2, {})
    assert report.offsets == (("t", 0, 3), ("t", 1, 7))
    assert (report.stage, report.name, report.checkpoints) == ("sink", "s", 0)
    committed = [ev.part for ev in r.producer.journal]
    assert [(p.topic, p.partition, p.first_offset, p.last_offset, p.rows) for p in committed] == [
        ("t", 0, 0, 2, 3),
        ("t", 1, 5, 6, 2),
    ]
    assert r.seam.has_pending  # the part_finalized events wait for the next transaction
    assert r.hooks.txn_open == [True, False]


def test_transactional_sink_exact_order(rig: Any) -> None:
    r: Rig = rig("pg")
    report = r.seam.commit_parts([RecPart("t", 0, [0, 1, 2]), RecPart("t", 1, [5, 6])])
    assert r.ev == [
        "prepare t/0@0",
        "prepare t/1@5",
        "crash:sink.after_prepare",
        "commit_external t/0@0",
        "commit_external t/1@5",
        "crash:sink.db_after_commit_before_kafka",
        "begin",
        "crash:sink.after_produce",
        f"journal part_committed {_key('t', 0, 0)}",
        f"journal part_committed {_key('t', 1, 5)}",
        "crash:journal.after_write",
        "send_offsets [('t', 0, 3), ('t', 1, 7)]",
        "crash:sink.before_commit",
        "commit",
        "crash:sink.after_commit",
        "on_commit",
    ]
    assert (report.rows_in, report.rows_out, report.parts) == (5, 5, 2)
    assert not r.seam.has_pending  # nothing to finalize


def test_part_finalized_rides_in_the_next_transaction(rig: Any) -> None:
    r: Rig = rig("files")
    r.seam.commit_parts([RecPart("t", 0, [0, 1])])
    first_txn = r.ev[r.ev.index("begin") : r.ev.index("commit")]
    assert not [e for e in first_txn if e.startswith("journal part_finalized")]
    mark = len(r.ev)
    r.seam.commit_parts([RecPart("t", 0, [2, 3])])
    second = r.ev[mark:]
    assert second[second.index("begin") + 1 : second.index("send_offsets [('t', 0, 4)]")] == [
        "crash:sink.after_produce",
        f"journal part_finalized {_key('t', 0, 0)}",
        f"journal part_committed {_key('t', 0, 2)}",
        "crash:journal.after_write",
    ]
    kinds = [(ev.kind, ev.part.first_offset) for ev in r.producer.journal if ev.part is not None]
    assert kinds == [("part_committed", 0), ("part_finalized", 0), ("part_committed", 2)]
    # an idle runner flushes the queued events with an empty batch; it passes no point
    # that only a batch of parts has (so "hit N" of those points counts batches of rows)
    mark = len(r.ev)
    r.seam.commit_parts([])
    assert r.ev[mark:] == [
        "begin",
        "crash:sink.after_produce",
        f"journal part_finalized {_key('t', 0, 2)}",
        "crash:journal.after_write",
        "crash:sink.before_commit",
        "commit",
        "crash:sink.after_commit",
        "on_commit",
    ]
    assert not r.seam.has_pending


# -- rows out, DLQ ----------------------------------------------------------------------


def test_transactional_sink_rows_out_are_the_written_rows_reported_after_the_commit(rig: Any) -> None:
    """Issue 15 defect 2: the PostgreSQL sink's rows out."""
    r: Rig = rig("pg")
    r.sink.db_rejects = {1: "null value in column id"}
    report = r.seam.commit_parts([RecPart("t", 0, [0, 1, 2])])
    assert (report.rows_in, report.rows_out, report.parts, dict(report.dlq)) == (3, 2, 1, {DB_REJECTED: 1})
    assert r.hooks.reports == [report]
    assert r.ev.index("on_commit") > r.ev.index("commit")
    assert r.producer.journal[0].part.rows == 2  # part_committed records what was written
    assert r.ev.index("dlq t/0@1 db_rejected: null value in column id") < r.ev.index(
        f"journal part_committed {_key('t', 0, 0)}"
    )


@pytest.mark.parametrize("kind", ["files", "pg"])
def test_refused_and_undecodable_rows_go_to_the_dlq_inside_the_transaction(rig: Any, kind: str) -> None:
    r: Rig = rig(kind)
    r.sink.prepare_rejects = {2: "payload field 'nested': does not fit"}
    r.sink.db_rejects = {3: "value too long"}
    part = RecPart("t", 0, [0, 1, 2, 3, 4], bad={1: "bad_json"})
    report = r.seam.commit_parts([part])
    refused = ["dlq t/0@1 bad_json: undecodable", "dlq t/0@2 unwritable_row: payload field 'nested': does not fit"]
    if kind == "pg":
        refused.append("dlq t/0@3 db_rejected: value too long")
    begin, commit = r.ev.index("begin"), r.ev.index("commit")
    txn = r.ev[begin:commit]
    assert [e for e in txn if e.startswith("dlq ")] == refused
    assert [e for e in r.ev if e.startswith("dlq ")] == refused  # nowhere else
    assert txn.index(refused[-1]) < txn.index(f"journal part_committed {_key('t', 0, 0)}")
    assert r.producer.dlq_headers == [[(SCHEMA_HEADER, DLQ_FINGERPRINT)]] * len(refused)
    expect = {"bad_json": 1, UNWRITABLE: 1, **({DB_REJECTED: 1} if kind == "pg" else {})}
    assert dict(report.dlq) == expect
    assert report.rows_in == 5 and report.rows_out == 5 - len(refused)
    assert "send_offsets [('t', 0, 5)]" in txn  # refused rows are committed past, never re-read


def test_a_two_phase_part_without_rows_is_discarded_and_never_committed(rig: Any) -> None:
    r: Rig = rig("files")
    r.sink.prepare_rejects = {0: "too large"}
    report = r.seam.commit_parts([RecPart("t", 0, [0, 1], bad={1: "bad_json"}), RecPart("t", 1, [4])])
    assert r.ev == [
        "prepare t/0@0",
        "prepare t/1@4",
        "crash:sink.after_prepare",
        "commit_external t/0@0",
        "commit_external t/1@4",
        "discard t/0@0",
        "begin",
        "crash:sink.after_produce",
        "dlq t/0@1 bad_json: undecodable",
        "dlq t/0@0 unwritable_row: too large",
        f"journal part_committed {_key('t', 1, 4)}",
        "crash:journal.after_write",
        "send_offsets [('t', 0, 2), ('t', 1, 5)]",
        "crash:sink.before_commit",
        "commit",
        "crash:sink.after_commit",
        "on_commit",
        "crash:sink.after_commit_before_finalize",
        "finalize t/1@4",
        "crash:sink.after_finalize",
        "on_part_finalized t/1@4",
    ]
    assert (report.parts, report.rows_out, report.rows_in) == (1, 1, 3)


def test_the_file_sinks_poison_row_goes_to_the_dlq_in_the_transaction_that_skips_it(rig: Any, tmp_path: Path) -> None:
    """Issue 15 defect 1 through the seam with the real Parquet file sink."""
    r: Rig = rig("files")
    sink = FileSink("s", tmp_path, "parquet")
    r.seam.sink = sink
    payloads = {off: {"nested": {"a": [1, 2, off]}} for off in range(10, 15)}
    payloads[12] = {"nested": {"a": [1, 2, {"b": None}]}}
    report = r.seam.commit_parts([RecPart("t", 0, list(range(10, 15)), payloads=payloads)])
    txn = r.ev[r.ev.index("begin") : r.ev.index("commit")]
    dlq = [e for e in txn if e.startswith("dlq ")]
    assert len(dlq) == 1 and dlq[0].startswith("dlq t/0@12 unwritable_row: payload field 'nested'")
    assert txn.index(dlq[0]) < txn.index(f"journal part_committed {_key('t', 0, 10)}")
    assert "send_offsets [('t', 0, 15)]" in txn
    assert (report.rows_in, report.rows_out, dict(report.dlq)) == (5, 4, {UNWRITABLE: 1})
    final = sink.final_path("t", 0, 10, 14)
    assert [row["_token_id"] for row in pq.read_table(final).to_pylist()] == ["x:10", "x:11", "x:13", "x:14"]
    assert sink.leftover_staging("t", 0) == []


# -- failures ---------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["begin", "produce", "send_offsets", "commit"])
def test_abort_discards_the_two_phase_parts_and_never_finalizes(rig: Any, op: str) -> None:
    r: Rig = rig("files")
    r.producer.fail(op, ABORTABLE)
    with pytest.raises(BatchAborted) as info:
        r.seam.commit_parts([RecPart("t", 0, [0, 1]), RecPart("t", 1, [3])])
    assert info.value.external_committed is False
    labels = {
        "produce": f"journal part_committed {_key('t', 0, 0)}",
        "send_offsets": "send_offsets [('t', 0, 2), ('t', 1, 4)]",
    }
    failed = r.ev.index(labels.get(op, op))
    assert r.ev[failed + 1 :] == ["on_abort", "abort", "discard t/0@0", "discard t/1@3"]
    assert not [e for e in r.ev if e.startswith(("finalize", "on_commit", "on_part_finalized"))]
    assert r.ev.count("commit") == (1 if op == "commit" else 0)
    assert r.hooks.reports == []
    assert r.hooks.txn_open == [True, False]


def test_abort_keeps_queued_part_finalized_events_for_the_next_transaction(rig: Any) -> None:
    r: Rig = rig("files")
    r.seam.commit_parts([RecPart("t", 0, [0])])
    r.producer.fail("commit", ABORTABLE, nth=2)
    with pytest.raises(BatchAborted):
        r.seam.commit_parts([RecPart("t", 0, [1])])
    assert r.seam.has_pending
    mark = len(r.ev)
    r.seam.commit_parts([RecPart("t", 0, [1])])
    txn = r.ev[mark:]
    assert txn[txn.index("begin") + 2 : txn.index("crash:journal.after_write")] == [
        f"journal part_finalized {_key('t', 0, 0)}",
        f"journal part_committed {_key('t', 0, 1)}",
    ]


def test_abort_of_a_transactional_sink_says_the_sink_committed(rig: Any) -> None:
    r: Rig = rig("pg")
    r.producer.fail("commit", ABORTABLE)
    with pytest.raises(BatchAborted) as info:
        r.seam.commit_parts([RecPart("t", 0, [0, 1])])
    assert info.value.external_committed is True
    assert _since(r.ev, "commit") == ["on_abort", "abort"]
    assert r.hooks.reports == []


@pytest.mark.parametrize("op", ["begin", "send_offsets", "commit"])
@pytest.mark.parametrize("kind", ["files", "pg"])
def test_a_fenced_producer_is_lost_and_nothing_is_discarded_or_finalized(rig: Any, kind: str, op: str) -> None:
    r: Rig = rig(kind)
    r.producer.fail(op, FENCED)
    with pytest.raises(ProducerLost) as info:
        r.seam.commit_parts([RecPart("t", 0, [0, 1])])
    assert (info.value.reason, info.value.operation) == ("fenced", op)
    assert "tid-1" in str(info.value)
    assert (
        r.ev[-1].split(" ")[0] == op
    )  # nothing after the failed call: no abort, no discard, no finalize, no on_commit
    assert r.hooks.reports == [] and "abort" not in r.ev
    assert r.hooks.txn_open == [True, False]


def test_a_fatal_error_at_commit_is_a_lost_producer(rig: Any) -> None:
    r: Rig = rig("files")
    r.producer.fail("commit", FATAL)
    with pytest.raises(ProducerLost) as info:
        r.seam.commit_parts([RecPart("t", 0, [0])])
    assert (info.value.reason, info.value.operation) == ("fatal", "commit")
    assert r.ev[-1] == "commit"


def test_a_producer_fenced_while_producing_is_lost(rig: Any) -> None:
    r: Rig = rig("files")
    r.producer.fail("produce", FENCED)
    with pytest.raises(ProducerLost):
        r.seam.commit_parts([RecPart("t", 0, [0])])
    assert not [e for e in r.ev if e.startswith(("discard", "finalize", "on_commit"))]


def test_a_retriable_commit_is_retried_in_the_same_transaction(rig: Any) -> None:
    r: Rig = rig("files")
    r.producer.fail("commit", RETRIABLE, times=2)
    report = r.seam.commit_parts([RecPart("t", 0, [0])])
    assert _since(r.ev, "crash:sink.before_commit")[:5] == [
        "commit",
        "commit",
        "commit",
        "crash:sink.after_commit",
        "on_commit",
    ]
    assert r.ev.count("begin") == 1 and "abort" not in r.ev
    assert len(r.sleeps) == 2 and r.hooks.reports == [report]


def test_a_commit_that_keeps_timing_out_is_a_lost_producer_nothing_discarded(rig: Any) -> None:
    r: Rig = rig("files")
    r.producer.fail("commit", RETRIABLE, times=seam_mod.MAX_RETRIES)
    with pytest.raises(ProducerLost) as info:
        r.seam.commit_parts([RecPart("t", 0, [0])])
    assert (info.value.reason, info.value.operation) == ("timed_out", "commit")
    assert _since(r.ev, "crash:sink.before_commit") == ["commit"] * seam_mod.MAX_RETRIES
    assert r.hooks.reports == []


def test_a_retriable_produce_aborts_and_discards(rig: Any) -> None:
    r: Rig = rig("files")
    r.producer.fail("produce", RETRIABLE)
    with pytest.raises(BatchAborted):
        r.seam.commit_parts([RecPart("t", 0, [0])])
    assert _since(r.ev, f"journal part_committed {_key('t', 0, 0)}") == ["on_abort", "abort", "discard t/0@0"]


def test_an_abort_that_times_out_is_a_lost_producer(rig: Any) -> None:
    r: Rig = rig("files")
    r.producer.fail("commit", ABORTABLE)
    r.producer.fail("abort", RETRIABLE, times=seam_mod.MAX_RETRIES)
    with pytest.raises(ProducerLost) as info:
        r.seam.commit_parts([RecPart("t", 0, [0])])
    assert (info.value.reason, info.value.operation) == ("timed_out", "abort")
    assert _since(r.ev, "commit") == ["on_abort", *["abort"] * seam_mod.MAX_RETRIES]  # nothing discarded


@pytest.mark.parametrize(("fenced_part", "external_committed"), [("t/0@0", False), ("t/1@5", True)])
def test_a_refused_external_commit_never_touches_kafka(rig: Any, fenced_part: str, external_committed: bool) -> None:
    r: Rig = rig("pg")
    r.sink.fence = {fenced_part}
    with pytest.raises(BatchAborted) as info:
        r.seam.commit_parts([RecPart("t", 0, [0, 1]), RecPart("t", 1, [5])])
    assert info.value.external_committed is external_committed
    assert isinstance(info.value.__cause__, SinkFenced)
    expect = ["prepare t/0@0", "prepare t/1@5", "crash:sink.after_prepare", "commit_external t/0@0"]
    if fenced_part == "t/1@5":
        expect.append("commit_external t/1@5")
    assert r.ev == [*expect, "on_fenced"]
    assert r.producer.counts == {} and r.hooks.reports == []


def test_a_sink_that_cannot_prepare_discards_what_it_prepared(rig: Any) -> None:
    r: Rig = rig("files")
    r.sink.broken = {"t/1@5"}
    with pytest.raises(OSError, match="disk full"):
        r.seam.commit_parts([RecPart("t", 0, [0]), RecPart("t", 1, [5]), RecPart("t", 2, [9])])
    assert r.ev == ["prepare t/0@0", "prepare t/1@5", "discard t/0@0"]


def test_a_finalize_that_fails_queues_no_part_finalized(rig: Any) -> None:
    r: Rig = rig("files")
    r.sink.missing = {"t/0@0"}
    with pytest.raises(PartMissingError):
        r.seam.commit_parts([RecPart("t", 0, [0]), RecPart("t", 1, [3])])
    assert _since(r.ev, "on_commit") == ["crash:sink.after_commit_before_finalize", "finalize t/0@0"]
    assert not r.seam.has_pending  # recovery re-drives it from part_committed


# -- recovery ---------------------------------------------------------------------------


def _info(topic: str, partition: int, first: int, last: int) -> PartInfo:
    pid = _pid(topic, partition, first)
    return PartInfo("s", topic, partition, first, last, last - first + 1, 1, "c", f"/staging/{pid}.tmp", f"/f/{pid}")


def test_recover_parts_finalizes_then_removes_staging_then_one_transaction(rig: Any) -> None:
    r: Rig = rig("files")
    r.sink.already_final = {"t/1@0"}
    plan = RecoveryPlan(
        finalize=[_info("t", 0, 0, 9), _info("t", 1, 0, 4)],
        discard=["/staging/t/0@10.x.tmp"],
        discard_topic="t",
    )
    r.seam.recover_parts(plan, lambda *a: pytest.fail("no reconciliation planned"))
    assert r.ev == [
        "finalize t/0@0",
        "on_recovery finalized",
        "finalize t/1@0",
        "on_recovery already_final",
        "remove_staging /staging/t/0@10.x.tmp",
        "on_staging_leftovers 1",
        "on_recovery staging_discarded",
        "begin",
        "crash:sink.after_produce",
        f"journal part_finalized {_key('t', 0, 0)}",
        f"journal part_finalized {_key('t', 1, 0)}",
        "journal recovery recovery/s/t",
        "crash:journal.after_write",
        "crash:sink.before_commit",
        "commit",
        "crash:sink.after_commit",
    ]
    assert r.producer.journal[2].detail == {"staging_discarded": "1"}
    assert not r.seam.has_pending and r.hooks.reports == []


def test_recover_parts_reconciles_a_lagging_kafka_offset_in_one_transaction(rig: Any) -> None:
    r: Rig = rig("pg")
    calls: list[tuple[str, int, int, int, Mapping[int, str]]] = []

    def reconcile_dlq(rc: Reconcile) -> list[bytes]:
        calls.append((rc.topic, rc.partition, rc.start, rc.end, rc.rejects))
        r.ev.append(f"read {rc.topic}/{rc.partition} {rc.start}..{rc.end}")
        return [f"dlq-of {off}".encode() for off in sorted(rc.rejects)]

    plan = RecoveryPlan(reconcile=[Reconcile("t", 0, 10, 20, {12: "bad", 15: "worse"})], seek={("t", 0): 20})
    r.seam.recover_parts(plan, reconcile_dlq)
    assert calls == [("t", 0, 10, 20, {12: "bad", 15: "worse"})]
    assert r.ev == [
        "on_staging_leftovers 0",
        "read t/0 10..20",
        "on_recovery reconciled_from_db",
        "begin",
        "crash:sink.after_produce",
        "dlq dlq-of 12",
        "dlq dlq-of 15",
        "journal recovery recovery/s/t/0",
        "crash:journal.after_write",
        "send_offsets [('t', 0, 20)]",
        "crash:sink.before_commit",
        "commit",
        "crash:sink.after_commit",
    ]
    detail = r.producer.journal[0].detail
    assert detail == {
        "action": "reconciled_from_db",
        "topic": "t",
        "partition": "0",
        "from": "10",
        "to": "20",
        "rejects": "2",
    }


def test_recover_parts_with_nothing_to_do_opens_no_transaction(rig: Any) -> None:
    r: Rig = rig("files")
    r.seam.recover_parts(RecoveryPlan(), lambda *a: [])
    assert r.ev == ["on_staging_leftovers 0"]


# -- sources and transforms --------------------------------------------------------------


def _transform_batch(ev: list[str]) -> Batch:
    seen: dict[str, int] = {}

    def on_last(offset: int) -> None:
        seen["changelog"] = offset
        ev.append(f"on_last {offset}")

    def after_commit() -> None:
        ev.append(f"after_commit changelog@{seen.get('changelog')}")

    cp = Checkpoint("source/x/f", "x", "/f", "fp", 4, 100, 3)
    return Batch(
        outputs=[TopicRecords("out", [b"a", b"b"], [None, b"k"]), TopicRecords("out2", [b"c"], [None])],
        changelog=[TopicRecords("cl", [b"s"], [b"k"], partition=2, on_last=on_last)],
        dlq=[b"bad-record"],
        dlq_reasons={"bad_json": 1},
        journal=[checkpoint_event(CORR, cp)],
        offsets=[("in", 0, 10)],
        after_commit=after_commit,
        rows_in=4,
        filtered={"drop": 1},
    )


def test_transform_commit_exact_order(rig: Any) -> None:
    r: Rig = rig("files", stage="transform")
    report = r.seam.commit(_transform_batch(r.ev))
    assert r.ev == [
        "begin",
        "produce_batch out x2",
        "produce_batch out2 x1",
        "crash:transform.after_produce",
        "produce_batch cl x1 p2",
        "crash:state.after_changelog_before_commit",
        "dlq bad-record",
        "journal source_checkpoint source/x/f",
        "crash:journal.after_write",
        "send_offsets [('in', 0, 10)]",
        "crash:transform.before_commit",
        "commit",
        "crash:transform.after_commit",
        "serve_callbacks",
        "on_last 43",
        "crash:state.after_commit_before_local_write",
        "after_commit changelog@43",
        "on_commit",
    ]
    assert report is not None and r.hooks.reports == [report]
    assert (report.stage, report.rows_in, report.rows_out, report.parts, report.checkpoints) == (
        "transform",
        4,
        3,
        0,
        1,
    )
    assert (dict(report.dlq), dict(report.filtered), report.offsets) == ({"bad_json": 1}, {"drop": 1}, (("in", 0, 10),))


def test_transform_commit_writes_queued_events_first(rig: Any) -> None:
    r: Rig = rig("files", stage="transform")
    r.seam.queue([checkpoint_event(CORR, Checkpoint("source/x/q", "x", "/q", "fp", 4, 1, 1))])
    batch = _transform_batch(r.ev)
    r.seam.commit(batch)
    journal = [e for e in r.ev if e.startswith("journal")]
    assert journal == ["journal source_checkpoint source/x/q", "journal source_checkpoint source/x/f"]
    assert not r.seam.has_pending


def test_transform_abort_never_applies_state_nor_reports(rig: Any) -> None:
    r: Rig = rig("files", stage="transform")
    r.producer.fail("commit", ABORTABLE)
    with pytest.raises(BatchAborted):
        r.seam.commit(_transform_batch(r.ev))
    assert _since(r.ev, "commit") == ["on_abort", "abort"]
    assert r.hooks.reports == []


def test_an_empty_batch_commits_nothing(rig: Any) -> None:
    r: Rig = rig("files", stage="source")
    assert r.seam.commit(Batch(rows_in=0)) is None
    assert r.ev == [] and r.hooks.reports == []


def test_a_source_batch_without_a_consumer_sends_no_offsets(rig: Any) -> None:
    r: Rig = rig("files", stage="source")
    report = r.seam.commit(Batch(outputs=[TopicRecords("out", [b"a"], [None])], rows_in=1))
    assert r.ev == [
        "begin",
        "produce_batch out x1",
        "crash:source.after_produce",
        "crash:journal.after_write",
        "crash:source.before_commit",
        "commit",
        "crash:source.after_commit",
        "on_commit",
    ]
    assert report is not None and report.rows_out == 1


def test_init_and_replace_producer(rig: Any) -> None:
    r: Rig = rig("files")
    r.producer.fail("init", RETRIABLE, times=seam_mod.MAX_RETRIES)
    with pytest.raises(ProducerLost) as info:
        r.seam.init()
    assert (info.value.reason, info.value.operation) == ("timed_out", "init")
    fresh = RecProducer(r.ev, r.consumer)
    old = r.producer
    r.seam.replace_producer(fresh)  # type: ignore[arg-type]
    assert r.seam.producer is fresh and old.closed and not fresh.closed
