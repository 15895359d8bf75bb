"""Hanging transactions: found with Kafka's own rule, ours aborted, foreign ones named.

A transaction is *hanging* when a partition holds an open transaction (DescribeProducers
shows a ``CurrentTransactionStartOffset``) whose coordinator no longer has that
producer's transaction ongoing with that partition. Nothing will ever write its
marker, so the partition's last stable offset stays behind it and read_committed
readers stall. This is the rule of Kafka's ``kafka-transactions find-hanging``
(``TransactionsCommand.FindHangingTransactionsCommand``), used verbatim by running
that tool from the project's jars with ``--max-transaction-timeout 0``; the age
threshold is then applied here in milliseconds (the tool's is in minutes), so it can
be the pipeline's own ``transaction.timeout.ms``. Age is measured from the
producer's last write on the partition (``LastTimestamp``, the record timestamps'
clock) to this host's clock.

confluent-kafka has no DescribeProducers / ListTransactions / DescribeTransactions /
AbortTransaction admin calls, so every such call is one JVM run of
``TransactionsCommand`` (about 1-2 s each). A check with nothing hanging costs one
run per leader broker (or per topic, whichever is fewer); transactional ids are
looked up (``list``, one more run) only when something was found.

Ownership (``classify``): ours when the coordinator still knows the transactional id
and it starts with ``ledgerflow.<pipeline>.``; or when the coordinator no longer
knows the producer and the partition belongs to a topic only this pipeline writes;
or, on ``__consumer_offsets`` (shared by every group of the cluster), when the
producer is unknown and the transaction's first record there is an offset commit
of one of this pipeline's groups (``ledgerflow.<pipeline>.*``). Anything else is
foreign and is never aborted automatically.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from app.journal.events import JournalEvent
from app.journal.writer import Correlation, info_event
from app.kafka.txn_tool import HangingToolError, _int, decode_offsets_group, parse_list, parse_table, run_tool

log = logging.getLogger("ledgerflow.kafka.hanging")

OFFSETS_TOPIC = "__consumer_offsets"
TP = tuple[str, int]
Ownership = Literal["ours", "foreign"]
_ALREADY_RESOLVED = "Could not find any open transactions starting at offset"


class ForeignHangingTransaction(RuntimeError):
    """Hanging transactions this pipeline must not abort. ``report`` is the heal
    report: hanging transactions of ours were already aborted when this is raised."""

    def __init__(self, bootstrap: str, txns: Sequence[HangingTxn], report: HealReport) -> None:
        lines = [
            f"{t.topic}/{t.partition}: hanging transaction of producer id {t.producer_id} "
            f"(transactional id {t.transactional_id or 'unknown to the coordinator'}) open since offset "
            f"{t.start_offset} for {t.age_ms / 1000:.0f}s holds back read_committed readers; it is not this "
            f"pipeline's, so it was left alone. If its owner is gone, abort it with:\n  {abort_command(bootstrap, t)}"
            for t in txns
        ]
        super().__init__("\n".join(lines))
        self.txns = list(txns)
        self.report = report


@dataclass(frozen=True, slots=True)
class HangingTxn:
    """One open transaction on one partition that no coordinator will finish."""

    topic: str
    partition: int
    producer_id: int
    producer_epoch: int
    coordinator_epoch: int  # -1: the partition never saw a marker from this producer's coordinator
    start_offset: int
    last_timestamp_ms: int
    age_ms: int  # this host's clock minus last_timestamp_ms, when found
    transactional_id: str | None  # None: the coordinator no longer knows the producer id
    offsets_group: str | None = None  # __consumer_offsets only: group of the first record of the transaction

    @property
    def key(self) -> str:
        """Journal key of its ``hanging_txn_aborted`` event."""
        return f"hanging/{self.topic}/{self.partition}/{self.start_offset}"


@dataclass
class HealReport:
    """What ``heal_hanging`` found and did. ``events`` are the ``hanging_txn_aborted``
    journal events of ``aborted``, for the caller's commit seam to write."""

    found: list[HangingTxn] = field(default_factory=list)
    aborted: list[HangingTxn] = field(default_factory=list)
    already_resolved: list[HangingTxn] = field(default_factory=list)  # ours, but gone before the abort
    foreign: list[HangingTxn] = field(default_factory=list)
    events: list[JournalEvent] = field(default_factory=list)
    dry_run: bool = False


