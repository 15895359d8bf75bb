"""Thin typed clients over confluent-kafka: a transactional producer and a
read_committed batch consumer. The rest of ledgerflow sees ``InRecord`` tuples and
``(topic, partition)`` pairs, never a confluent-kafka object.

Both clients take librdkafka settings verbatim (``extra``) on top of ledgerflow's
defaults, so SASL/SSL and tuning pass straight through.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    OFFSET_STORED,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from app.kafka.errors import (
    ACCESS_CODES,
    COORDINATOR_CODES,
    FENCED_CODES,
    AbortableKafkaError,
    AccessDenied,
    FatalKafkaError,
    Identity,
    LedgerKafkaError,
    RetriableKafkaError,
    classify,
    denial,
)

log = logging.getLogger("ledgerflow.kafka")

Headers = list[tuple[str, bytes]]
TP = tuple[str, int]

# Group ids of the assign-mode readers that never join or commit (journal, ranges,
# changelog restore): ``<prefix><kind>-<uuid>``. librdkafka still looks up their
# coordinator, so a secured cluster must allow READ on this prefix (``acl plan``).
THROWAWAY_GROUP_PREFIX = "ledgerflow-"
# A group consumer whose connections are refused (authentication, TLS) for this long
# with nothing fetched stops its stage with the refusal, instead of polling forever.
REFUSAL_GRACE_S = 5.0


_DENIED_TOPIC = re.compile(r'Failed to add partition "([^"]+)" \[\d+\] to transaction: Broker: Topic authorization')


_FENCED_FATAL = "has been fenced by a newer instance"  # librdkafka's text for a fenced producer


class AccessWatch:
    """What librdkafka reports only through its error and log callbacks: a failed
    authentication (SASL, TLS) and the topics a transaction was refused on. Every log
    line is forwarded to ``ledgerflow.kafka`` unchanged (librdkafka never logs secrets)."""

    def __init__(self, who: Identity, *, forward: bool = True) -> None:
        self.who = who
        self.forward = forward  # False: keep librdkafka's lines out of the log (a probe that explains them)
        self.refused: KafkaError | None = None
        self.refused_at: float | None = None  # monotonic time of the first refusal since the last success
        self.denied_topics: set[str] = set()
        self.txn_topics: set[str] = set()  # written in the open transaction (a producer's)
        self.fenced_seen = False  # librdkafka reported its fatal error as fencing (callback or log)

    def on_error(self, err: KafkaError) -> None:
        if err.fatal() and (err.code() in FENCED_CODES or _FENCED_FATAL in err.str()):
            self.fenced_seen = True
        if err.code() in ACCESS_CODES:
            self.refused = err
            if self.refused_at is None:
                self.refused_at = time.monotonic()

    def accepted(self) -> None:
        """A call succeeded: whatever was refused before has passed."""
        self.refused, self.refused_at = None, None

    def refused_for(self) -> float:
        return 0.0 if self.refused_at is None else time.monotonic() - self.refused_at

    def log(self, level: int, fmt: str, *args: Any) -> None:
        if self.forward:
            log.log(level, fmt, *args)
        if args:
            if level >= logging.CRITICAL and _FENCED_FATAL in str(args[-1]):
                self.fenced_seen = True
            m = _DENIED_TOPIC.search(str(args[-1]))
            if m:
                self.denied_topics.add(m.group(1))

    def identity(self) -> Identity:
        """Who, and the topics refused (from librdkafka's log) or else the ones the client works on."""
        topics = tuple(sorted(self.denied_topics)) or tuple(sorted(self.txn_topics)) or self.who.topics
        return Identity(self.who.principal, self.who.transactional_id, self.who.group, topics)

    def explain(self, operation: str, error: LedgerKafkaError) -> LedgerKafkaError:
        """``error``, or the refusal behind it: a call that timed out or lost its broker
        while authentication was failing is an ``AccessDenied`` naming that."""
        if isinstance(error, AccessDenied) or self.refused is None:
            return error
        if isinstance(error, RetriableKafkaError) or error.name in (
            "_TRANSPORT",
            "_TIMED_OUT",
            "_ALL_BROKERS_DOWN",
            "_STUCK",
        ):
            code, reason = self.refused.code(), self.refused.str()
            return AccessDenied(operation, code, self.refused.name(), reason, denial(code, reason, self.identity()))
        return error

    def classify(self, operation: str, exc: KafkaException) -> LedgerKafkaError:
        """As ``classify``; a call that failed only with librdkafka's generic fatal error
        (a ``produce`` after the producer was fenced) is the fencing it reported."""
        error = classify(operation, exc, self.identity())
        if isinstance(error, FatalKafkaError) and error.fenced:
            self.fenced_seen = True  # a later generic fatal error is this fencing
        if isinstance(error, FatalKafkaError) and not error.fenced and error.name == "_FATAL" and self.fenced_seen:
            reason = f"{error.reason} (fenced by a newer instance)"
            return FatalKafkaError(operation, error.code, error.name, reason, fenced=True)
        return self.explain(operation, error)


def principal_of(conf: Mapping[str, Any]) -> str:
    """The principal a client authenticates as (SASL user name), for error messages."""
    user = conf.get("sasl.username")
    return f"User:{user}" if user else "User:ANONYMOUS"


class InRecord(NamedTuple):
    """One consumed record, detached from librdkafka. ``headers`` may be shared with
    other records of the batch: read it, never mutate it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers | None
    timestamp_ms: int | None


class TxnProducer:
    """Transactional producer. Every method raises only ``app.kafka.errors`` classes."""

    def __init__(
        self,
        bootstrap: str,
        transactional_id: str,
        *,
        transaction_timeout_ms: int = 30_000,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        conf: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "transactional.id": transactional_id,
            "transaction.timeout.ms": transaction_timeout_ms,
            "enable.idempotence": True,
            "linger.ms": 5,
            "batch.num.messages": 10_000,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "compression.type": "lz4",
            "logger": log,
        }
        conf.update(extra or {})
        self.transactional_id = transactional_id
        self.access = AccessWatch(Identity(principal_of(conf), transactional_id=transactional_id))
        conf["logger"] = self.access
        conf.setdefault("error_cb", self.access.on_error)
        self._p = Producer(conf)
        self._produce = self._p.produce

    def _call(self, op: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except KafkaException as exc:
            raise self._failed(op, exc) from exc

    def _failed(self, op: str, exc: KafkaException) -> LedgerKafkaError:
        """``exc`` classified after the pending error callbacks ran: a refusal explains a
        timeout, and a call that failed with librdkafka's generic fatal error is named
        by the fatal error's own cause (fencing), which its callback reports."""
        self._serve_errors()
        return self.access.classify(op, exc)

    def _serve_errors(self) -> None:
        """Run pending error and log callbacks. A producer that failed fatally raises the
        fatal error's own cause here (``_FENCED`` behind a generic ``_FATAL``): it is
        taken as the error callback would take it."""
        try:
            self._p.poll(0)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError):
                self.access.on_error(err)

    def init(self, timeout: float = 60.0) -> None:
        """Register the transactional.id: fences older instances and aborts their open transaction."""
        self._call("init_transactions", self._p.init_transactions, timeout)

    def begin(self) -> None:
        self.access.txn_topics.clear()
        self._call("begin_transaction", self._p.begin_transaction)

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
        partition: int = -1,
    ) -> None:
        """Queue one record in the open transaction, waiting for queue space if full."""
        self.access.txn_topics.add(topic)
        while True:
            try:
                self._produce(topic, value, key, partition=partition, headers=headers)
                return
            except BufferError:
                self._p.poll(0.05)
            except KafkaException as exc:
                raise self._failed("produce", exc) from exc

    def produce_batch(
        self,
        topic: str,
        values: Sequence[bytes | None],
        keys: Sequence[bytes | None],
        headers: Headers | None = None,
        *,
        partition: int = -1,
        on_last: Callable[[int], None] | None = None,
    ) -> None:
        """Queue many records (hot path: one Python loop, no per-record wrapper calls).

        ``on_last`` receives the offset of the last record once it is delivered
        (served by ``serve_callbacks``; every record is delivered by the time a
        transaction commits)."""
        produce = self._produce
        self.access.txn_topics.add(topic)
        if len(keys) != len(values):
            raise ValueError(f"produce_batch({topic}): {len(values)} values but {len(keys)} keys")
        head = values if on_last is None else values[:-1]
        try:
            for value, key in zip(head, keys):  # noqa: B905 - lengths checked above
                try:
                    # All positional, in the order of the C signature (topic, value, key,
                    # partition, callback, on_delivery, timestamp, headers): a keyword
                    # costs ~0.4 us per call (measured; docs/benchmarks.md). Timestamp 0
                    # is "now", as when it is left out. The integration test
                    # test_produce_batch_positional_headers pins this order.
                    produce(topic, value, key, partition, None, None, 0, headers)
                except BufferError:
                    self._p.poll(0.05)
                    self.produce(topic, value, key, headers, partition)
            if on_last is not None and values:

                def delivered(err: Any, msg: Any) -> None:
                    if err is None:
                        on_last(int(msg.offset()))

                while True:
                    try:
                        produce(
                            topic, values[-1], keys[-1], partition=partition, headers=headers, on_delivery=delivered
                        )
                        break
                    except BufferError:
                        self._p.poll(0.05)
        except KafkaException as exc:
            raise self._failed("produce", exc) from exc
        self._p.poll(0)

    def serve_callbacks(self) -> None:
        """Run pending delivery callbacks (after a commit, every record's report is queued)."""
        self._p.poll(0)

    def send_offsets(self, offsets: Iterable[tuple[str, int, int]], consumer: BatchConsumer) -> None:
        """Add next-offsets to the transaction with the consumer's *current* group metadata."""
        tps = [TopicPartition(t, p, o) for t, p, o in offsets]
        if not tps:
            return
        meta = consumer.group_metadata()
        timeout = 10.0
        # librdkafka can block in send_offsets_to_transaction past its timeout while the
        # group coordinator is away (librdkafka issue #5456): bound it from here. A call
        # that never returns leaves this producer unusable: the seam re-creates it.
        done = threading.Event()
        failure: list[KafkaException] = []

        def call() -> None:
            try:
                self._p.send_offsets_to_transaction(tps, meta, timeout)
            except KafkaException as exc:
                failure.append(exc)
            finally:
                done.set()

        threading.Thread(target=call, name="send-offsets", daemon=True).start()
        if not done.wait(timeout + 5.0):
            stuck = FatalKafkaError(
                "send_offsets_to_transaction",
                -1,
                "_STUCK",
                f"no answer within {timeout + 5.0:.0f}s although its timeout is {timeout:.0f}s",
                fenced=False,
            )
            self._serve_errors()  # a refused connection explains the silence
            raise self.access.explain("send_offsets_to_transaction", stuck)
        if failure:
            raise self._failed("send_offsets_to_transaction", failure[0]) from failure[0]

    def commit(self, timeout: float = 10.0) -> None:
        """Commit the open transaction. The seam retries a timeout a few times, then treats
        the producer as lost (the outcome is resolved by a new producer's init)."""
        self._call("commit_transaction", self._p.commit_transaction, timeout)

    def abort(self, timeout: float = 10.0) -> None:
        self._call("abort_transaction", self._p.abort_transaction, timeout)

    def flush(self, timeout: float = 30.0) -> int:
        try:
            return int(self._p.flush(timeout))
        except KafkaException as exc:
            raise self._failed("flush", exc) from exc

    def close(self) -> None:
        """Drop a producer that is no longer used (healing): queued records are purged,
        nothing is waited for; its open transaction is aborted by the successor's init."""
        try:
            self._p.purge(in_queue=True, in_flight=True, blocking=False)
            self._p.poll(0)
        except (KafkaException, RuntimeError) as exc:
            log.warning("producer %s close: %s", self.transactional_id, exc)


