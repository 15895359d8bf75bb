"""Interop with the Confluent ecosystem on a real broker and a real Apicurio Registry:
a topic written by confluent-kafka's own AvroSerializer lands exactly once in the file
and PostgreSQL sinks, and a transform's framed output is read back by confluent-kafka's
AvroDeserializer. Also JSON Schema input, and auto_register: false output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.kafka.readers import read_topic_to_end
from tests.conftest import KafkaEnv
from tests.harness import assert_pg_exactly_once, read_dlq, run, uid
from tests.registry_env import RegistryEnv
from tests.registry_harness import (
    ORDER_JSON,
    assert_sink_exactly_once,
    create_topics,
    foreign_producer,
    ids_of_rows,
    order,
    pg_sink_spec,
    produce_avro,
    sink_spec,
)

pytestmark = pytest.mark.integration

ORDER_OUT: dict[str, Any] = {
    "type": "record",
    "name": "OrderOut",
    "namespace": "shop.out",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "customer", "type": "string"},
        {"name": "amount_cents", "type": "long"},
    ],
}


def _read_back(kafka: KafkaEnv, registry: RegistryEnv, topic: str, n: int) -> list[dict[str, Any]]:
    """What a consumer outside ledgerflow sees: read_committed + AvroDeserializer."""
    from confluent_kafka import Consumer
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    de = AvroDeserializer(registry.client())
    c = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap,
            "group.id": f"reader-{uid()}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    c.subscribe([topic])
    out: list[dict[str, Any]] = []
    import time

    deadline = time.monotonic() + 60
    try:
        while len(out) < n and time.monotonic() < deadline:
            for m in c.consume(1000, 1.0):
                if m.error() is None:
                    out.append(de(m.value(), SerializationContext(topic, MessageField.VALUE)))
    finally:
        c.close()
    return out


def test_foreign_avro_to_file_sink_and_framed_output_read_back(
    kafka: KafkaEnv, registry: RegistryEnv, tmp_path: Path
) -> None:
    name, rows = f"regio-{uid()}", 3000
    src, out = f"{name}.orders", f"{name}.out"
    create_topics(kafka, tmp_path, name, [src, out], 3)
    produce_avro(kafka, registry, src, (order(i) for i in range(rows)))
    (tmp_path / "order_out.avsc").write_text(json.dumps(ORDER_OUT))
    transforms = f"""  - name: shape
    input: {src}
    input_format: avro_registry
    output: {out}
    output_format: avro_registry
    output_schema: order_out.avsc
    steps:
      - project: {{fields: [id, customer, amount], rename: {{amount: amount_cents}}}}
