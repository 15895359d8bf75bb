"""Stateful pipelines for tests: spec writer, and results recomputed from the input.

The reference implementations below are written independently of
``app.transforms.stateful``: plain loops over each input partition in offset order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from app.codecs.tokens import TokenCodec
from app.kafka.readers import read_topic_to_end
from tests.conftest import KafkaEnv
from tests.fns import jitter_time
from tests.harness import sink_lines, spec_head, write_topics

WINDOW = {"size_ms": 2000, "allowed_lateness_ms": 1000}
AGGREGATE = (
    "      aggregate:\n"
    "        value_field: amount\n"
    "        functions: [count, sum, min, max]\n"
    "        time_field: ts\n"
    f"        window: {{type: tumbling, size_ms: {WINDOW['size_ms']}, "
    f"allowed_lateness_ms: {WINDOW['allowed_lateness_ms']}}}\n"
)
DEDUPE = "      dedupe: {}\n"


@dataclass
class StatefulPipeline:
    name: str
    spec: Path
    out: Path
    raw: str
    result: str
    state_dir: Path


def write_stateful(
    tmp: Path,
    name: str,
    kafka: KafkaEnv,
    op: str,
    *,
    rows: int = 20_000,
    partitions: int = 3,
    max_rows: int = 1_000,
    restore_chunk: int = 50_000,
    rate: int | None = None,
) -> StatefulPipeline:
    raw, result = f"{name}.raw", f"{name}.result"
    write_topics(tmp, name, [raw, result], partitions)
    rate_line = f"    rate_per_s: {rate}\n" if rate else ""
    spec = tmp / "pipeline.yaml"
    spec.write_text(
        spec_head(name, kafka, max_rows=max_rows, extra=f"state_dir: state\nrestore_chunk: {restore_chunk}\n")
        + f"""sources:
  - name: gen
    type: generator
    topic: {raw}
    rows: {rows}
    seed: 5
    key_field: customer
{rate_line}transforms:
  - name: agg
    input: {raw}
    output: {result}
    steps:
      - map: "tests.fns:jitter_time"
    stateful:
{op}sinks:
  - name: files
    type: file
    input: {result}
    path: out
    format: ndjson
    part: {{max_rows: 2000, max_age_ms: 1000}}
"""
    )
    return StatefulPipeline(name, spec, tmp / "out", raw, result, tmp / "state")


def input_by_partition(kafka: KafkaEnv, topic: str) -> dict[int, list[dict[str, Any]]]:
    """The source's tokens per partition in offset order, with the test map applied."""
    codec = TokenCodec()
    out: dict[int, list[dict[str, Any]]] = {}
    for rec in sorted(read_topic_to_end(kafka.bootstrap, topic), key=lambda r: (r.partition, r.offset)):
        assert rec.value is not None
        tok = dict(codec.decode(rec.value))
        tok["payload"] = jitter_time(tok["payload"])
        out.setdefault(rec.partition, []).append(tok)
    return out


def expected_windows(parts: dict[int, list[dict[str, Any]]]) -> tuple[dict[str, dict[str, Any]], int]:
    """Tumbling-window results (token id -> aggregate) a correct run emits, and the late-row count."""
    size, lateness = WINDOW["size_ms"], WINDOW["allowed_lateness_ms"]
    results: dict[str, dict[str, Any]] = {}
    late = 0
    for toks in parts.values():
        wm: int | None = None
        open_: dict[tuple[int, str], list[int]] = {}
        for tok in toks:
            t, key, amount = tok["payload"]["ts"], tok["key"], tok["payload"]["amount"]
            ws = t - t % size
            if wm is not None and ws + size + lateness <= wm:
                late += 1
                continue
            open_.setdefault((ws, key), []).append(amount)
            if wm is None or t > wm:
                wm = t
                for s, k in sorted(w for w in open_ if w[0] + size + lateness <= wm):
                    vals = open_.pop((s, k))
                    results[f"agg:{k}:{s}"] = {"count": len(vals), "sum": sum(vals), "min": min(vals), "max": max(vals)}
    return results, late


def expected_dedupe(parts: dict[int, list[dict[str, Any]]]) -> set[str]:
    """Token ids of the first row of each key."""
    first: dict[str, str] = {}
    for toks in parts.values():
        for tok in toks:
            first.setdefault(tok["key"], tok["token_id"])
    return set(first.values())


def sink_rows(out: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in sink_lines(out)]
