"""Interval-join pipelines for tests: two co-partitioned JSON topics written by a plain
producer, the spec, and the joined rows recomputed from what the topics hold.

The reference below is written independently of ``app.transforms.interval_join``: per
partition, each side's rows in offset order with the lateness rule (a row is late when
its time is below the largest earlier time of its side minus the grace), then a
plain nested loop over the non-late rows of both sides."""

from __future__ import annotations

import contextlib
import random
import signal
import subprocess
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Producer

from app.kafka.readers import read_topic_to_end
from tests.conftest import KafkaEnv
from tests.harness import hanging_transactions, popen, spec_head, uid, write_topics
from tests.stateful_harness import sink_rows

PARTITIONS = 3
BEFORE, AFTER, GRACE = 2_000, 1_000, 1_500
# Event times (and record timestamps) near now: a fixed date long past would put every
# segment beyond the broker's 7-day retention, and the retention check would delete the
# input under a running test.
T0 = (int(time.time()) - 600) * 1000
KEYS = 150
FIELDS = ["id", "v"]  # right fields the join adds, under "r_"


@dataclass
class IntervalJoinPipeline:
    name: str
    spec: Path
    out: Path
    left: str
    right: str
    state_dir: Path
    join_type: str


def side_rows(side: str, n: int, seed: int) -> list[tuple[int, bytes | None, dict[str, Any]]]:
    """(partition, record key, payload): time drifts 20 ms a row, out of order by up to
    1.2 s (within the grace), every 53rd row 5 s behind (late); every 211th row has no
    key, every 223rd a time that is no integer. The partition is the key's CRC32
    modulo the partition count on both sides: the topics are co-partitioned."""
    rng = random.Random(seed)
    out: list[tuple[int, bytes | None, dict[str, Any]]] = []
    for i in range(n):
        k = f"k{rng.randrange(KEYS)}"
        t = T0 + i * 20 + rng.randint(-1_200, 100) - (5_000 if i % 53 == 17 else 0)
        payload: dict[str, Any] = {"id": f"{side}{i}", "k": k, "ts": t, "v": i}
        part = zlib.crc32(k.encode()) % PARTITIONS
        if i % 211 == 7:
            del payload["k"]
        if i % 223 == 11:
            payload["ts"] = "soon"
        out.append((part, k.encode(), payload))
    return out


def produce_sides(kafka: KafkaEnv, ij: IntervalJoinPipeline, rows: int) -> None:
    """Both topics' rows (the topics exist: ``topics.yaml`` is applied by a first run
    or here); record timestamps are the rows' times where they have one."""
    from app.kafka.admin import Admin

    admin = Admin(kafka.bootstrap)
    for topic in (ij.left, ij.right):
        if topic not in admin.describe_topics([topic]):
            admin.create_topic(topic, PARTITIONS, 1, {})
    failed: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(str(err))

    p = Producer({"bootstrap.servers": kafka.bootstrap, "linger.ms": 20, "enable.idempotence": True})
    for topic, side, seed in ((ij.left, "L", 21), (ij.right, "R", 22)):
        for part, key, payload in side_rows(side, rows, seed):
            ts = payload["ts"] if isinstance(payload["ts"], int) else T0
            p.produce(topic, orjson.dumps(payload), key, partition=part, timestamp=ts, on_delivery=delivered)
    assert p.flush(60) == 0 and not failed, f"rows not delivered: {failed[:3]}"


def write_interval_join(
    tmp: Path,
    name: str,
    kafka: KafkaEnv,
    *,
    join_type: str = "inner",
    right_partitions: int = PARTITIONS,
    max_rows: int = 500,
) -> IntervalJoinPipeline:
    left, right, out = f"{name}.left", f"{name}.right", f"{name}.joined"
    write_topics(tmp, name, [left, out], PARTITIONS)
    with (tmp / "topics.yaml").open("a") as f:
        f.write(f"  - name: {right}\n    partitions: {right_partitions}\n")
    spec = tmp / "pipeline.yaml"
    spec.write_text(
        spec_head(name, kafka, max_rows=max_rows, extra="state_dir: state\n")
        + f"""transforms:
  - name: ij
    input: {left}
    input_format: json
    output: {out}
    steps:
      - interval_join:
          right: {right}
          key: k
          time: ts
          before_ms: {BEFORE}
          after_ms: {AFTER}
          grace_ms: {GRACE}
          type: {join_type}
          prefix: "r_"
          fields: [{", ".join(FIELDS)}]
      - project: {{rename: {{v: left_v}}}}
sinks:
  - name: files
    type: file
    input: {out}
    path: out
    format: ndjson
    part: {{max_rows: 2000, max_age_ms: 1000}}
"""
    )
    return IntervalJoinPipeline(name, spec, tmp / "out", left, right, tmp / "state", join_type)