"""
    spec = sink_spec(tmp_path, name, kafka, registry, src, transforms=transforms)
    proc = run(spec, "--worker-id", "w1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = assert_sink_exactly_once(kafka, name, tmp_path / "out", src, ids_of_rows(src, rows, 3))
    by_id = {r["id"]: r for r in got}
    assert by_id[7] == {**by_id[7], **order(7)}  # every field of the foreign record, as written
    assert read_dlq(kafka, f"{name}.dlq") == []

    back = _read_back(kafka, registry, out, rows)
    assert sorted(r["id"] for r in back) == list(range(rows))  # exactly once, decoded by a stock client
    assert {r["id"]: r["amount_cents"] for r in back} == {i: order(i)["amount"] for i in range(rows)}
    latest = registry.client().get_latest_version(f"{out}-value")
    assert json.loads(latest.schema.schema_str)["name"] == "OrderOut"
    assert len(registry.client().get_versions(f"{out}-value")) == 1  # registered once


def test_foreign_avro_to_postgres_exactly_once(
    kafka: KafkaEnv, registry: RegistryEnv, postgres: Any, tmp_path: Path
) -> None:
    name, rows = f"regpg-{uid()}", 2000
    src = f"{name}.orders"
    create_topics(kafka, tmp_path, name, [src], 3)
    produce_avro(kafka, registry, src, (order(i) for i in range(rows)))
    pf = pg_sink_spec(tmp_path, name, kafka, registry, src, postgres.dsn, rows=rows, part_rows=500)
    proc = run(pf.spec, "--worker-id", "w1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_pg_exactly_once(kafka, pf, postgres.dsn, ids_of_rows(src, rows, 3))


def test_json_schema_input_and_mismatch(kafka: KafkaEnv, registry: RegistryEnv, tmp_path: Path) -> None:
    """confluent-kafka's JSONSerializer as the foreign producer; a framed record whose
    body breaks its JSON schema goes to the DLQ as schema_mismatch, bytes kept."""
    from confluent_kafka.schema_registry.json_schema import JSONSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    name = f"regjs-{uid()}"
    src = f"{name}.events"
    create_topics(kafka, tmp_path, name, [src], 1)
    ser = JSONSerializer(json.dumps(ORDER_JSON), registry.client())
    ctx = SerializationContext(src, MessageField.VALUE)
    producer = foreign_producer(kafka)
    good = [ser({"id": i, "customer": f"c{i}", "amount": i * 3}, ctx) for i in range(200)]
    bad = good[5][:5] + orjson.dumps({"id": "five", "customer": "c5"})  # same id, body breaks the schema
    for v in [*good[:100], bad, *good[100:]]:
        producer.produce(src, v, partition=0)
    assert producer.flush(30) == 0
    spec = sink_spec(tmp_path, name, kafka, registry, src, fmt="json_schema_registry")
    proc = run(spec, "--worker-id", "w1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ids = {f"{src}/0/{o}" for o in range(201) if o != 100}
    rows = assert_sink_exactly_once(kafka, name, tmp_path / "out", src, ids)
    assert sorted(r["id"] for r in rows) == list(range(200))
    dlq = read_dlq(kafka, f"{name}.dlq")
    assert [d["error_class"] for d in dlq] == ["schema_mismatch"]
    assert dlq[0]["original_value"] == bad
    assert f"{src}-value" in str(dlq[0]["error_message"]) and "schema id" in str(dlq[0]["error_message"])


def test_output_without_auto_register_dead_letters_rows_that_do_not_fit(
    kafka: KafkaEnv, registry: RegistryEnv, tmp_path: Path
) -> None:
    """auto_register: false writes with the subject's latest registered version; a row
    that does not fit it goes to the DLQ (schema_mismatch), the others are written."""
    from confluent_kafka.schema_registry import Schema

    name = f"regnoauto-{uid()}"
    src, out = f"{name}.in", f"{name}.out"
    create_topics(kafka, tmp_path, name, [src, out], 1)
    registry.client().register_schema(f"{out}-value", Schema(json.dumps(ORDER_OUT), "AVRO"))
    producer = foreign_producer(kafka)
    values = [orjson.dumps({"id": i, "customer": f"c{i}", "amount_cents": i}) for i in range(300)]
    values[42] = orjson.dumps({"id": 42, "customer": "c42", "amount_cents": "lots"})
    for v in values:
        producer.produce(src, v, partition=0)
    assert producer.flush(30) == 0
    transforms = f"""  - name: shape
    input: {src}
    input_format: json
    output: {out}
    output_format: avro_registry
    auto_register: false
"""
    spec = sink_spec(tmp_path, name, kafka, registry, out, transforms=transforms)
    proc = run(spec, "--worker-id", "w1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = read_topic_to_end(kafka.bootstrap, out)  # offsets of transactional output skip the markers
    assert len(written) == 299
    rows = assert_sink_exactly_once(kafka, name, tmp_path / "out", out, {f"{out}/0/{r.offset}" for r in written})
    assert sorted(r["id"] for r in rows) == [i for i in range(300) if i != 42]
    dlq = read_dlq(kafka, f"{name}.dlq")
    assert [d["error_class"] for d in dlq] == ["schema_mismatch"]
    assert dlq[0]["original_value"] == values[42] and f"{out}-value" in str(dlq[0]["error_message"])
    assert len(registry.client().get_versions(f"{out}-value")) == 1  # nothing registered
