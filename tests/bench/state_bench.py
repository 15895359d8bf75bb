"""Stateful transforms: changelog restore rate, and aggregate throughput next to a
stateless transform on the same input, in one run on one broker.

    .venv/bin/python -m tests.bench.state_bench [--changelog 1000000] [--rows 300000] [--failover-rows 1000000]

1. *Restore*: writes ``--changelog`` records (keys over 200,000 distinct values,
   ~60-byte JSON values, like an aggregate store) to one changelog partition in
   transactions of 100,000, then restores an empty local store from it and prints
   records/s.
2. *Aggregate throughput*: the generator fills a 2-partition input topic with
   ``--rows`` rows (keyed by customer); then three transform-only runs read it:
   stateless (project), ``aggregate`` count/sum/min/max per customer (every row
   emits an update), ``aggregate`` in 10 s tumbling windows, ``aggregate`` in
   session windows (2 s gap), and a left ``lookup_join`` against a 4,096-customer
   compacted table (co-partitioned, filled before the rows), and an inner
   ``interval_join`` (±2 s) with a second topic of as many generated rows (another
   seed; about one pair per row). Prints input rows/s.
3. *Move and failover* (``--failover-rows``, a ``dedupe`` by token id: a store key per
   row): worker a holds both partitions; worker b joins and takes one over (start to
   its store restored), then a is SIGKILLed and b takes the other (kill to restored:
   the 6 s session timeout plus the restore), once without standbys and once with
   ``standby_replicas: 1`` (b's warm copies leave only the changelog's tail).
Uses ``KAFKA_BOOTSTRAP_SERVERS`` or starts the project's local broker.
"""

from __future__ import annotations

import argparse
import re
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
    "session": (
        "    stateful:\n      aggregate:\n        value_field: amount\n        functions: [count, sum, min, max]\n"
        "        window: {type: session, gap_ms: 2000, allowed_lateness_ms: 1000}\n"
    ),
    "interval_join": (
        "    steps:\n      - interval_join: {right: RIGHT, before_ms: 2000, after_ms: 2000, grace_ms: 100,\n"
        '                        type: inner, prefix: "r_", fields: [amount]}\n'
    ),
    "dedupe": ("    stateful:\n      dedupe: {field: _token_id}\n"),  # a store key per row
    "lookup_join": (
        "    stateful:\n      lookup_join: {table: TABLE, key_field: null, type: left, fields: [name, tier],\n"
        '                    prefix: "customer_"}\n'
    ),
}
JOINED = {"lookup_join": "customer_name", "interval_join": "r_amount"}  # a field only a joined row has
CUSTOMERS = 4096  # the generator's customers: c00000 .. c04095


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


def fill_table(bootstrap: str, topic: str, partitions: int) -> None:
    """A compacted customers table keyed like the generator's rows (default partitioner,
    as the source's producer), one version per customer, timestamped before every row."""
    from confluent_kafka import Producer

    Admin(bootstrap).create_topic(
        topic, partitions, 1, {"cleanup.policy": "compact", "min.compaction.lag.ms": "86400000"}
    )
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for i in range(CUSTOMERS):
        value = orjson.dumps({"name": f"customer {i}", "tier": ("gold", "silver", "bronze")[i % 3]})
        while True:
            try:
                p.produce(topic, value, f"c{i:05d}".encode(), timestamp=1)
                break
            except BufferError:
                p.poll(0.05)
    if p.flush(60) != 0:
        raise SystemExit(f"table {topic}: records not delivered")


def check_joined(bootstrap: str, topic: str, field: str, sample: int = 1000) -> None:
    """Refuse to report a join rate unless sampled output rows carry the joined ``field``."""
    from confluent_kafka import Consumer

    from app.codecs.tokens import TokenCodec

    codec = TokenCodec()
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-check-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    c.subscribe([topic])
    seen = joined = 0
    deadline = time.monotonic() + 30
    while seen < sample and time.monotonic() < deadline:
        for m in c.consume(1000, 1.0):
            if m.error() is None and m.value():
                seen += 1
                joined += codec.decode(m.value())["payload"].get(field) is not None
    c.close()
    if seen == 0 or joined != seen:
        raise SystemExit(f"join output {topic}: {joined} of {seen} sampled rows carry {field}")


