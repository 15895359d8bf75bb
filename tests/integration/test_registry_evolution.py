"""Schema evolution and bad input on a real Apicurio Registry (compatibility BACKWARD).

* A field added with a default mid-stream: old and new records land in one part.
* An incompatible output schema stops the transform with the registry's error
  (subject, version, compatibility level); no row is lost, a fixed schema finishes.
* Each DLQ reason of framed input (not_framed, schema_unknown, schema_mismatch) keeps
  the original bytes and names the id (and subject where there is one).
"""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path

import orjson
import pytest
from fastavro import parse_schema, schemaless_writer

from app.codecs.registry import frame
from app.kafka.admin import Admin
from app.kafka.readers import read_topic_to_end
from tests.conftest import KafkaEnv
from tests.harness import read_dlq, run, uid
from tests.registry_env import RegistryEnv
from tests.registry_harness import (
    ORDER_V1,
    ORDER_V2,
    assert_sink_exactly_once,
    create_topics,
    order,
    produce_avro,
    produce_raw,
    sink_spec,
    topic_ids,
)

pytestmark = pytest.mark.integration


def test_added_field_with_default_mid_stream_lands_in_one_part(
    kafka: KafkaEnv, registry: RegistryEnv, tmp_path: Path
) -> None:
    name = f"regev-{uid()}"
    src = f"{name}.orders"
    create_topics(kafka, tmp_path, name, [src], 1)
    produce_avro(kafka, registry, src, (order(i) for i in range(500)), ORDER_V1, partitions=1)
    produce_avro(kafka, registry, src, (order(i, v2=True) for i in range(500, 1000)), ORDER_V2, partitions=1)
    versions = registry.client().get_versions(f"{src}-value")
    assert versions == [1, 2]  # the registry accepted the evolution (BACKWARD)
    spec = sink_spec(tmp_path, name, kafka, registry, src, part_rows=5000)
    proc = run(spec, "--worker-id", "w1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = assert_sink_exactly_once(kafka, name, tmp_path / "out", src, topic_ids(src, 1, {0: 1000}))
    parts = sorted((tmp_path / "out").rglob("part-*.ndjson"))
    assert len(parts) == 1, parts  # old and new records in one part
    by_id = {r["id"]: r for r in rows}
    assert "channel" not in by_id[10] and by_id[510]["channel"] == order(510, v2=True)["channel"]


def test_incompatible_output_schema_stops_the_stage_and_loses_nothing(
    kafka: KafkaEnv, registry: RegistryEnv, tmp_path: Path
) -> None:
    name = f"reginc-{uid()}"
    src, out = f"{name}.orders", f"{name}.out"
    create_topics(kafka, tmp_path, name, [src, out], 1)
    produce_avro(kafka, registry, src, (order(i) for i in range(400)), partitions=1)
    subject = f"{out}-value"
    from confluent_kafka.schema_registry import Schema

    registry.client().register_schema(subject, Schema(json.dumps(ORDER_V1), "AVRO"))
    # amount becomes a string: a BACKWARD-incompatible change the registry refuses
    bad = {
        **ORDER_V1,
        "fields": [f if f["name"] != "amount" else {"name": "amount", "type": "string"} for f in ORDER_V1["fields"]],
    }
    (tmp_path / "out.avsc").write_text(json.dumps(bad))
    transforms = f"""  - name: shape
    input: {src}
    input_format: avro_registry
    output: {out}
    output_format: avro_registry
    output_schema: out.avsc
"""
    spec = sink_spec(tmp_path, name, kafka, registry, out, transforms=transforms)
    proc = run(spec, "--worker-id", "w1", "--stage", "transform")
    assert proc.returncode != 0
    err = proc.stderr
    assert f"subject {subject}" in err and "latest version 1" in err and "compatibility level BACKWARD" in err, err[
        -3000:
    ]
    assert "Incompatible" in err  # the registry's own words
    assert read_topic_to_end(kafka.bootstrap, out) == []  # nothing written ...
    parts = [(src, 0)]
    assert Admin(kafka.bootstrap).group_offsets(f"ledgerflow.{name}.transform.shape", parts).get((src, 0), 0) == 0
    assert len(registry.client().get_versions(subject)) == 1
    # ... so a compatible schema (v2: a field with a default) finishes with every row
    (tmp_path / "out.avsc").write_text(json.dumps({**ORDER_V2}))
    proc = run(spec, "--worker-id", "w1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = read_topic_to_end(kafka.bootstrap, out)
    rows = assert_sink_exactly_once(kafka, name, tmp_path / "out", out, {f"{out}/0/{r.offset}" for r in written})
    assert sorted(r["id"] for r in rows) == list(range(400))
    assert {r["channel"] for r in rows} == {"web"}  # the default, filled in by the writer
    assert registry.client().get_versions(subject) == [1, 2]


def test_each_dlq_reason_keeps_the_original_bytes(kafka: KafkaEnv, registry: RegistryEnv, tmp_path: Path) -> None:
    name = f"regbad-{uid()}"
    src = f"{name}.orders"
    create_topics(kafka, tmp_path, name, [src], 1)
    produce_avro(kafka, registry, src, (order(i) for i in range(100)), partitions=1)
    schema_id = registry.client().get_latest_version(f"{src}-value").schema_id
    body = BytesIO()
    schemaless_writer(body, parse_schema(ORDER_V1), order(100))
    good = frame(schema_id, body.getvalue())
    bad = {
        "not_framed": orjson.dumps(order(101)),  # plain JSON: no magic byte
        "schema_unknown": frame(987_654, body.getvalue()),  # an id the registry never gave out
        "schema_mismatch": good[: len(good) - 3],  # a truncated body
    }
    produce_raw(kafka, src, [bad["not_framed"], good, bad["schema_unknown"], bad["schema_mismatch"], b"\x00\x00"])
    spec = sink_spec(tmp_path, name, kafka, registry, src)
    proc = run(spec, "--worker-id", "w1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = assert_sink_exactly_once(kafka, name, tmp_path / "out", src, topic_ids(src, 1, {0: 100}) | {f"{src}/0/101"})
    assert sorted(r["id"] for r in rows) == list(range(101))
    dlq = {(d["error_class"], bytes(d["original_value"])): d for d in read_dlq(kafka, f"{name}.dlq")}
    assert sorted(k[0] for k in dlq) == ["not_framed", "not_framed", "schema_mismatch", "schema_unknown"]
    for reason, value in bad.items():
        d = dlq[(reason, value)]  # the original bytes, as produced
        assert d["origin"]["topic"] == src and d["stage"] == "sink/files"
    assert "987654" in str(dlq[("schema_unknown", bad["schema_unknown"])]["error_message"])
    mismatch = str(dlq[("schema_mismatch", bad["schema_mismatch"])]["error_message"])
    assert f"schema id {schema_id}" in mismatch and f"{src}-value" in mismatch
    assert "magic byte" in str(dlq[("not_framed", b"\x00\x00")]["error_message"])