class BatchConsumer:
    """read_committed consumer with manual offsets; commits happen only through a
    producer transaction (``TxnProducer.send_offsets``)."""

    def __init__(
        self,
        bootstrap: str,
        group_id: str,
        *,
        extra: Mapping[str, Any] | None = None,
        on_assign: Callable[[list[TP]], Mapping[TP, int] | None] | None = None,
        on_revoke: Callable[[list[TP], bool], None] | None = None,
    ) -> None:
        conf: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "group.id": group_id,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            "enable.partition.eof": False,
            "fetch.wait.max.ms": 50,
            "queued.max.messages.kbytes": 262_144,
            # Pre-fetch 20,000 records per partition (librdkafka's default is 100,000) and
            # fetch again 10 ms after the queue drained below that (default: 1 s, which
            # starves a consumer with a small queue). A stage polls at most 10,000 records
            # at a time, so the rate is the same; a stage over a backlog holds ~45 MB less
            # (docs/benchmarks.md, "Memory").
            "queued.min.messages": 20_000,
            "fetch.queue.backoff.ms": 10,
            "logger": log,
        }
        conf.update(extra or {})
        self.group_id = group_id
        self.access = AccessWatch(Identity(principal_of(conf), group=group_id))
        conf["logger"] = self.access
        conf.setdefault("error_cb", self.access.on_error)
        self._c = Consumer(conf)
        self._on_assign = on_assign
        self._on_revoke = on_revoke

    def subscribe(self, topics: Sequence[str]) -> None:
        def assign_cb(consumer: Consumer, parts: list[TopicPartition]) -> None:
            if self._on_assign is None:
                return
            starts = self._on_assign([(tp.topic, tp.partition) for tp in parts])
            if starts:  # the callback knows better than the group where to start
                for tp in parts:
                    tp.offset = starts.get((tp.topic, tp.partition), OFFSET_STORED)
                consumer.incremental_assign(parts)

        def revoke_cb(consumer: Consumer, parts: list[TopicPartition]) -> None:
            if self._on_revoke is not None:
                self._on_revoke([(tp.topic, tp.partition) for tp in parts], False)

        def lost_cb(consumer: Consumer, parts: list[TopicPartition]) -> None:
            if self._on_revoke is not None:
                self._on_revoke([(tp.topic, tp.partition) for tp in parts], True)

        who = self.access.who
        self.access.who = Identity(who.principal, who.transactional_id, who.group, tuple(topics))
        self._c.subscribe(list(topics), on_assign=assign_cb, on_revoke=revoke_cb, on_lost=lost_cb)

    def consume(self, max_records: int, timeout: float) -> list[InRecord]:
        """Up to ``max_records`` committed records; raises on a non-transient consumer error."""
        msgs: list[Any] = self._c.consume(max_records, timeout)
        out: list[InRecord] = []
        append, new = out.append, tuple.__new__
        # records of a batch share equal topic names and (nearly always) equal headers:
        # keep one object of each instead of one per record (a held record costs ~40% less)
        topic: str = ""
        headers: Any = None
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.code() in ACCESS_CODES:  # refused: the stage stops (operation "access") naming it
                    raise self.access.classify("access", KafkaException(err))
                if err.code() != KafkaError._FATAL and (err.retriable() or not err.fatal()):
                    log.warning("consumer: %s", err.str())
                    continue
                raise classify("consume", KafkaException(err))  # the consumer is unusable now
            ts_type, ts = m.timestamp()
            t, h = m.topic(), m.headers()
            if t == topic:
                t = topic
            else:
                topic = t
            if h is not None:
                if h == headers:
                    h = headers
                else:
                    headers = h
            # tuple.__new__ builds the same InRecord without the named tuple's Python-level
            # __new__ frame: ~0.2 us less per consumed record
            append(new(InRecord, (t, m.partition(), m.offset(), m.key(), m.value(), h, ts if ts_type else None)))
        refused = self.access.refused
        if out:
            self.access.accepted()
        elif refused is not None and self.access.refused_for() > REFUSAL_GRACE_S:
            raise self.access.classify("access", KafkaException(refused))
        return out

    def group_metadata(self) -> object:
        return self._c.consumer_group_metadata()

    def assignment(self) -> list[TP]:
        return [(tp.topic, tp.partition) for tp in self._c.assignment()]

    def committed(
        self, partitions: Sequence[TP], timeout: float = 30.0, within_s: float = 90.0
    ) -> dict[TP, int | None]:
        """Committed next-offset per partition (None when the group has none). Waits for
        pending transactional offset commits to resolve (read_committed).

        While the group coordinator moves (``COORDINATOR_CODES``: a broker bounced or
        was paused past its session) the read is asked again for up to ``within_s``
        seconds; only then does the error reach the caller."""
        if not partitions:
            return {}
        query = [TopicPartition(t, p) for t, p in partitions]
        deadline = time.monotonic() + within_s
        pause = 0.2
        while True:
            try:
                tps = self._c.committed(query, timeout=timeout)
                break
            except KafkaException as exc:
                err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                if err is None or err.code() not in COORDINATOR_CODES or time.monotonic() + pause > deadline:
                    raise classify("committed", exc) from exc
                log.warning("committed offsets: %s; asking again in %.1fs", err.str(), pause)
                time.sleep(pause)
                pause = min(pause * 2, 5.0)
        return {(tp.topic, tp.partition): (tp.offset if tp.offset >= 0 else None) for tp in tps}

    def seek(self, topic: str, partition: int, offset: int | None) -> None:
        """Move the fetch position; None means the beginning of the partition."""
        target = OFFSET_BEGINNING if offset is None else offset
        try:
            self._c.seek(TopicPartition(topic, partition, target))
        except KafkaException as exc:
            # A partition assigned in this very poll has no fetch state yet; re-assigning
            # it at the wanted offset is the documented way to position it.
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.code() == KafkaError._STATE:
                self._c.incremental_unassign([TopicPartition(topic, partition)])
                self._c.incremental_assign([TopicPartition(topic, partition, target)])
                return
            raise AbortableKafkaError("seek", -1, "SEEK", str(exc)) from exc

    def rewind_to_committed(self, partitions: Sequence[TP] | None = None) -> dict[TP, int | None]:
        """Seek every (given or assigned) partition back to its committed offset."""
        parts = list(partitions) if partitions is not None else self.assignment()
        committed = self.committed(parts)
        for (t, p), off in committed.items():
            self.seek(t, p, off)
        return committed

    def position(self, partitions: Sequence[TP]) -> dict[TP, int | None]:
        tps = self._c.position([TopicPartition(t, p) for t, p in partitions])
        return {(tp.topic, tp.partition): (tp.offset if tp.offset != OFFSET_INVALID else None) for tp in tps}

    def end_offsets(self, partitions: Sequence[TP], timeout: float = 10.0) -> dict[TP, int]:
        """Last stable offset per partition (read_committed: ends before open transactions)."""
        out: dict[TP, int] = {}
        for t, p in partitions:
            _low, high = self._c.get_watermark_offsets(TopicPartition(t, p), timeout=timeout, cached=False)
            out[(t, p)] = high
        return out

    def lags(self) -> dict[TP, int]:
        """Per assigned partition: end offset (from the last fetch, no network call) minus
        the position. Partitions not fetched yet are left out."""
        parts: list[Any] = self._c.assignment()
        if not parts:
            return {}
        out: dict[TP, int] = {}
        positions: list[Any] = self._c.position(parts)
        for tp in positions:
            if tp.offset < 0:
                continue
            _low, high = self._c.get_watermark_offsets(tp, cached=True)
            if high is not None and high >= 0:
                out[(tp.topic, tp.partition)] = max(0, high - tp.offset)
        return out

    def close(self) -> None:
        try:
            self._c.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("consumer close: %s", exc)


