"""Helpers for the schema registry tests: a foreign producer (confluent-kafka's own
``AvroSerializer`` / ``JSONSerializer``), registry-format pipeline specs, checks."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from app.journal.reader import load_journal
from app.kafka.admin import Admin
from tests.conftest import KafkaEnv
from tests.harness import (
    PG_COLUMNS,
    PipelineFiles,
    create_pg_table,
    sink_lines,
    spec_head,
    staging_leftovers,
    token_ids,
    write_topics,
)
from tests.registry_env import RegistryEnv

ORDER_V1: dict[str, Any] = {
    "type": "record",
    "name": "Order",
    "namespace": "shop",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "customer", "type": "string"},
        {"name": "country", "type": "string"},
        {"name": "amount", "type": "long"},
        {"name": "quantity", "type": "int"},
    ],
}
# v2 adds a field with a default: BACKWARD compatible
ORDER_V2: dict[str, Any] = {
    **ORDER_V1,
    "fields": [*ORDER_V1["fields"], {"name": "channel", "type": "string", "default": "web"}],
}
ORDER_JSON: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "OrderJson",
    "type": "object",
    "properties": {"id": {"type": "integer"}, "customer": {"type": "string"}, "amount": {"type": "integer"}},
    "required": ["id", "customer", "amount"],
}


def order(i: int, *, v2: bool = False) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": i,
        "customer": f"c{i % 97}",
        "country": ("US", "DE", "FR")[i % 3],
        "amount": (i * 37) % 10_000,
        "quantity": 1 + i % 5,
    }
    if v2:
        row["channel"] = ("web", "shop")[i % 2]
    return row


def foreign_producer(kafka: KafkaEnv, transactional_id: str | None = None) -> Any:
    from confluent_kafka import Producer

    conf: dict[str, Any] = {"bootstrap.servers": kafka.bootstrap, "enable.idempotence": True, "linger.ms": 5}
    if transactional_id:
        conf["transactional.id"] = transactional_id
    return Producer(conf)


def avro_serializer(registry: RegistryEnv, schema: dict[str, Any], **conf: Any) -> Any:
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer

    client: SchemaRegistryClient = registry.client()
    return AvroSerializer(client, json.dumps(schema), conf=conf or None)


def produce_avro(
    kafka: KafkaEnv,
    registry: RegistryEnv,
    topic: str,
    rows: Iterable[dict[str, Any]],
    schema: dict[str, Any] = ORDER_V1,
    *,
    partitions: int = 3,
    transactional: bool = False,
) -> int:
    """Write ``rows`` the way any Confluent-ecosystem application does: AvroSerializer
    (registers the schema under ``<topic>-value``), a plain idempotent producer, or one
    transaction (like a Kafka Streams exactly-once application: a commit marker ends
    every partition, so offsets skip one)."""
    from confluent_kafka.serialization import MessageField, SerializationContext

    ser = avro_serializer(registry, schema)
    producer = foreign_producer(kafka, f"foreign-{topic}" if transactional else None)
    if transactional:
        producer.init_transactions(30)
        producer.begin_transaction()
    ctx = SerializationContext(topic, MessageField.VALUE)
    n = 0
    for row in rows:
        producer.produce(topic, ser(row, ctx), key=str(row["id"]).encode(), partition=row["id"] % partitions)
        n += 1
        if n % 5000 == 0:
            producer.flush()
    if transactional:
        producer.commit_transaction(30)
    assert producer.flush(30) == 0
    return n


def committed_ids(kafka: KafkaEnv, topic: str) -> set[str]:
    """Token ids ``<topic>/<partition>/<offset>`` of every committed record of ``topic``."""
    from app.kafka.readers import read_topic_to_end

    return {f"{r.topic}/{r.partition}/{r.offset}" for r in read_topic_to_end(kafka.bootstrap, topic)}


def produce_raw(kafka: KafkaEnv, topic: str, values: Iterable[bytes], partition: int = 0) -> None:
    producer = foreign_producer(kafka)
    for i, v in enumerate(values):
        producer.produce(topic, v, key=f"raw{i}".encode(), partition=partition)
    assert producer.flush(30) == 0


def create_topics(kafka: KafkaEnv, tmp: Path, name: str, topics: list[str], partitions: int) -> None:
    write_topics(tmp, name, topics, partitions)
    admin = Admin(kafka.bootstrap)
    for t in topics:
        admin.create_topic(t, partitions, 1, {})


def sink_spec(
    tmp: Path,
    name: str,
    kafka: KafkaEnv,
    registry: RegistryEnv,
    topic: str,
    *,
    fmt: str = "avro_registry",
    part_rows: int = 500,
    registry_block: str | None = None,
    transforms: str = "",
    sink: str | None = None,
) -> Path:
    """A pipeline whose file sink ``files`` reads ``topic`` in a registry format."""
    spec = tmp / "pipeline.yaml"
    block = registry_block if registry_block is not None else registry.spec_block()
    sink = sink or (
        f"""  - name: files
    type: file
    input: {topic}
    input_format: {fmt}
    path: out
    format: ndjson
    part: {{max_rows: {part_rows}, max_age_ms: 1000}}
