"""Stateful transforms: changelog restore rate, and aggregate throughput next to a
stateless transform on the same input, in one run on one broker.

    .venv/bin/python -m tests.bench.state_bench [--changelog 1000000] [--rows 300000]

1. *Restore*: writes ``--changelog`` records (keys over 200,000 distinct values,
   ~60-byte JSON values, like an aggregate store) to one changelog partition in
   transactions of 100,000, then restores an empty local store from it and prints
   records/s.
2. *Aggregate throughput*: the generator fills a 2-partition input topic with
   ``--rows`` rows (keyed by customer); then three transform-only runs read it:
   stateless (project), ``aggregate`` count/sum/min/max per customer (every row
   emits an update), and ``aggregate`` in 10 s tumbling windows. Prints rows/s.
Uses ``KAFKA_BOOTSTRAP_SERVERS`` or starts the project's local broker.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson

from app.kafka.admin import Admin
from app.kafka.clients import TxnProducer
from app.kafka.local_broker import ensure_bootstrap
from app.state.changelog import CHANGELOG_CONFIGS, Restorer
from app.state.store import PartitionStore

OPS = {
    "stateless": ("    steps:\n      - project: {rename: {amount: amount_cents}}\n"),
    "aggregate": ("    stateful:\n      aggregate: {value_field: amount, functions: [count, sum, min, max]}\n"),
    "windowed": (
        "    stateful:\n      aggregate:\n        value_field: amount\n        functions: [count, sum, min, max]\n"
        "        window: {type: tumbling, size_ms: 10000}\n"
    ),
}


def restore_rate(bootstrap: str, n: int, work: Path) -> tuple[float, int]:
    topic = f"bench-restore-{uuid.uuid4().hex[:6]}.changelog"
    Admin(bootstrap).create_topic(topic, 1, 1, CHANGELOG_CONFIGS)
    prod = TxnProducer(bootstrap, f"bench-restore-{uuid.uuid4().hex[:6]}")
    prod.init()
    chunk = 100_000
    t0 = time.perf_counter()
    for start in range(0, n, chunk):
        keys = [b"k|c%07d" % (i % 200_000) for i in range(start, min(n, start + chunk))]
        values: list[bytes | None] = [
            orjson.dumps({"count": i, "sum": i * 7, "min": -i, "max": i * 3}) for i in range(start, start + len(keys))
        ]
        prod.begin()
        prod.produce_batch(topic, values, keys, partition=0)
        prod.commit()
        print(f"  changelog: {min(n, start + chunk):,} / {n:,} records written", flush=True)
    print(f"  wrote {n:,} changelog records in {time.perf_counter() - t0:.1f}s", flush=True)
    store = PartitionStore(work / "restore-store", topic, 0)
    restorer = Restorer(bootstrap)
    t0 = time.perf_counter()
    applied = restorer.restore(store)
    took = time.perf_counter() - t0
    restorer.close()
    store.close()
    return applied / took, applied


def write_spec(work: Path, name: str, bootstrap: str, op: str, rows: int, input_topic: str) -> Path:
    spec = work / f"{name}.yaml"
    (work / f"{name}.topics.yaml").write_text(f"topics:\n  - name: {name}.out\n    partitions: 2\n")
    spec.write_text(
        f"""pipeline: {name}
topics: [{name}.topics.yaml]
state_dir: {work / "state"}
kafka: {{bootstrap_servers: "{bootstrap}"}}
commit: {{interval_ms: 200, max_rows: 20000}}
sources:
  - name: gen
    type: generator
    topic: {input_topic}
    rows: {rows}
    seed: 3
    key_field: customer
transforms:
  - name: t
    input: {input_topic}
    output: {name}.out
{OPS[op]}"""
    )
    return spec


def run_stage(spec: Path, stage: str) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli.main", "run", str(spec), "--stage", stage, "--exit-when-done"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{stage} run of {spec} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--changelog", type=int, default=1_000_000)
    ap.add_argument("--rows", type=int, default=300_000)
    args = ap.parse_args()
    bootstrap = ensure_bootstrap(None)
    work = Path(tempfile.mkdtemp(prefix="lf-state-bench-"))
    try:
        print(f"restore: {args.changelog:,} changelog records", flush=True)
        rate, applied = restore_rate(bootstrap, args.changelog, work)
        tag = uuid.uuid4().hex[:6]
        input_topic = f"bench-state-{tag}.in"
        Admin(bootstrap).create_topic(input_topic, 2, 1, {})
        print(f"input: generating {args.rows:,} rows into {input_topic}", flush=True)
        run_stage(write_spec(work, f"bench-state-{tag}-fill", bootstrap, "stateless", args.rows, input_topic), "source")
        results = {}
        for op in OPS:
            name = f"bench-state-{tag}-{op}"
            spec = write_spec(work, name, bootstrap, op, args.rows, input_topic)
            took = run_stage(spec, "transform")
            results[op] = args.rows / took
            print(f"  {op:<10} {args.rows:,} rows in {took:.1f}s = {results[op]:,.0f} rows/s", flush=True)
        print()
        print("| measurement | result |")
        print("|---|---|")
        print(f"| changelog restore ({applied:,} records, 1 partition) | {rate:,.0f} records/s |")
        for op, r in results.items():
            print(f"| transform {op} ({args.rows:,} rows, 2 partitions, process wall time) | {r:,.0f} rows/s |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