def parse_find_hanging(text: str, now_ms: int) -> list[HangingTxn]:
    """``find-hanging`` output -> hanging transactions (transactional ids unknown yet)."""
    return [
        HangingTxn(
            topic=row["Topic"],
            partition=_int(row, "Partition"),
            producer_id=_int(row, "ProducerId"),
            producer_epoch=_int(row, "ProducerEpoch"),
            coordinator_epoch=_int(row, "CoordinatorEpoch"),
            start_offset=_int(row, "StartOffset"),
            last_timestamp_ms=_int(row, "LastTimestamp"),
            age_ms=max(0, now_ms - _int(row, "LastTimestamp")),
            transactional_id=None,
        )
        for row in parse_table(text)
    ]


def _leaders(bootstrap: str, topics: Iterable[str], extra: Mapping[str, Any] | None) -> dict[TP, int]:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, **(extra or {}), "logger": log})
    meta = admin.list_topics(timeout=15)
    out: dict[TP, int] = {}
    for t in set(topics):
        tm = meta.topics.get(t)
        if tm is None or tm.error is not None:
            continue  # a topic that does not exist holds no transaction
        for p, pm in tm.partitions.items():
            out[(t, p)] = int(pm.leader)
    return out


def _offsets_group(bootstrap: str, txn: HangingTxn, extra: Mapping[str, Any] | None) -> str | None:
    """The group whose offset commit opens ``txn`` on ``__consumer_offsets`` (read
    uncommitted at its start offset), or None when it cannot be read."""
    import uuid

    from confluent_kafka import Consumer, TopicPartition

    conf = {**(extra or {}), "bootstrap.servers": bootstrap, "group.id": f"ledgerflow-hanging-{uuid.uuid4().hex}"}
    conf.update({"isolation.level": "read_uncommitted", "enable.auto.commit": False, "logger": log})
    c = Consumer(conf)
    try:
        c.assign([TopicPartition(OFFSETS_TOPIC, txn.partition, txn.start_offset)])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for m in c.consume(10, 0.5):
                if m.error() is None and m.offset() >= txn.start_offset:
                    return decode_offsets_group(m.key()) if m.offset() == txn.start_offset else None
        return None
    except Exception as exc:  # e.g. no Read ACL on __consumer_offsets: then it stays foreign
        log.warning("cannot read %s/%d at %d: %s", OFFSETS_TOPIC, txn.partition, txn.start_offset, exc)
        return None
    finally:
        c.close()