"""
    )
    spec.write_text(
        spec_head(name, kafka, extra=block) + (f"transforms:\n{transforms}" if transforms else "") + f"sinks:\n{sink}"
    )
    return spec


def assert_sink_exactly_once(
    kafka: KafkaEnv, name: str, out: Path, topic: str, expected_ids: set[str]
) -> list[dict[str, Any]]:
    """Each expected token id once in the file sink; journal and the sink group's offsets
    consistent with it (a sink-only pipeline named ``name``, sink ``files``)."""
    lines = sink_lines(out)
    ids = token_ids(lines)
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} duplicate rows in the sink"
    missing, extra = expected_ids - set(ids), set(ids) - expected_ids
    assert not missing, f"{len(missing)} rows lost, e.g. {sorted(missing)[:5]}"
    assert not extra, f"{len(extra)} unexpected rows, e.g. {sorted(extra)[:5]}"
    assert staging_leftovers(out) == [], "staging files left behind"
    events = load_journal(kafka.bootstrap, f"{name}.journal")
    assert [k for k, ev in events.items() if ev.kind == "part_committed"] == [], "committed parts never finalized"
    finalized = sum(ev.part.rows for ev in events.values() if ev.kind == "part_finalized" and ev.part)
    assert finalized == len(ids), "journal row counts disagree with the files"
    admin = Admin(kafka.bootstrap)
    parts = [(topic, p) for p in admin.partitions_of(topic)]
    ends = admin.end_offsets(parts)
    committed = admin.group_offsets(f"ledgerflow.{name}.sink.files", parts)
    for tp in parts:
        assert ends[tp] - committed.get(tp, 0) <= 1, f"{tp}: committed {committed.get(tp)} end {ends[tp]}"
    return [orjson.loads(x) for x in lines]


def topic_ids(topic: str, partitions: int, per_partition: dict[int, int]) -> set[str]:
    """Token ids of external input: ``<topic>/<partition>/<offset>``."""
    return {f"{topic}/{p}/{o}" for p in range(partitions) for o in range(per_partition.get(p, 0))}


def ids_of_rows(topic: str, rows: int, partitions: int) -> set[str]:
    """Ids of ``rows`` orders written by ``produce_avro`` (row i to partition i % n, in order)."""
    counts = {p: len(range(p, rows, partitions)) for p in range(partitions)}
    return topic_ids(topic, partitions, counts)


def pg_sink_spec(
    tmp: Path, name: str, kafka: KafkaEnv, registry: RegistryEnv, topic: str, dsn: str, *, rows: int, part_rows: int
) -> PipelineFiles:
    """A pipeline whose PostgreSQL sink ``db`` reads ``topic`` as ``avro_registry`` orders
    into a fresh table (``PipelineFiles.out`` holds the table name, as tests.harness does)."""
    table = "t_" + name.replace("-", "_")
    create_pg_table(dsn, table)
    sink = f"""  - name: db
    type: postgres
    input: {topic}
    input_format: avro_registry
    dsn: "{dsn}"
    table: {table}
{PG_COLUMNS}    part: {{max_rows: {part_rows}, max_age_ms: 1000}}
"""
    spec = sink_spec(tmp, name, kafka, registry, topic, sink=sink)
    return PipelineFiles(name, spec, Path(table), topic, topic, rows)
