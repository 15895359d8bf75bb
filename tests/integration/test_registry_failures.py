"""The registry fails: down at start (a clear error naming its URL) and restarted mid-run
(KafkaSQL storage, so ids survive): the lookup is waited out with backoff, nothing is
dead-lettered as schema_unknown and every row lands exactly once."""

from __future__ import annotations

import json
import time
from io import BytesIO
from pathlib import Path

import pytest
from confluent_kafka.schema_registry import Schema
from fastavro import parse_schema, schemaless_writer

from app.codecs.registry import frame
from app.registry.server import RegistryServer
from tests.conftest import KafkaEnv
from tests.harness import popen, read_dlq, run, stop, uid, wait_for_rows
from tests.registry_env import TEST_PORT, RegistryEnv
from tests.registry_harness import (
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


def test_registry_down_at_start_names_the_url(kafka: KafkaEnv, registry: RegistryEnv, tmp_path: Path) -> None:
    name = f"regdown-{uid()}"
    src = f"{name}.orders"
    create_topics(kafka, tmp_path, name, [src], 1)
    url = "http://127.0.0.1:9/apis/ccompat/v7"  # nothing listens on the discard port
    spec = sink_spec(tmp_path, name, kafka, registry, src, registry_block=registry.spec_block(url=url, timeout_s=1))
    started = time.monotonic()
    proc = run(spec, "--worker-id", "w1", timeout=60)
    assert proc.returncode != 0
    assert f"schema registry {url} is not reachable" in proc.stderr, proc.stderr[-2000:]
    assert time.monotonic() - started < 30


def test_registry_restart_mid_run_is_waited_out(kafka: KafkaEnv, registry: RegistryEnv, tmp_path: Path) -> None:
    own = RegistryServer(
        tmp_path / "registry",
        port=TEST_PORT + 1,
        storage="kafkasql",
        bootstrap=kafka.bootstrap,
        topic_prefix=f"registry-{uid()}",
    )
    own.up(timeout=120)
    try:
        own_env = RegistryEnv(own)
        name = f"regbounce-{uid()}"
        src = f"{name}.orders"
        create_topics(kafka, tmp_path, name, [src], 1)
        produce_avro(kafka, own_env, src, (order(i) for i in range(500)), partitions=1)
        # v2 is registered now; its records come while the registry is down, so the
        # pipeline must look its id up after the restart
        v2_id = own_env.client().register_schema(f"{src}-value", Schema(json.dumps(ORDER_V2), "AVRO"))
        spec = sink_spec(tmp_path, name, kafka, own_env, src, part_rows=200)
        log = tmp_path / "sink.log"
        proc = popen(spec, "--worker-id", "w1", log=log)
        try:
            wait_for_rows(tmp_path / "out", 500, proc=proc)
            own.kill()
            parsed = parse_schema(ORDER_V2)
            values = []
            for i in range(500, 800):
                buf = BytesIO()
                schemaless_writer(buf, parsed, order(i, v2=True))
                values.append(frame(v2_id, buf.getvalue()))
            produce_raw(kafka, src, values)
            time.sleep(4)  # the sink meets the unknown id while the registry is down
            own.up(timeout=120)
            wait_for_rows(tmp_path / "out", 800, proc=proc, timeout=120)
        finally:
            stop(proc)
        text = log.read_text()
        assert "unreachable" in text and "answers again" in text, text[-3000:]
        rows = assert_sink_exactly_once(kafka, name, tmp_path / "out", src, topic_ids(src, 1, {0: 800}))
        assert sorted(r["id"] for r in rows) == list(range(800))
        assert read_dlq(kafka, f"{name}.dlq") == []  # nothing dead-lettered as schema_unknown
    finally:
        own.down()