class AssignedConsumer(BatchConsumer):
    """A read_committed reader of the partitions it is told to read (assign mode: it never
    joins a group, its throwaway group id is never committed to). An interval join reads
    its right topic with one, positioned at the transform group's committed offsets; the
    offsets it reaches are committed by the transform's transactions, for that group."""

    def __init__(self, bootstrap: str, *, extra: Mapping[str, Any] | None = None) -> None:
        import uuid

        super().__init__(bootstrap, f"{THROWAWAY_GROUP_PREFIX}side-{uuid.uuid4().hex}", extra=extra)

    def assign(self, topic: str, partition: int, offset: int | None) -> None:
        """Start reading ``topic``/``partition`` at ``offset`` (None: its beginning)."""
        target = OFFSET_BEGINNING if offset is None else offset
        try:
            self._c.incremental_assign([TopicPartition(topic, partition, target)])
        except KafkaException as exc:
            raise classify("assign", exc) from exc

    def unassign(self, partitions: Sequence[TP]) -> None:
        if not partitions:
            return
        try:
            self._c.incremental_unassign([TopicPartition(t, p) for t, p in partitions])
        except KafkaException as exc:
            raise classify("unassign", exc) from exc

    def rewind_to_committed(self, partitions: Sequence[TP] | None = None) -> dict[TP, int | None]:
        raise NotImplementedError("an assigned reader's group commits nothing: seek to the owning group's offsets")
