"""Parsing of Kafka's TransactionsCommand output and the ownership rule (no broker)."""

from __future__ import annotations

import pytest

from app.kafka.hanging import HangingTxn, abort_command, classify, offsets_partition, parse_find_hanging
from app.kafka.txn_tool import HangingToolError, decode_offsets_group, java_client_properties, parse_list, parse_table

# verbatim from `find-hanging --broker-id 1 --max-transaction-timeout 0` (Kafka 4.3.1)
FIND = (
    "Topic             \tPartition\tProducerId\tProducerEpoch\tCoordinatorEpoch\tStartOffset\t"
    "LastTimestamp\tDuration(min)\t\n"
    "exp.data          \t0        \t0         \t0            \t-1              \t0          \t"
    "1796145575167\t0            \t\n"
    "__consumer_offsets\t8        \t7         \t2            \t3               \t41         \t"
    "1796145575849\t0            \t\n"
)
LIST = (
    "TransactionalId              \tCoordinator\tProducerId\tTransactionState\t\n"
    "ledgerflow.exp.transform.x.w1\t1          \t0         \tOngoing         \t\n"
)


def test_parse_find_hanging_reads_every_column_and_ages_from_last_timestamp() -> None:
    txns = parse_find_hanging(FIND, now_ms=1796145580167)
    assert txns[0] == HangingTxn("exp.data", 0, 0, 0, -1, 0, 1796145575167, 5000, None)
    assert (txns[1].topic, txns[1].partition, txns[1].producer_id, txns[1].producer_epoch) == (
        "__consumer_offsets",
        8,
        7,
        2,
    )
    assert (txns[1].coordinator_epoch, txns[1].start_offset, txns[1].key) == (3, 41, "hanging/__consumer_offsets/8/41")


def test_parse_empty_table_and_stray_lines() -> None:
    assert parse_find_hanging(FIND.splitlines()[0] + "\n", now_ms=0) == []
    assert parse_table("") == []
    assert parse_list("SLF4J: some warning\n" + LIST) == {0: "ledgerflow.exp.transform.x.w1"}
    with pytest.raises(HangingToolError, match="no table"):
        parse_table("Exception in thread main\n")
    with pytest.raises(HangingToolError, match="cells"):
        parse_table("A\tB\t\n1\t\n")
    with pytest.raises(HangingToolError, match="ProducerId"):
        parse_find_hanging(FIND.replace("ProducerId", "Producer"), now_ms=0)


def _txn(topic: str = "p.out", txn_id: str | None = None, group: str | None = None) -> HangingTxn:
    return HangingTxn(topic, 0, 5, 0, -1, 10, 0, 60_000, txn_id, group)


def test_classify_by_transactional_id_then_topic_then_offsets_group() -> None:
    owned = {"p.out", "p.journal"}
    assert classify(_txn("p.in", "ledgerflow.p.transform.t.w1"), "p", owned) == "ours"
    assert classify(_txn("p.out", "ledgerflow.p2.transform.t.w1"), "p", owned) == "foreign"  # known, not ours
    assert classify(_txn("p.out", "other"), "p", owned) == "foreign"
    assert classify(_txn("p.out"), "p", owned) == "ours"  # unknown producer on a topic only we write
    assert classify(_txn("p.in"), "p", owned) == "foreign"  # unknown producer on a topic we only read
    assert classify(_txn("__consumer_offsets"), "p", owned) == "foreign"  # shared: unknown group
    assert classify(_txn("__consumer_offsets", group="ledgerflow.p.sink.s"), "p", owned) == "ours"
    assert classify(_txn("__consumer_offsets", group="ledgerflow.p2.sink.s"), "p", owned) == "foreign"
    assert classify(_txn("__consumer_offsets", group="app"), "p", owned | {"__consumer_offsets"}) == "foreign"


def test_offsets_partition_matches_java_string_hashcode() -> None:
    assert offsets_partition("ledgerflow.exp.transform.x", 10) == 8  # where the broker put it
    assert offsets_partition("", 50) == 0
    # "polygenelubricants".hashCode() == Integer.MIN_VALUE; Kafka's Utils.abs maps it to 0
    assert offsets_partition("polygenelubricants", 50) == 0
    assert offsets_partition("héllo-☃", 50) == 289802692 % 50  # non-ASCII: UTF-16 code units (jshell)


def test_decode_offsets_group() -> None:
    key = b"\x00\x01\x00\x1aledgerflow.exp.transform.x\x00\x06exp.in\x00\x00\x00\x00"
    assert decode_offsets_group(key) == "ledgerflow.exp.transform.x"
    assert decode_offsets_group(b"\x00\x02\x00\x01g") is None  # group metadata record, not an offset commit
    assert decode_offsets_group(None) is None
    assert decode_offsets_group(b"\x00\x01\x00\x09short") is None


def test_java_client_properties() -> None:
    assert java_client_properties({"linger.ms": 5}) == {}
    props = java_client_properties(
        {
            "security.protocol": "sasl_ssl",
            "sasl.mechanisms": "SCRAM-SHA-512",
            "sasl.username": "lf",
            "sasl.password": 'p"w\\',
            "ssl.ca.location": "/ca.pem",
            "ssl.endpoint.identification.algorithm": "none",
        }
    )
    assert props["security.protocol"] == "SASL_SSL" and props["sasl.mechanism"] == "SCRAM-SHA-512"
    assert props["sasl.jaas.config"] == (
        'org.apache.kafka.common.security.scram.ScramLoginModule required username="lf" password="p\\"w\\\\";'
    )
    assert (props["ssl.truststore.type"], props["ssl.truststore.location"]) == ("PEM", "/ca.pem")
    assert props["ssl.endpoint.identification.algorithm"] == ""
    with pytest.raises(HangingToolError, match=r"sasl\.oauthbearer\.client\.id"):
        java_client_properties({"sasl.oauthbearer.client.id": "x"})


def test_abort_command_puts_bootstrap_before_the_subcommand() -> None:
    assert abort_command("b:9092", _txn()) == (
        "ledgerflow kafka tool transactions --bootstrap-server b:9092 abort "
        "--topic p.out --partition 0 --start-offset 10"
    )
