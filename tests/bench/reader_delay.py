"""How long a reader's own ``consume(n, timeout)`` holds records that have arrived.

A producer writes ``--batch`` records every 100 ms to a one-partition topic, in a
transaction each (or plain with ``--plain``), and a ``read_committed`` reader in
another thread calls ``consume(--max, --timeout)``. Printed: for each batch, the time
from the producer's commit (or flush) returning to the reader's call returning with
the batch's *last* record, as p50 / p90 / max.

librdkafka's ``consume`` returns once it has ``n`` records or the timeout has run
out, so a reader that asks for more records than a batch holds waits for its timeout
with the records in hand. This is why the bench's latency probe polls with a 5 ms
timeout (docs/benchmarks.md, "The latency reader"). No ledgerflow code is involved.

    .venv/bin/python -m tests.bench.reader_delay --timeout 0.05
    .venv/bin/python -m tests.bench.reader_delay --timeout 0.005
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", default="127.0.0.1:19092")
    ap.add_argument("--batch", type=int, default=1760, help="records per 100 ms batch")
    ap.add_argument("--max", type=int, default=1000, help="the reader's consume(n, ...)")
    ap.add_argument("--timeout", type=float, default=0.05, help="the reader's consume(..., timeout) in seconds")
    ap.add_argument("--seconds", type=float, default=6)
    ap.add_argument("--plain", action="store_true", help="no transactions (read_uncommitted reader)")
    a = ap.parse_args()
    topic = f"reader-delay-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": a.bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result()
    done: dict[int, float] = {}  # batch -> commit (flush) returned
    seen: dict[int, float] = {}  # batch -> the reader's call with its last record returned
    stop = threading.Event()

    def reader() -> None:
        c = Consumer(
            {
                "bootstrap.servers": a.bootstrap,
                "group.id": f"{topic}-reader",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "isolation.level": "read_uncommitted" if a.plain else "read_committed",
                "fetch.wait.max.ms": 10,
            }
        )
        c.subscribe([topic])
        while not stop.is_set():
            msgs = c.consume(a.max, a.timeout)
            now = time.time()
            for m in msgs:
                if m.error() is None:
                    seen[int(m.key())] = now
        c.close()

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    conf = {"bootstrap.servers": a.bootstrap, "linger.ms": 5, "batch.size": 1_000_000, "compression.type": "lz4"}
    if not a.plain:
        conf["transactional.id"] = f"{topic}-txn"
    p = Producer(conf)
    if not a.plain:
        p.init_transactions()
    time.sleep(2)  # the reader has joined
    value, end, n = b"x" * 140, time.monotonic() + a.seconds, 0
    while time.monotonic() < end:
        if not a.plain:
            p.begin_transaction()
        time.sleep(0.1)
        for _ in range(a.batch):
            p.produce(topic, value, str(n).encode())
        if a.plain:
            p.flush()
        else:
            p.commit_transaction()
        done[n] = time.time()
        n += 1
    time.sleep(1)
    stop.set()
    th.join()
    d = sorted((seen[k] - done[k]) * 1000 for k in done if k in seen)
    mode = "plain" if a.plain else "transactional"
    print(
        f"{mode}, {a.batch} records per batch, reader consume({a.max}, {a.timeout}): {len(d)} batches; "
        f"last record {d[len(d) // 2]:.1f} / {d[int(0.9 * len(d))]:.1f} / {d[-1]:.1f} ms (p50 / p90 / max) "
        "after the commit returned"
    )


if __name__ == "__main__":
    main()