def find_hanging(
    bootstrap: str,
    partitions: Iterable[TP] | None = None,
    *,
    broker_ids: Iterable[int] | None = None,
    max_age_ms: int,
    extra: Mapping[str, Any] | None = None,
    timeout: float = 120,
) -> list[HangingTxn]:
    """Hanging transactions older than ``max_age_ms`` on ``partitions`` (each asked of
    its leader) and/or on every partition of ``broker_ids``, with transactional ids
    (when the coordinator still knows them) and, on ``__consumer_offsets``, the group
    of their first record. Uses Kafka's ``find-hanging`` rule; raises
    ``HangingToolError`` when the tool fails (e.g. a coordinator still loading)."""
    wanted = set(partitions or ())
    leaders = _leaders(bootstrap, {t for t, _ in wanted}, extra) if wanted else {}
    scopes: list[tuple[list[str], set[TP] | None]] = [
        (["--broker-id", str(b)], None) for b in sorted(set(broker_ids or ()))
    ]
    by_leader: dict[int, set[TP]] = {}
    for tp in wanted & set(leaders):
        by_leader.setdefault(leaders[tp], set()).add(tp)
    topics = sorted({t for t, _ in wanted & set(leaders)})
    if len(topics) <= len(by_leader):
        scopes += [(["--topic", t], {tp for tp in wanted if tp[0] == t}) for t in topics]
    else:
        scopes += [(["--broker-id", str(b)], tps) for b, tps in sorted(by_leader.items())]

    def run(scope: tuple[list[str], set[TP] | None]) -> list[HangingTxn]:
        args, keep = scope
        out = run_tool(
            bootstrap, ["find-hanging", *args, "--max-transaction-timeout", "0"], extra=extra, timeout=timeout
        )
        txns = parse_find_hanging(out, int(time.time() * 1000))
        return [t for t in txns if keep is None or (t.topic, t.partition) in keep]

    with ThreadPoolExecutor(max_workers=2) as pool:
        found = {(t.topic, t.partition, t.producer_id, t.start_offset): t for r in pool.map(run, scopes) for t in r}
    txns = [t for t in found.values() if t.age_ms > max_age_ms]
    if not txns:
        return []
    ids = parse_list(run_tool(bootstrap, ["list"], extra=extra, timeout=timeout))
    out = []
    for t in sorted(txns, key=lambda t: (t.topic, t.partition, t.start_offset)):
        group = _offsets_group(bootstrap, t, extra) if t.topic == OFFSETS_TOPIC else None
        out.append(replace(t, transactional_id=ids.get(t.producer_id), offsets_group=group))
    return out


def abort_command(bootstrap: str, txn: HangingTxn) -> str:
    """The operator command that aborts ``txn`` (Kafka's tool from ledgerflow's jars;
    ``--bootstrap-server`` and ``--command-config`` go before the subcommand)."""
    return (
        f"ledgerflow kafka tool transactions --bootstrap-server {bootstrap} abort "
        f"--topic {txn.topic} --partition {txn.partition} --start-offset {txn.start_offset}"
    )


def abort_hanging(
    bootstrap: str, txn: HangingTxn, *, extra: Mapping[str, Any] | None = None, timeout: float = 120
) -> bool:
    """Write an abort marker for ``txn`` (``abort --topic --partition --start-offset``:
    the tool re-reads the partition's producer state and aborts only an open
    transaction starting exactly there). True when this call aborted it, False when
    no such transaction was open any more (already resolved); raises
    ``HangingToolError`` on any other failure."""
    args = ["abort", "--topic", txn.topic, "--partition", str(txn.partition), "--start-offset", str(txn.start_offset)]
    try:
        run_tool(bootstrap, args, extra=extra, timeout=timeout)
    except HangingToolError as exc:
        if _ALREADY_RESOLVED in str(exc):
            return False
        raise
    return True


def classify(txn: HangingTxn, pipeline: str, owned_topics: Iterable[str]) -> Ownership:
    """ "ours" when ``txn`` may be aborted on behalf of ``pipeline`` (see module doc);
    ``owned_topics`` are topics only this pipeline writes (journal, DLQ, its stages'
    outputs, its changelogs)."""
    prefix = f"ledgerflow.{pipeline}."
    if txn.transactional_id is not None:
        return "ours" if txn.transactional_id.startswith(prefix) else "foreign"
    if txn.topic == OFFSETS_TOPIC:
        return "ours" if txn.offsets_group is not None and txn.offsets_group.startswith(prefix) else "foreign"
    return "ours" if txn.topic in set(owned_topics) else "foreign"


