"""Revoke (and re-assign) time of a stateful partition whose store holds many keys.

    .venv/bin/python -m tests.bench.revoke_bench [--keys 1000000] [--runs 3]

A revoke runs inside the consumer's rebalance callback: ``StateManager.revoke``
closes the operator (drops its in-memory index) and the store (RocksDB close). It
must finish well inside ``max.poll.interval.ms`` (librdkafka's default 300,000 ms),
or the group evicts the worker mid-rebalance. The re-assign after it opens the
store, finds it up to date with its changelog (no restore) and lets the operator
rebuild its index from the store: timed too.

For each operator kind the bench writes ``--keys`` keys to a local store through
the committed-batch path (50,000 keys per batch, as batches commit them), then
times ``revoke`` and the re-open (store + operator index) ``--runs`` times and
prints the median and the worst in ms next to ``max.poll.interval.ms``. No broker:
the store's changelog offset is set so the store counts as up to date.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import orjson

from app.state.store import PartitionStore
from app.transforms.sessions import SessionAggregate
from app.transforms.stateful import Aggregate, Dedupe, StatefulOp

MAX_POLL_INTERVAL_MS = 300_000
BATCH = 50_000

COMMON = dict(key_field=None, value_field="amount", functions=["count", "sum"], time_field=None, late_topic=None)


def operators() -> dict[str, tuple[StatefulOp, bytes]]:
    """Operator kind -> (operator, key prefix its store entries use)."""
    return {
        "dedupe": (Dedupe(None, None, None), b"d|"),
        "aggregate (windowed)": (Aggregate("agg", size_ms=60_000, advance_ms=None, lateness_ms=0, **COMMON), b"w|"),
        "aggregate (session)": (SessionAggregate("ses", gap_ms=30_000, lateness_ms=0, **COMMON), b"s|"),
    }


def entry(prefix: bytes, i: int) -> tuple[bytes, bytes]:
    if prefix == b"w|":
        return b"w|%020d|k%07d" % (60_000 * (i % 16), i), orjson.dumps({"count": 1, "sum": i})
    if prefix == b"s|":
        return b"s|k%07d|%d" % (i, i), orjson.dumps({"end": i + 10, "count": 1, "sum": i})
    return b"d|k%07d" % i, b"0"


def fill(store: PartitionStore, prefix: bytes, keys: int) -> None:
    offset = 0
    for start in range(0, keys, BATCH):
        store.begin_row()
        for i in range(start, min(keys, start + BATCH)):
            k, v = entry(prefix, i)
            store.put(k, v)
        store.end_row(True)
        offset += BATCH
        store.apply_committed(offset)


def bench(kind: str, keys: int, runs: int, root: Path) -> tuple[list[float], list[float]]:
    op, prefix = operators()[kind]
    path = root / kind.replace(" ", "_")
    store = PartitionStore(path, "bench.state.changelog", 0)
    fill(store, prefix, keys)
    op.open(0, store)
    revokes, assigns = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        op.close(0)  # what StateManager.revoke does for a partition
        store.close()
        t1 = time.perf_counter()
        store = PartitionStore.open_or_rebuild(path, "bench.state.changelog", 0)
        op.open(0, store)
        t2 = time.perf_counter()
        revokes.append((t1 - t0) * 1000)
        assigns.append((t2 - t1) * 1000)
    op.close(0)
    store.close()
    return revokes, assigns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ledgerflow-revoke-bench-"))
    try:
        print(f"keys per store: {args.keys:,}; max.poll.interval.ms: {MAX_POLL_INTERVAL_MS:,}")
        for kind in operators():
            revokes, assigns = bench(kind, args.keys, args.runs, root)
            print(
                f"{kind:22s} revoke median {statistics.median(revokes):9.1f} ms, worst {max(revokes):9.1f} ms"
                f" ({max(revokes) / MAX_POLL_INTERVAL_MS:.4%} of max.poll.interval.ms);"
                f" re-assign (open + index) median {statistics.median(assigns):9.1f} ms, worst {max(assigns):9.1f} ms"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
