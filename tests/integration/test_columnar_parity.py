"""The columnar path and the row path give the same bytes on the real broker.

One plain-JSON input topic (3 partitions, bad records in some batches) runs through two
pipelines that differ only in ``columnar: false``: filter, a ``map_batch`` user
function, cast, route and project, a
file sink on one of the routed topics. The output topics hold the same records
(partition, key and value bytes, envelope included), the files the same rows, the DLQ
the same refusals, and both groups committed every input offset. The columnar run's
log shows that most batches took the columnar path and the ones with bad records the
row path."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from app.kafka.admin import Admin
from app.kafka.readers import read_topic_to_end
from app.sources.generator import GeneratorSource
from tests.conftest import KafkaEnv
from tests.harness import read_dlq, run, sink_lines, spec_head, uid, write_topics

pytestmark = pytest.mark.integration

ROWS = 6000
BAD = {1000: b"{not json", 2500: None, 4000: orjson.dumps({"id": -1, "quantity": 2.5, "amount": 5, "country": "DE"})}
STEPS = """    steps:
      - filter: {field: amount, op: ge, value: 0}
      - map_batch: "app.transforms.examples:add_amount_eur_batch"
      - cast: {quantity: int, id: string}
      - route: {field: country, routes: {DE: OUT_DE}, default: OUT_REST}
      - project: {fields: [id, customer, country, amount, amount_eur, quantity, note], rename: {note: remark}}
"""


def _produce(bootstrap: str, topic: str) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    tokens = GeneratorSource("parity", rows=ROWS, seed=21).poll(ROWS).tokens
    for i, t in enumerate(tokens):
        value = BAD[i] if i in BAD else orjson.dumps(t["payload"])
        p.produce(topic, value, t["payload"]["customer"].encode(), partition=i % 3)
    p.flush()


def _pipeline(tmp: Path, kafka: KafkaEnv, src: str, columnar: bool) -> tuple[str, str, str, Path]:
    name = f"par-{uid()}"
    de, rest = f"{name}.de", f"{name}.rest"
    tmp.mkdir()
    write_topics(tmp, name, [de, rest], 3)
    spec = tmp / "pipeline.yaml"
    spec.write_text(
        spec_head(name, kafka, max_rows=500)
        + f"""transforms:
  - name: shape
    input: {src}
    input_format: json
    output: {rest}
    columnar: {str(columnar).lower()}
{STEPS.replace("OUT_DE", de).replace("OUT_REST", rest)}sinks:
  - name: files
    type: file
    input: {rest}
    path: out
    format: ndjson
    part: {{max_rows: 1000, max_age_ms: 500}}
"""
    )
    return name, de, rest, spec


def _records(kafka: KafkaEnv, topic: str) -> list[tuple[int, bytes | None, bytes | None]]:
    return sorted((r.partition, r.key, r.value) for r in read_topic_to_end(kafka.bootstrap, topic))  # type: ignore[type-var]


def test_row_and_columnar_paths_write_the_same_bytes(kafka: KafkaEnv, tmp_path: Path) -> None:
    src = f"par-in-{uid()}"
    Admin(kafka.bootstrap).create_topic(src, 3, 1, {})
    _produce(kafka.bootstrap, src)
    seen = []
    for columnar in (False, True):
        name, de, rest, spec = _pipeline(tmp_path / ("columnar" if columnar else "rows"), kafka, src, columnar)
        proc = run(spec, "--worker-id", "w1")
        assert proc.returncode == 0, proc.stderr[-3000:]
        committed = Admin(kafka.bootstrap).group_offsets(
            f"ledgerflow.{name}.transform.shape", [(src, p) for p in range(3)]
        )
        assert sum(committed.values()) == ROWS
        dlq = sorted(
            (str(d["error_class"]), str(d["error_message"]).split(" | ")[0], str(d["origin"]))  # no traceback lines
            for d in read_dlq(kafka, f"{name}.dlq")
        )
        m = re.search(r"(\d+) batches on the columnar path, (\d+) on the row path", proc.stderr)
        seen.append((_records(kafka, de), _records(kafka, rest), sorted(sink_lines(spec.parent / "out")), dlq, m))
    (de_rows, rest_rows, files_rows, dlq_rows, no_log), (de_col, rest_col, files_col, dlq_col, counts) = seen
    assert no_log is None  # columnar: false never offers a batch to the columnar path
    assert counts is not None, "the columnar run did not report its batches"
    assert int(counts.group(2)) == len(BAD) and int(counts.group(1)) > int(counts.group(2))
    assert len(de_rows) > 0 and len(rest_rows) > 0
    assert de_col == de_rows
    assert rest_col == rest_rows
    assert files_col == files_rows and len(files_rows) == len(rest_rows)
    assert [d[0] for d in dlq_rows] == sorted(["json_decode", "tombstone", "transform_error"])
    assert dlq_col == dlq_rows
    assert orjson.loads(files_rows[0]).keys() >= {"remark", "quantity", "amount_eur", "_token_id"}
