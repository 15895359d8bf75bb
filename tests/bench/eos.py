"""The eos scenario: topic -> topic with the trivial map, every contender on the same
input, then each again at 20% of its own steady rate for its per-hop latency.

Contenders (all on the one local broker, one after the other):

* the broker's transactional ceiling (ProducerPerformance, a transaction per 100 ms,
  while ConsumerPerformance reads the rows read_committed): every rate is also given
  as a fraction of it;
* ledgerflow with the map (``tests.bench.fns:add_x``) at 100 ms (its default) and 1 s
  commits, and with the same map as a ``map_batch`` function (``add_x_batch``, the
  columnar path); ledgerflow with declarative steps on the columnar path and, for comparison,
  the same steps forced onto the row path (``columnar: false``);
* Kafka Streams ``exactly_once_v2`` and ``at_least_once``, 100 ms commits;
* a Python raw EOS passthrough (bytes in, bytes out, a transaction per 100 ms) and the
  raw at-least-once confluent-kafka loop with the map;
* Quix Streams EOS at 100 ms, 1 s and its default 5 s; faust-streaming EOS;
* only when named (``--contenders copier``): the Java TransactionalMessageCopier in
  group mode with a transaction of ~100 ms of ledgerflow's measured rate (no anchor:
  its producer's ``batch.size`` is fixed at 512 bytes).

Latency per hop: rows carry ``sent_ms`` (the producer's clock when produced); a
read_committed reader of the output topic takes arrival minus ``sent_ms``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer

from app.sources.generator import GeneratorSource
from tests.bench import anchors
from tests.bench.harness import (
    BENCH_PY,
    PY,
    Ctx,
    Result,
    contender_proc,
    ledgerflow_proc,
    ledgerflow_spec,
    produce_json,
    say,
    stop,
    watch,
)

Procs = list[Any]
CEILING = "broker ceiling (Java perf tools)"
# declarative steps of the same weight as the map: every row kept, one field changed
DECLARATIVE = "    steps:\n      - filter: {field: amount, op: ge, value: -1000}\n      - cast: {quantity: string}\n"


@dataclass
class Contender:
    label: str
    guarantee: str
    commit: str  # the commit interval as run
    start: Callable[[str, str, str], Procs]  # (input, output, tag) -> processes
    group: Callable[[str], str]  # tag -> the consumer group whose offsets count
    note: str | Callable[[], str] = ""
    timeout: float | None = None
    default: bool = True  # False: runs only when named in --contenders
    latency: bool = True  # False: the contender cannot take the latency probe


def _ledgerflow(ctx: Ctx, steps: str, interval_ms: int, extra: str = "") -> tuple[Callable[..., Procs], Any]:
    def start(src: str, dst: str, tag: str, workers: int = 1) -> Procs:
        spec = ledgerflow_spec(
            ctx.tmp,
            ctx.name(tag),
            ctx.bootstrap,
            f"transforms:\n  - name: t\n    input: {src}\n    input_format: json\n    output: {dst}\n{extra}{steps}",
            interval_ms=interval_ms,
        )
        return [
            ledgerflow_proc(spec, "transform", ctx.log(tag), "--worker-id", f"w{i}")
            if workers > 1
            else ledgerflow_proc(spec, "transform", ctx.log(tag))
            for i in range(workers)
        ]

    return start, lambda tag: f"ledgerflow.{ctx.name(tag)}.transform.t"


def contenders(ctx: Ctx, lf_rate: Callable[[], float]) -> list[Contender]:
    b = ctx.bootstrap
    mapped = '    steps:\n      - map: "tests.bench.fns:add_x"\n'
    batched = '    steps:\n      - map_batch: "tests.bench.fns:add_x_batch"\n'
    out: list[Contender] = []
    for label, steps, ms, extra, note in (
        ("ledgerflow", mapped, 100, "", "map (Python function)"),
        ("ledgerflow, 1 s commits", mapped, 1000, "", "map (Python function)"),
        ("ledgerflow map_batch (columnar)", batched, 100, "", "the same map as map_batch (Arrow), columnar path"),
        ("ledgerflow declarative steps (columnar)", DECLARATIVE, 100, "", "filter + cast, columnar path"),
        ("ledgerflow declarative steps (row path)", DECLARATIVE, 100, "    columnar: false\n", "filter + cast"),
    ):
        start, group = _ledgerflow(ctx, steps, ms, extra)
        interval = f"{ms} ms" if ms < 1000 else f"{ms // 1000} s"
        out.append(Contender(label, "exactly-once", interval, start, group, note))

    def streams(guarantee: str) -> Callable[[str, str, str], Procs]:
        return lambda src, dst, tag: [
            anchors.streams_proc(b, src, dst, ctx.name(tag), guarantee, 100, ctx.tmp / f"{tag}-state", ctx.log(tag))
        ]

    out.append(
        Contender("Kafka Streams exactly_once_v2", "exactly-once", "100 ms", streams("exactly_once_v2"), ctx.name)
    )
    out.append(Contender("Kafka Streams at_least_once", "at-least-once", "100 ms", streams("at_least_once"), ctx.name))

    def py(mode: str, python: Path | str, interval_ms: int = 0) -> Callable[[str, str, str], Procs]:
        return lambda src, dst, tag: [
            contender_proc(
                python,
                mode,
                ctx.log(tag),
                bootstrap=b,
                input=src,
                output=dst,
                group=ctx.name(tag),
                rows=ctx.rows,
                interval_ms=interval_ms,
            )
        ]

    out.append(
        Contender("Python raw EOS passthrough", "exactly-once", "100 ms", py("raweos", PY, 100), ctx.name, note="bytes")
    )
    out.append(Contender("raw confluent-kafka loop", "at-least-once", "each batch", py("raw", PY), ctx.name))
    if BENCH_PY.exists():
        for ms, interval in ((100, "100 ms"), (1000, "1 s"), (0, "5 s (default)")):
            out.append(Contender("Quix Streams", "exactly-once", interval, py("quix", BENCH_PY, ms), ctx.name))
        out.append(
            Contender("faust-streaming", "exactly-once", "2.8 s (default)", py("faust", BENCH_PY), ctx.name, timeout=30)
        )

    def txn_size() -> int:  # ~100 ms of ledgerflow's measured rate, per copier process
        return max(200, int(lf_rate() * 0.1 / ctx.partitions))

    def copier(src: str, dst: str, tag: str) -> Procs:
        return anchors.copier_procs(b, src, dst, ctx.name(tag), ctx.partitions, txn_size(), ctx.log(tag))

    out.append(
        Contender(
            "Kafka TransactionalMessageCopier (Java)",
            "exactly-once",
            "~100 ms",
            copier,
            ctx.name,
            note=lambda: (
                f"copies bytes, no map; group mode, {txn_size():,} msgs/txn per process; "
                "batch.size 512 B hard-coded: no anchor, see docs/benchmarks.md"
            ),
            default=False,
            latency=False,  # it stops at the end offset it saw at launch: an empty topic, at once
        )
    )
    return out


def scenario_eos(ctx: Ctx) -> list[Result]:
    rows, parts = ctx.rows, ctx.partitions
    src = ctx.topic("json", parts)
    say(f"eos: producing {rows:,} JSON rows to {src}")
    produce_json(ctx.bootstrap, src, rows)
    results: list[Result] = []
    lf: dict[str, float] = {}
    entrants = contenders(ctx, lambda: lf.get("ledgerflow", 100_000))
    labels = frozenset({c.label.lower() for c in entrants} | {CEILING.lower()})
    if ctx.wants(CEILING, labels=labels):
        results.append(_ceiling(ctx))
    for c in entrants:
        if not ctx.wants(c.label, c.default, labels):
            continue
        tag = f"{''.join(ch for ch in c.label.split()[0].lower() if ch.isalnum())}-{len(results)}"
        say(f"eos: running {c.label} ({c.commit} commits)")
        procs = c.start(src, ctx.topic(f"{tag}-out", parts), tag)
        t0 = time.monotonic()
        try:
            w = watch(ctx.admin, c.group(tag), src, parts, rows, procs, c.timeout or ctx.timeout)
        finally:
            for p in procs:
                stop(p)
        note = c.note() if callable(c.note) else c.note
        if w.done < rows:
            note = f"{note}; only {w.done:,}/{rows:,} rows committed in {time.monotonic() - t0:.0f}s".lstrip("; ")
        r = Result("eos transform", c.label, c.guarantee, rows, w.rate, w.wall, note, c.commit, w.cpu_per_m, w.rss_mb)
        if w.rate:
            lf.setdefault(c.label, w.rate)
            if ctx.latency_seconds > 0 and c.latency:
                r.p50, r.p99 = hop_latency(ctx, c, int(w.rate * 0.2), f"{tag}-lat")
                r.latency_rate = int(w.rate * 0.2)
        results.append(r)
        say(f"eos: {c.label} ({c.commit}): {w.rate or 0:,.0f} rows/s, p99 {r.p99 or 0:.0f} ms ({note or 'ok'})")
    return results


def _ceiling(ctx: Ctx) -> Result:
    topic = ctx.topic("ceiling", ctx.partitions)
    payloads = ctx.tmp / "payloads.txt"
    gen = GeneratorSource("bench", rows=10_000, seed=3)
    payloads.write_text("\n".join(json.dumps(t["payload"]) for t in gen.poll(10_000).tokens))
    say(f"eos: broker ceiling, {ctx.rows:,} rows through ProducerPerformance + ConsumerPerformance")
    rate, wall, note = anchors.ceiling(
        ctx.bootstrap, topic, ctx.rows, payloads, ctx.name("ceiling"), ctx.log("ceiling")
    )
    say(f"eos: broker ceiling: {rate:,.0f} rows/s ({note})")
    return Result("eos transform", CEILING, "exactly-once", ctx.rows, rate, wall, note, "100 ms")


_SENT_MS = re.compile(rb'"sent_ms":\s*(\d+)')  # JSON of every contender: orjson, json, Jackson


def hop_latency(ctx: Ctx, c: Contender, rate: int, tag: str) -> tuple[float | None, float | None]:
    """(p50, p99) ms from produce to read_committed visibility on the output, at ``rate``,
    over the rows produced from 2 s after the first output was seen, for
    ``ctx.latency_seconds``; the reader waits up to 15 s for the last of them."""
    src, dst = ctx.topic(f"{tag}-in", ctx.partitions), ctx.topic(f"{tag}-out", ctx.partitions)
    lat: list[float] = []
    first = threading.Event()
    stop_reading = threading.Event()
    measure_from = [float("inf")]  # sent_ms from which rows count

    def sent_ms(value: bytes) -> int:
        # One regex search, in a JSON value and in a token (whose payload is the JSON's
        # bytes): decoding every record in Python cost the probe ~7 us per row, CPU
        # taken from the contender on this 2-core machine, more for faster contenders.
        found = _SENT_MS.search(value)
        if found is None:
            raise ValueError(f"no sent_ms in an output record of {c.label}: {value[:120]!r}")
        return int(found.group(1))

    def reader() -> None:
        cons = Consumer(
            {
                "bootstrap.servers": ctx.bootstrap,
                "group.id": f"{tag}-reader",
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
            }
        )
        cons.subscribe([dst])
        while not stop_reading.is_set():
            # consume(n, timeout) returns when n records are there *or* the timeout ran
            # out: a long timeout kept the records past the first 1,000 of a transaction
            # in this reader for up to that long. 5 ms bounds what the reader adds; the
            # arrival time is the call's return, before any record is decoded.
            msgs = cons.consume(1000, 0.005)
            now = time.time() * 1000
            for m in msgs:
                if m.error() or m.value() is None:
                    continue
                first.set()
                s = sent_ms(m.value())
                if s >= measure_from[0]:
                    lat.append(now - s)
        cons.close()

    say(f"eos: {c.label} ({c.commit}): latency at {rate:,} rows/s")
    th = threading.Thread(target=reader, daemon=True)
    th.start()
    procs = c.start(src, dst, tag)
    p = Producer({"bootstrap.servers": ctx.bootstrap, "linger.ms": 1, "compression.type": "lz4"})
    gen = GeneratorSource("lat", rows=None, seed=4)
    try:
        t_start = time.monotonic()
        sent = measured = 0
        end: float | None = None
        while True:
            now = time.monotonic()
            if end is None and first.is_set():  # the contender is up: measure after 2 s more
                measure_from[0] = time.time() * 1000 + 2000
                end = now + 2 + ctx.latency_seconds
            if (end is not None and now >= end) or now - t_start > 60:
                break
            due = int((now - t_start) * rate) - sent
            if due > 0:
                for t in gen.poll(due).tokens:
                    row = {**t["payload"], "sent_ms": int(time.time() * 1000)}
                    p.produce(src, orjson.dumps(row), row["customer"].encode())
                    measured += row["sent_ms"] >= measure_from[0]
                sent += due
            p.poll(0)
            time.sleep(0.005)
        p.flush()
        wait_until = time.monotonic() + max(15.0, 5 * _interval_s(c.commit))
        while len(lat) < measured and time.monotonic() < wait_until:  # the last rows' transactions
            time.sleep(0.05)
        t_stop = time.time() * 1000
    finally:
        for proc in procs:
            stop(proc)
        stop_reading.set()
        th.join()
    if not lat:
        return None, None
    # rows still not visible count with the time they had waited: a lower bound, never skipped
    lat += [t_stop - measure_from[0]] * max(0, measured - len(lat))
    lat.sort()
    return lat[len(lat) // 2], lat[min(len(lat) - 1, int(0.99 * len(lat)))]


def _interval_s(commit: str) -> float:
    """Seconds of a commit label ("100 ms", "~100 ms", "5 s (default)"; "each batch": 1 s)."""
    m = re.search(r"([\d.]+) (ms|s)\b", commit)
    if m is None:
        return 1.0
    return float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)


def scenario_scaleout(ctx: Ctx, rows: int) -> list[Result]:
    """1 against 2 ledgerflow transform workers (separate processes) on 4 partitions."""
    src = ctx.topic("scale-json", 4)
    say(f"scale-out: producing {rows:,} JSON rows to {src} (4 partitions)")
    produce_json(ctx.bootstrap, src, rows)
    start, group = _ledgerflow(ctx, DECLARATIVE, 100)
    out = []
    for workers in (1, 2):
        tag = f"scale{workers}"
        say(f"scale-out: {workers} worker(s)")
        procs = start(src, ctx.topic(f"{tag}-out", 4), tag, workers)
        try:
            w = watch(ctx.admin, group(tag), src, 4, rows, procs, ctx.timeout)
        finally:
            for p in procs:
                stop(p)
        note = f"{workers} worker process(es), 4 partitions, declarative steps" + (
            "" if w.done >= rows else f"; only {w.done:,} rows"
        )
        out.append(
            Result(
                "scale-out",
                f"ledgerflow, {workers} worker(s)",
                "exactly-once",
                rows,
                w.rate,
                w.wall,
                note,
                "100 ms",
                w.cpu_per_m,
                w.rss_mb,
            )
        )
        say(f"scale-out: {workers}: {w.rate or 0:,.0f} rows/s, {w.cpu_per_m or 0:.1f} CPU s/1M rows")
    return out
