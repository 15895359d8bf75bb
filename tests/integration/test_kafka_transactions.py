"""Transactions on the real broker: the semantics the whole commit seam relies on."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from app.kafka.admin import Admin
from app.kafka.clients import BatchConsumer, TxnProducer
from app.kafka.errors import FatalKafkaError, LedgerKafkaError
from app.kafka.readers import read_topic_to_end
from tests.conftest import KafkaEnv

pytestmark = pytest.mark.integration


def _topic(kafka: KafkaEnv, name: str, partitions: int = 1) -> str:
    Admin(kafka.bootstrap).create_topic(name, partitions, 1, {})
    return name


def test_committed_visible_aborted_invisible(kafka: KafkaEnv, unique: Callable[[str], str]) -> None:
    topic = _topic(kafka, unique("txn"))
    producer = TxnProducer(kafka.bootstrap, unique("tx-a"))
    producer.init()
    producer.begin()
    producer.produce_batch(topic, [b"c1", b"c2"], [b"k", b"k"])
    producer.commit()
    producer.begin()
    producer.produce_batch(topic, [b"a1", b"a2", b"a3"], [None, None, None])
    producer.flush()  # make sure the aborted records reach the log before the abort
    producer.abort()
    producer.begin()
    producer.produce(topic, b"c3")
    producer.commit()

    values = [r.value for r in read_topic_to_end(kafka.bootstrap, topic)]
    assert values == [b"c1", b"c2", b"c3"]
    # 2 + marker, 3 aborted + marker, 1 + marker: aborted data occupies offsets
    assert Admin(kafka.bootstrap).end_offsets([(topic, 0)])[(topic, 0)] == 9


def test_produce_batch_positional_headers(kafka: KafkaEnv, unique: Callable[[str], str]) -> None:
    """``produce_batch`` passes every argument positionally (the C signature's order):
    the records arrive with their keys, the given partition, the headers, a "now"
    timestamp, and the last record's offset reaches ``on_last``."""
    topic = _topic(kafka, unique("pos"), partitions=2)
    producer = TxnProducer(kafka.bootstrap, unique("tx-pos"))
    producer.init()
    producer.begin()
    last: list[int] = []
    before = int(time.time() * 1000)
    headers = [("lf.schema", b"fp-1"), ("x", b"2")]
    producer.produce_batch(
        topic, [b"v1", b"v2", b"v3"], [b"k1", None, b"k3"], headers, partition=1, on_last=last.append
    )
    producer.commit()
    producer.serve_callbacks()
    recs = read_topic_to_end(kafka.bootstrap, topic)
    assert [(r.partition, r.key, r.value) for r in recs] == [(1, b"k1", b"v1"), (1, None, b"v2"), (1, b"k3", b"v3")]
    assert all(list(r.headers or []) == headers for r in recs)
    assert all(r.timestamp_ms is not None and before - 1000 <= r.timestamp_ms <= before + 60_000 for r in recs)
    assert last == [2]


def test_same_transactional_id_fences_the_first(kafka: KafkaEnv, unique: Callable[[str], str]) -> None:
    topic = _topic(kafka, unique("fence"))
    txn_id = unique("tx-shared")
    first = TxnProducer(kafka.bootstrap, txn_id)
    first.init()
    first.begin()
    first.produce(topic, b"zombie")
    first.flush()

    second = TxnProducer(kafka.bootstrap, txn_id)
    second.init()  # aborts the first one's open transaction
    second.begin()
    second.produce(topic, b"owner")
    second.commit()

    with pytest.raises(FatalKafkaError) as info:
        first.commit()
    assert info.value.fenced
    assert [r.value for r in read_topic_to_end(kafka.bootstrap, topic)] == [b"owner"]


def test_a_produce_after_fencing_is_named_fenced(kafka: KafkaEnv, unique: Callable[[str], str]) -> None:
    """A fenced producer's later ``produce`` fails with librdkafka's generic ``_FATAL``;
    the producer names it fenced at once, from the fatal error's own cause (no log line
    needs to have arrived first)."""
    topic = _topic(kafka, unique("fence-produce"))
    txn_id = unique("tx-fp")
    first = TxnProducer(kafka.bootstrap, txn_id)
    first.init()
    first.begin()
    # librdkafka logs the fencing from its own thread; under load that line can come after
    # the failed produce. Keep it from the watch, so only the fatal error's cause can tell.
    first.access.log = lambda *args: None  # type: ignore[method-assign]
    TxnProducer(kafka.bootstrap, txn_id).init()  # a newer instance takes the id over
    error = None
    for _ in range(100):  # the producer learns of the takeover when it adds the partition
        try:
            first.produce(topic, b"zombie")  # no flush, no poll: as the seam's produce loop
        except FatalKafkaError as exc:
            error = exc
            break
        time.sleep(0.05)
    assert error is not None, "the fenced producer kept producing"
    assert error.name == "_FATAL", str(error)  # librdkafka's generic error, nothing else said
    assert error.fenced, str(error)
    assert "fenced by a newer instance" in str(error)


def test_open_transaction_is_invisible_until_commit(kafka: KafkaEnv, unique: Callable[[str], str]) -> None:
    topic = _topic(kafka, unique("open"))
    producer = TxnProducer(kafka.bootstrap, unique("tx-open"))
    producer.init()
    producer.begin()
    producer.produce(topic, b"pending")
    producer.flush()
    admin = Admin(kafka.bootstrap)
    assert admin.end_offsets([(topic, 0)], committed_only=True)[(topic, 0)] == 0
    assert admin.end_offsets([(topic, 0)])[(topic, 0)] == 1
    producer.commit()
    assert [r.value for r in read_topic_to_end(kafka.bootstrap, topic)] == [b"pending"]


def test_group_offsets_stable_and_last_committed(kafka: KafkaEnv, unique: Callable[[str], str]) -> None:
    """Offsets sent in an open transaction are pending: a stable read waits for them
    (and times out while the transaction stays open), a last-committed read returns the
    previous commit at once; the commit makes both return the new offset."""
    topic = _topic(kafka, unique("goff"))
    group = unique("g-goff")
    admin = Admin(kafka.bootstrap)
    assert admin.group_offsets(group, [(topic, 0)]) == {}  # no such group yet: nothing committed
    consumer = BatchConsumer(kafka.bootstrap, group)
    producer = TxnProducer(kafka.bootstrap, unique("tx-goff"))
    producer.init()
    for next_offset in (1, 2):
        producer.begin()
        producer.produce(topic, b"row")
        producer.send_offsets([(topic, 0, next_offset)], consumer)
        if next_offset == 1:
            producer.commit()
    try:
        assert admin.group_offsets(group, [(topic, 0)], require_stable=False) == {(topic, 0): 1}
        with pytest.raises(LedgerKafkaError):
            admin.group_offsets(group, [(topic, 0)], timeout=2.0)
        producer.commit()
        assert admin.group_offsets(group, [(topic, 0)]) == {(topic, 0): 2}
        assert admin.group_offsets(group, [(topic, 0)], require_stable=False) == {(topic, 0): 2}
    finally:
        admin.close()
        consumer.close()