def run_join(
    spec: Path, *args: str, crash_at: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``ledgerflow run --exit-when-done`` like ``tests.harness.run`` (its log as
    ``stderr``), but a run that outlives ``timeout`` is aborted with every thread's
    stack in the failure (faulthandler), so a stall says where it is."""
    log = spec.parent / f"run-{uid()}.log"
    env = {"PYTHONFAULTHANDLER": "1", **({"LEDGERFLOW_CRASH_AT": crash_at} if crash_at else {})}
    proc = popen(spec, "--exit-when-done", *args, env_extra=env, log=log)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack, then it dies
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(15)
        if proc.poll() is None:
            proc.kill()
        raise AssertionError(
            f"run did not finish in {timeout:.0f}s; its log and threads:\n{log.read_text()[-12000:]}"
        ) from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", log.read_text())


@dataclass
class Expected:
    rows: dict[str, dict[str, Any]]  # token id -> payload
    dlq: dict[str, int] = field(default_factory=dict)  # reason -> rows
    pairs: int = 0
    unmatched: int = 0


def _by_partition(kafka: KafkaEnv, topic: str) -> dict[int, list[tuple[str, dict[str, Any]]]]:
    out: dict[int, list[tuple[str, dict[str, Any]]]] = {}
    for rec in sorted(read_topic_to_end(kafka.bootstrap, topic), key=lambda r: (r.partition, r.offset)):
        assert rec.value is not None
        out.setdefault(rec.partition, []).append((f"{topic}/{rec.partition}/{rec.offset}", orjson.loads(rec.value)))
    return out


def expected_join(kafka: KafkaEnv, ij: IntervalJoinPipeline) -> Expected:
    res = Expected({})

    def kept(rows: list[tuple[str, dict[str, Any]]]) -> tuple[list[tuple[str, dict[str, Any]]], float]:
        wm = float("-inf")
        out = []
        for tid, p in rows:
            if "k" not in p:
                res.dlq["no_key"] = res.dlq.get("no_key", 0) + 1
            elif not isinstance(p["ts"], int):
                res.dlq["no_event_time"] = res.dlq.get("no_event_time", 0) + 1
            elif p["ts"] < wm:
                res.dlq["join_late"] = res.dlq.get("join_late", 0) + 1
            else:
                out.append((tid, p))
                wm = max(wm, p["ts"] - GRACE)
        return out, wm

    lefts, rights = _by_partition(kafka, ij.left), _by_partition(kafka, ij.right)

    def shaped(p: dict[str, Any]) -> dict[str, Any]:  # the project step after the join
        return {("left_v" if k == "v" else k): v for k, v in p.items()}

    for part in sorted(set(lefts) | set(rights)):
        ls, wm_l = kept(lefts.get(part, []))
        rs, wm_r = kept(rights.get(part, []))
        met: set[str] = set()
        for lid, lp in ls:
            for rid, rp in rs:
                if lp["k"] == rp["k"] and lp["ts"] - BEFORE <= rp["ts"] <= lp["ts"] + AFTER:
                    res.rows[f"{lid}+{rid}"] = shaped({**lp, **{f"r_{f}": rp[f] for f in FIELDS}})
                    met |= {lid, rid}
                    res.pairs += 1
        if ij.join_type in ("left", "outer"):
            for lid, lp in ls:
                if lid not in met and wm_r > lp["ts"] + AFTER:
                    res.rows[f"{lid}+"] = shaped({**lp, **{f"r_{f}": None for f in FIELDS}})
                    res.unmatched += 1
        if ij.join_type == "outer":
            for rid, rp in rs:
                if rid not in met and wm_l > rp["ts"] + BEFORE:
                    res.rows[f"+{rid}"] = {f"r_{f}": rp[f] for f in FIELDS}
                    res.unmatched += 1
    return res


def assert_joined(kafka: KafkaEnv, ij: IntervalJoinPipeline) -> Expected:
    """The sink holds exactly the recomputed rows, each once, with their payloads; no
    transaction is left open; the group committed both topics to their ends."""
    want = expected_join(kafka, ij)
    rows = sink_rows(ij.out)
    got = {r["_token_id"]: {k: v for k, v in r.items() if not k.startswith("_")} for r in rows}
    assert len(got) == len(rows), "a row was emitted twice"
    assert set(got) == set(want.rows), (sorted(set(want.rows) - set(got))[:5], sorted(set(got) - set(want.rows))[:5])
    wrong = [k for k in want.rows if got[k] != want.rows[k]]
    assert not wrong, f"{len(wrong)} rows differ, e.g. {wrong[0]}: {got[wrong[0]]} != {want.rows[wrong[0]]}"
    assert hanging_transactions(kafka, f"ledgerflow.{ij.name}.") == []
    assert committed_offsets(kafka, ij) == end_offsets(kafka, ij)
    return want


def _tps(ij: IntervalJoinPipeline) -> list[tuple[str, int]]:
    return [(t, p) for t in (ij.left, ij.right) for p in range(PARTITIONS)]


def committed_offsets(kafka: KafkaEnv, ij: IntervalJoinPipeline) -> dict[tuple[str, int], int]:
    """What the transform's group committed, for the input AND the right topic."""
    from app.kafka.admin import Admin

    return Admin(kafka.bootstrap).group_offsets(f"ledgerflow.{ij.name}.transform.ij", _tps(ij))


def end_offsets(kafka: KafkaEnv, ij: IntervalJoinPipeline) -> dict[tuple[str, int], int]:
    from app.kafka.admin import Admin

    return Admin(kafka.bootstrap).end_offsets(_tps(ij))