def write_spec(
    work: Path,
    name: str,
    bootstrap: str,
    op: str,
    rows: int,
    input_topic: str,
    table: str = "",
    kafka_extra: str = "",
    right: str = "",
    seed: int = 3,
) -> Path:
    spec = work / f"{name}.yaml"
    (work / f"{name}.topics.yaml").write_text(f"topics:\n  - name: {name}.out\n    partitions: 2\n")
    spec.write_text(
        f"""pipeline: {name}
topics: [{name}.topics.yaml]
state_dir: {work / "state"}
kafka: {{bootstrap_servers: "{bootstrap}"{kafka_extra}}}
commit: {{interval_ms: 200, max_rows: 20000}}
sources:
  - name: gen
    type: generator
    topic: {input_topic}
    rows: {rows}
    seed: {seed}
    key_field: customer
transforms:
  - name: t
    input: {input_topic}
    output: {name}.out
{OPS[op].replace("TABLE", table).replace("RIGHT", right)}"""
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


# an assignment's restore: records applied and seconds, or a store already up to date (a warm standby copy)
RESTORED = re.compile(
    r"restored \S+\.changelog/\d+: (?P<n>\d+) records in (?P<s>[\d.]+)s"
    r"|state store \S+ is up to date with \S+\.changelog/\d+"
)
SESSION_TIMEOUT_MS = 6000


def _wait_log(log: Path, count: int, timeout: float = 300) -> list[re.Match[str]]:
    """The log's changelog restores once there are ``count`` of them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(RESTORED.finditer(log.read_text(errors="replace"))) if log.exists() else []
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise SystemExit(f"failover: {log} shows {count} changelog restores nowhere within {timeout:.0f}s")


def failover(bootstrap: str, work: Path, rows: int, standby: bool) -> dict[str, float]:
    """Worker a holds both partitions of a ``dedupe`` by token id (a store key per row);
    worker b joins and takes one over (a move: b restores that store), then a is
    SIGKILLed and b takes the other after the session timeout (a failover: detection
    plus a restore). Seconds of each, and the restores' record counts. ``standby``:
    both workers run with ``standby_replicas: 1``."""
    tag = uuid.uuid4().hex[:6]
    work = work / f"failover-{'standby' if standby else 'none'}"
    work.mkdir()
    name, topic = f"bench-failover-{tag}", f"bench-failover-{tag}.in"
    Admin(bootstrap).create_topic(topic, 2, 1, {})
    extra = f', config: {{"session.timeout.ms": {SESSION_TIMEOUT_MS}, "heartbeat.interval.ms": 1000}}'
    spec = write_spec(work, name, bootstrap, "dedupe", rows, topic, kafka_extra=extra)
    if standby:
        spec.write_text(
            spec.read_text().replace(f"    output: {name}.out\n", f"    output: {name}.out\n    standby_replicas: 1\n")
        )
    run_stage(spec, "source")

    def start(worker: str) -> subprocess.Popen[bytes]:
        fh = (work / f"{worker}.log").open("wb")
        cmd = [sys.executable, "-m", "app.cli.main", "run", str(spec), "--stage", "transform", "--worker-id", worker]
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)

    a = start("a")
    b: subprocess.Popen[bytes] | None = None
    try:
        done = f"progress transform/t: {rows} rows committed"
        deadline = time.monotonic() + 600
        while done not in (work / "a.log").read_text(errors="replace"):
            if time.monotonic() > deadline or a.poll() is not None:
                raise SystemExit(f"failover: worker a did not process the {rows:,} rows (see {work / 'a.log'})")
            time.sleep(0.5)
        print(f"  failover: worker a processed {rows:,} rows; starting worker b", flush=True)
        t0 = time.monotonic()
        b = start("b")
        moved = _wait_log(work / "b.log", 1)[0]
        move_s = time.monotonic() - t0
        time.sleep(3)  # b commits on its partition
        t1 = time.monotonic()
        a.kill()
        a.wait(30)
        taken = _wait_log(work / "b.log", 2)[1]
        fail_s = time.monotonic() - t1
    finally:
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(60)
    return {
        "move_s": move_s,
        "move_records": int(moved.group("n") or 0),
        "move_restore_s": float(moved.group("s") or 0),
        "failover_s": fail_s,
        "failover_records": int(taken.group("n") or 0),
        "failover_restore_s": float(taken.group("s") or 0),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--changelog", type=int, default=1_000_000)
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--failover-rows", type=int, default=1_000_000, help="rows (store keys) of the failover case")
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
        table = f"bench-state-{tag}.customers"
        print(f"table: {CUSTOMERS:,} customers into {table}", flush=True)
        fill_table(bootstrap, table, 2)
        right = f"bench-state-{tag}.right"  # the interval join's other side: as many rows, another seed
        Admin(bootstrap).create_topic(right, 2, 1, {"retention.ms": "-1"})
        print(f"right: generating {args.rows:,} rows into {right}", flush=True)
        fill = write_spec(work, f"bench-state-{tag}-rfill", bootstrap, "stateless", args.rows, right, seed=4)
        run_stage(fill, "source")
        results = {}
        for op in (o for o in OPS if o != "dedupe"):
            name = f"bench-state-{tag}-{op}"
            spec = write_spec(work, name, bootstrap, op, args.rows, input_topic, table, right=right)
            took = run_stage(spec, "transform")
            results[op] = args.rows / took
            if op in JOINED:
                check_joined(bootstrap, f"{name}.out", JOINED[op])
            print(f"  {op:<10} {args.rows:,} rows in {took:.1f}s = {results[op]:,.0f} rows/s", flush=True)
        print(f"failover: {args.failover_rows:,} rows deduplicated by token id, 2 partitions", flush=True)
        runs = {kind: failover(bootstrap, work, args.failover_rows, kind == "standby") for kind in ("none", "standby")}
        print()
        print("| measurement | result |")
        print("|---|---|")
        print(f"| changelog restore ({applied:,} records, 1 partition) | {rate:,.0f} records/s |")
        for op, r in results.items():
            print(f"| transform {op} ({args.rows:,} rows, 2 partitions, process wall time) | {r:,.0f} rows/s |")
        for kind, fo in runs.items():
            label = "no standby" if kind == "none" else "standby_replicas: 1"
            print(
                f"| partition move to a joining worker, {label}, start to restored "
                f"({fo['move_records']:,} records applied) | {fo['move_s']:.1f} s "
                f"(restore {fo['move_restore_s']:.1f} s) |"
            )
            print(
                f"| failover after SIGKILL, {label}, kill to restored ({fo['failover_records']:,} records applied, "
                f"session timeout {SESSION_TIMEOUT_MS / 1000:.0f} s) | {fo['failover_s']:.1f} s "
                f"(restore {fo['failover_restore_s']:.1f} s) |"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