def aborted_event(corr: Correlation, txn: HangingTxn) -> JournalEvent:
    """The ``hanging_txn_aborted`` journal event of one abort."""
    detail = {
        "topic": txn.topic,
        "partition": str(txn.partition),
        "producer_id": str(txn.producer_id),
        "producer_epoch": str(txn.producer_epoch),
        "start_offset": str(txn.start_offset),
        "age_ms": str(txn.age_ms),
        "last_timestamp_ms": str(txn.last_timestamp_ms),
        "transactional_id": txn.transactional_id or "",
    }
    if txn.offsets_group is not None:
        detail["offsets_group"] = txn.offsets_group
    return info_event(corr, "hanging_txn_aborted", txn.key, detail)


def heal_hanging(
    bootstrap: str,
    *,
    pipeline: str,
    partitions: Iterable[TP],
    owned_topics: Iterable[str],
    max_age_ms: int,
    corr: Correlation | None = None,
    extra: Mapping[str, Any] | None = None,
    dry_run: bool = False,
    raise_on_foreign: bool = True,
) -> HealReport:
    """Find hanging transactions on ``partitions``; abort ours (unless ``dry_run``) and
    build one ``hanging_txn_aborted`` event per abort (needs ``corr``; the caller
    writes them). A foreign one found twice in a row (so not a transaction whose
    markers were being written during the first look) raises
    ``ForeignHangingTransaction`` after ours were handled, unless ``raise_on_foreign``
    is False. Tool failures raise ``HangingToolError``."""
    parts, owned = list(partitions), set(owned_topics)
    report = HealReport(dry_run=dry_run)
    report.found = find_hanging(bootstrap, parts, max_age_ms=max_age_ms, extra=extra)
    for txn in report.found:
        if classify(txn, pipeline, owned) == "foreign":
            report.foreign.append(txn)
        elif not dry_run:
            if abort_hanging(bootstrap, txn, extra=extra):
                log.warning(
                    "aborted hanging transaction on %s/%d: producer id %d, start offset %d, age %.0fs",
                    txn.topic,
                    txn.partition,
                    txn.producer_id,
                    txn.start_offset,
                    txn.age_ms / 1000,
                )
                report.aborted.append(txn)
                if corr is not None:
                    report.events.append(aborted_event(corr, txn))
            else:
                report.already_resolved.append(txn)
    if report.foreign:
        again = find_hanging(
            bootstrap, {(t.topic, t.partition) for t in report.foreign}, max_age_ms=max_age_ms, extra=extra
        )
        still = {(t.topic, t.partition, t.producer_id, t.start_offset) for t in again}
        report.foreign = [t for t in report.foreign if (t.topic, t.partition, t.producer_id, t.start_offset) in still]
    if report.foreign and raise_on_foreign:
        raise ForeignHangingTransaction(bootstrap, report.foreign, report)
    return report


def write_events(
    bootstrap: str,
    journal_topic: str,
    events: Sequence[JournalEvent],
    *,
    pipeline: str,
    worker_id: str,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write ``events`` to the journal in one transaction of a short-lived producer with
    transactional id ``ledgerflow.<pipeline>.recover.<worker_id>`` (the CLI path;
    stages write them through their commit seam instead)."""
    if not events:
        return
    from app.journal.events import encode_event
    from app.kafka.clients import TxnProducer

    producer = TxnProducer(bootstrap, f"ledgerflow.{pipeline}.recover.{worker_id}", extra=extra)
    producer.init()
    producer.begin()
    for ev in events:
        producer.produce(journal_topic, encode_event(ev), ev.key.encode())
    producer.commit()


def offsets_partition(group_id: str, num_partitions: int) -> int:
    """The ``__consumer_offsets`` partition of ``group_id``: Kafka's
    ``Utils.abs(groupId.hashCode()) % offsets.topic.num.partitions``."""
    h = 0
    for unit in struct.unpack(f">{len(group_id.encode('utf-16-be')) // 2}H", group_id.encode("utf-16-be")):
        h = (31 * h + unit) & 0xFFFFFFFF
    signed = h - (1 << 32) if h >= 1 << 31 else h
    return (0 if signed == -(1 << 31) else abs(signed)) % num_partitions
