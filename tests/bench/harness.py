"""Benchmark harness: ledgerflow against its peers and anchors, on one broker, in one run.

    .venv/bin/python -m tests.bench [--rows 1000000] [--scenarios eos,files,pg,s3,iceberg,latency,rss,scaleout]
        [--contenders a,b] [--write-doc]

Scenarios (identical input per scenario, rows of ~130 bytes):
  eos      topic -> topic with a trivial map (add one field), every contender at its
           commit intervals, each also probed for its per-hop latency at 20% of its
           rate: see tests/bench/eos.py (the broker's transactional ceiling, ledgerflow
           with a map and with declarative steps, Kafka Streams, a Python raw EOS
           passthrough, a raw at-least-once loop, Quix Streams, faust-streaming).
  files    topic -> Parquet: ledgerflow file sink (exactly once) vs a raw consume +
           pyarrow write (at-least-once).
  pg       JSON topic -> PostgreSQL table: ledgerflow PostgreSQL sink (exactly once,
           upsert by token id + offsets CAS), Quix Streams' PostgreSQLSink (at-least-once,
           upsert by row id; from .venv-bench) and a raw consume + plain COPY into an
           unkeyed table (at-least-once: the ceiling), on a throwaway PostgreSQL server.
  s3       topic -> Parquet objects in a bucket: ledgerflow S3 sink (exactly once) vs a raw
           consume + pyarrow + one PutObject per part (at-least-once), on a throwaway
           SeaweedFS store.
  iceberg  topic -> Iceberg table: ledgerflow Iceberg sink (exactly once, offsets CAS in
           the snapshot) vs a raw consume + a plain pyiceberg append per part
           (at-least-once), each on its own SQLite catalog and local warehouse.
  latency  source -> transform -> file sink at a fixed rate: event time -> part visible.
  rss      peak RSS and CPU of each ledgerflow stage over a backlog (--rss-rows, 1,000,000).
  scaleout 1 against 2 ledgerflow transform workers on 4 partitions (CPU per row).

Throughput is the steady rate between the committed counts observed at the first polls
past 10% and past 90% of the rows (startup and the tail excluded), read from each
contender's committed consumer-group offsets, so every contender is measured by the
same yardstick: input rows whose processing committed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Producer

from app.codecs.tokens import TokenCodec
from app.kafka.admin import Admin
from app.kafka.local_broker import ensure_bootstrap, kafka_version
from app.sources.generator import GeneratorSource
from tests.procs import die_with_parent

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
BENCH_PY = REPO / ".venv-bench" / "bin" / "python"
CONTENDERS = REPO / "tests" / "bench" / "contenders.py"


@dataclass
class Result:
    scenario: str
    contender: str
    guarantee: str
    rows: int
    rows_per_s: float | None
    wall_s: float | None
    note: str = ""
    commit: str = ""  # commit interval as run
    cpu_per_m: float | None = None  # user+sys CPU seconds per 1,000,000 rows (steady window)
    rss_mb: float | None = None  # peak RSS of the contender's largest process
    p50: float | None = None  # per-hop latency (ms) at latency_rate rows/s
    p99: float | None = None
    latency_rate: int | None = None


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- input --------------------------------------------------------------------------
def produce_json(bootstrap: str, topic: str, rows: int) -> None:
    p = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10000, "compression.type": "lz4"}
    )
    gen = GeneratorSource("bench", rows=rows, seed=3)
    while True:
        batch = gen.poll(20_000)
        for t in batch.tokens:
            while True:
                try:
                    p.produce(topic, json.dumps(t["payload"]).encode(), t["payload"]["customer"].encode())
                    break
                except BufferError:
                    p.poll(0.05)
        p.poll(0)
        if batch.exhausted:
            break
    p.flush()


def produce_tokens(bootstrap: str, topic: str, rows: int) -> None:
    p = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10000, "compression.type": "lz4"}
    )
    codec = TokenCodec()
    gen = GeneratorSource("bench", rows=rows, seed=3)
    while True:
        batch = gen.poll(20_000)
        for t, v in zip(batch.tokens, codec.encode_many(batch.tokens), strict=True):
            while True:
                try:
                    p.produce(topic, v, t["token_id"].encode(), headers=[codec.header])
                    break
                except BufferError:
                    p.poll(0.05)
        p.poll(0)
        if batch.exhausted:
            break
    p.flush()


# -- measuring ----------------------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(procs: list[subprocess.Popen[bytes]]) -> float:
    """user + sys CPU seconds of ``procs`` so far (from /proc; an exited one counts 0)."""
    total = 0.0
    for proc in procs:
        try:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
    return total


def peak_rss_mb(procs: list[subprocess.Popen[bytes]]) -> float:
    """The largest VmHWM (peak resident set) among ``procs``, in MB."""
    peak = 0.0
    for proc in procs:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
        except OSError:
            continue
    return peak


@dataclass
class Watch:
    """What one watched run gave: steady rate, wall time to 100%, rows committed, CPU
    seconds per 1,000,000 rows in the steady window (all processes), peak RSS."""

    rate: float | None
    wall: float | None
    done: int
    cpu_per_m: float | None
    rss_mb: float


def watch(
    admin: Admin,
    group: str,
    topic: str,
    partitions: int,
    rows: int,
    procs: list[subprocess.Popen[bytes]],
    timeout: float,
) -> Watch:
    """Poll committed offsets (and the processes' CPU) until every row is committed.

    Offsets move in steps (one per commit), so the steady rate is measured between the
    *observed* committed counts at the first poll past 10% and the first past 90% of
    the input: with few large commits (Quix commits every 5 s) a window
    between nominal 10%/90% marks would read a step as a rate. CPU is read at the same
    two polls, so CPU per row covers the same window. A contender that times out is
    measured from its 10% poll (or, short of 10%, its first commit) to the last poll."""
    parts = [(topic, p) for p in range(partitions)]
    t0 = time.monotonic()
    marks: dict[float, tuple[float, int, float]] = {}
    done = 0
    rss = 0.0
    while time.monotonic() - t0 < timeout:
        try:
            done = sum(admin.group_offsets(group, parts, require_stable=False).values())
        except Exception:
            done = 0
        now = time.monotonic()
        cpu = cpu_seconds(procs)
        rss = max(rss, peak_rss_mb(procs))
        if done and 0.0 not in marks:  # the first commit seen: the start of a partial window
            marks[0.0] = (now, done, cpu)
        for frac in (0.1, 0.9, 1.0):
            if frac not in marks and done >= frac * rows:
                marks[frac] = (now, done, cpu)
        if 1.0 in marks:
            break
        if any(p.poll() is not None and p.returncode != 0 for p in procs):
            break
        time.sleep(0.2)
    rate = cpu_per_m = None
    start = marks.get(0.1, marks.get(0.0))  # too slow to reach 10% in time: from its first commit
    if start is not None:
        end = marks.get(0.9, (time.monotonic(), done, cpu_seconds(procs)))  # timed out: partial progress
        (ta, da, ca), (tb, db, cb) = start, end
        if tb > ta and db > da:
            rate = (db - da) / (tb - ta)
            cpu_per_m = (cb - ca) / (db - da) * 1e6
    if rate is None and 1.0 in marks and marks[1.0][0] > t0:  # one commit took it all: no steady window
        rate = rows / (marks[1.0][0] - t0)
        cpu_per_m = marks[1.0][2] / rows * 1e6
    wall = marks[1.0][0] - t0 if 1.0 in marks else None
    return Watch(rate, wall, done, cpu_per_m, rss)


def watch_group(
    admin: Admin, group: str, topic: str, partitions: int, rows: int, proc: subprocess.Popen[bytes], timeout: float
) -> tuple[float | None, float | None, int]:
    """``watch`` of one process: (steady rows/s, wall s to 100%, rows done)."""
    w = watch(admin, group, topic, partitions, rows, [proc], timeout)
    return w.rate, w.wall, w.done


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def ledgerflow_spec(
    tmp: Path, name: str, bootstrap: str, body: str, interval_ms: int = 100, max_rows: int = 20_000
) -> Path:
    spec = tmp / f"{name}.yaml"
    spec.write_text(
        f'pipeline: {name}\nkafka: {{bootstrap_servers: "{bootstrap}"}}\n'
        f"commit: {{interval_ms: {interval_ms}, max_rows: {max_rows}}}\n{body}"
    )
    return spec


def ledgerflow_proc(spec: Path, stage: str, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "LEDGERFLOW_LOG_FORMAT": "text"}
    return subprocess.Popen(
        [PY, "-m", "app.cli.main", "run", str(spec), "--stage", stage, "--worker-id", "bench", *extra],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(log, "ab"),
        cwd=spec.parent,
        preexec_fn=die_with_parent,
    )


def contender_proc(python: Path | str, mode: str, log: Path, **kw: object) -> subprocess.Popen[bytes]:
    args = [str(python), str(CONTENDERS), mode]
    for k, v in kw.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    # cwd = the run's temp dir: faust keeps a data dir in its working directory
    return subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=open(log, "ab"), cwd=log.parent, preexec_fn=die_with_parent
    )


# -- scenarios ----------------------------------------------------------------------
def scenario_files(ctx: Ctx) -> list[Result]:
    rows, parts, admin, b = ctx.sink_rows, ctx.partitions, ctx.admin, ctx.bootstrap
    src = ctx.topic("tokens", parts)
    say(f"files: producing {rows:,} tokens to {src}")
    produce_tokens(b, src, rows)
    out: list[Result] = []
    name = ctx.name("lfsink")
    spec = ledgerflow_spec(
        ctx.tmp,
        name,
        b,
        f"sinks:\n  - name: s\n    type: file\n    input: {src}\n    path: {ctx.tmp / 'lf-parquet'}\n"
        f"    format: parquet\n    part: {{max_rows: 50000, max_age_ms: 5000}}\n",
    )
    for label, guarantee, group, factory in (
        (
            "ledgerflow file sink (Parquet)",
            "exactly-once",
            f"ledgerflow.{name}.sink.s",
            lambda: ledgerflow_proc(spec, "sink", ctx.log("lfsink")),
        ),
        (
            "raw consume + pyarrow write",
            "at-least-once",
            ctx.name("rawpq"),
            lambda: contender_proc(
                PY,
                "rawparquet",
                ctx.log("rawpq"),
                bootstrap=b,
                input=src,
                output=ctx.tmp / "raw-parquet",
                group=ctx.name("rawpq"),
                rows=rows,
            ),
        ),
    ):
        say(f"files: running {label}")
        proc = factory()
        try:
            rate, wall, done = watch_group(admin, group, src, parts, rows, proc, ctx.timeout)
        finally:
            stop(proc)
        out.append(
            Result("file sink", label, guarantee, rows, rate, wall, "" if done >= rows else f"only {done:,} rows")
        )
        say(f"files: {label}: {rate or 0:,.0f} rows/s steady")
    return out


def _sink_race(ctx: Ctx, scenario: str, src: str, contenders: list[tuple[str, str, str, object]]) -> list[Result]:
    """Run each (label, guarantee, group, process factory) over ``src``, one at a time."""
    out: list[Result] = []
    for label, guarantee, group, factory in contenders:
        say(f"{scenario}: running {label}")
        proc = factory()  # type: ignore[operator]
        try:
            rate, wall, done = watch_group(ctx.admin, group, src, ctx.partitions, ctx.sink_rows, proc, ctx.timeout)
        finally:
            stop(proc)
        note = "" if done >= ctx.sink_rows else f"only {done:,} rows"
        out.append(Result(scenario, label, guarantee, ctx.sink_rows, rate, wall, note))
        say(f"{scenario}: {label}: {rate or 0:,.0f} rows/s steady")
    return out


def scenario_s3(ctx: Ctx, port: int) -> list[Result]:
    """ledgerflow's S3 sink vs consume + pyarrow + PutObject, on a private SeaweedFS store."""
    from app.lake.seaweed import RW, SeaweedServer

    rows, b = ctx.sink_rows, ctx.bootstrap
    server = SeaweedServer(ctx.tmp / "s3", port)
    server.start()
    try:
        for bucket in ("lf-bench", "raw-bench"):
            server.create_bucket(bucket)
        (ctx.tmp / "s3.key").write_text(RW[0])
        (ctx.tmp / "s3.secret").write_text(RW[1])
        src = ctx.topic("s3-tokens", ctx.partitions)
        say(f"s3: producing {rows:,} tokens to {src}")
        produce_tokens(b, src, rows)
        name = ctx.name("lfs3")
        spec = ledgerflow_spec(
            ctx.tmp,
            name,
            b,
            f"sinks:\n  - name: s\n    type: s3\n    input: {src}\n    bucket: lf-bench\n    format: parquet\n"
            f"    connection:\n      endpoint_url: {server.endpoint}\n      path_style: true\n"
            f"      credentials:\n        access_key_id: {{file: {ctx.tmp / 's3.key'}}}\n"
            f"        secret_access_key: {{file: {ctx.tmp / 's3.secret'}}}\n"
            f"    part: {{max_rows: 50000, max_age_ms: 5000}}\n",
        )
        raw = {
            "endpoint": server.endpoint,
            "key_file": ctx.tmp / "s3.key",
            "secret_file": ctx.tmp / "s3.secret",
        }
        return _sink_race(
            ctx,
            "s3 sink",
            src,
            [
                (
                    "ledgerflow S3 sink (Parquet)",
                    "exactly-once",
                    f"ledgerflow.{name}.sink.s",
                    lambda: ledgerflow_proc(spec, "sink", ctx.log("lfs3")),
                ),
                (
                    "raw consume + pyarrow + PutObject",
                    "at-least-once",
                    ctx.name("raws3"),
                    lambda: contender_proc(
                        PY,
                        "raws3",
                        ctx.log("raws3"),
                        bootstrap=b,
                        input=src,
                        output="raw-bench",
                        group=ctx.name("raws3"),
                        rows=rows,
                        **raw,
                    ),
                ),
            ],
        )
    finally:
        server.stop()


def scenario_iceberg(ctx: Ctx) -> list[Result]:
    """ledgerflow's Iceberg sink vs consume + a plain pyiceberg append per part (SQLite catalogs)."""
    rows, b = ctx.sink_rows, ctx.bootstrap
    src = ctx.topic("ice-tokens", ctx.partitions)
    say(f"iceberg: producing {rows:,} tokens to {src}")
    produce_tokens(b, src, rows)
    name = ctx.name("lfice")
    spec = ledgerflow_spec(
        ctx.tmp,
        name,
        b,
        f"sinks:\n  - name: s\n    type: iceberg\n    input: {src}\n"
        f"    catalog: {{uri: 'sqlite:///{ctx.tmp / 'lf-catalog.db'}'}}\n"
        f"    warehouse: {ctx.tmp / 'lf-warehouse'}\n    table: bench.lf\n"
        f"    part: {{max_rows: 50000, max_age_ms: 5000}}\n",
    )
    (ctx.tmp / "raw-warehouse").mkdir()
    return _sink_race(
        ctx,
        "iceberg sink",
        src,
        [
            (
                "ledgerflow Iceberg sink",
                "exactly-once",
                f"ledgerflow.{name}.sink.s",
                lambda: ledgerflow_proc(spec, "sink", ctx.log("lfice")),
            ),
            (
                "raw consume + pyiceberg append",
                "at-least-once",
                ctx.name("rawice"),
                lambda: contender_proc(
                    PY,
                    "rawiceberg",
                    ctx.log("rawice"),
                    bootstrap=b,
                    input=src,
                    output=ctx.tmp / "raw-warehouse",
                    group=ctx.name("rawice"),
                    rows=rows,
                    dsn=f"sqlite:///{ctx.tmp / 'raw-catalog.db'}",
                ),
            ),
        ],
    )


PG_SINK_COLUMNS = """    columns:
      - {name: token_id, type: text, source: _token_id}
      - {name: id, type: bigint}
      - {name: customer, type: text}
      - {name: country, type: text}
      - {name: amount, type: bigint}
      - {name: quantity, type: int}
      - {name: note, type: text}
"""


def scenario_pg(ctx: Ctx, port: int) -> list[Result]:
    import psycopg

    from tests.pgserver import PgServer

    rows, parts, admin, b = ctx.sink_rows, ctx.partitions, ctx.admin, ctx.bootstrap
    src = ctx.topic("pgjson", parts)
    say(f"pg: producing {rows:,} JSON rows to {src}; PostgreSQL on port {port}")
    produce_json(b, src, rows)
    server = PgServer(port)
    server.init()
    out: list[Result] = []
    name = ctx.name("lfpg")
    spec = ledgerflow_spec(
        ctx.tmp,
        name,
        b,
        f"sinks:\n  - name: db\n    type: postgres\n    input: {src}\n    input_format: json\n"
        f'    dsn: "{server.dsn}"\n    table: lf_rows\n    create_table: true\n{PG_SINK_COLUMNS}'
        "    part: {max_rows: 20000, max_age_ms: 1000}\n",
    )

    def peer(mode: str, python: Path | str) -> object:
        table = "quix_rows" if mode == "quixpg" else "raw_rows"
        return lambda: contender_proc(
            python,
            mode,
            ctx.log(mode),
            bootstrap=b,
            input=src,
            output=table,
            group=ctx.name(mode),
            rows=rows,
            dsn=server.dsn,
        )

    contenders: list[tuple[str, str, str, str, object]] = [
        (
            "ledgerflow PostgreSQL sink",
            "exactly-once",
            f"ledgerflow.{name}.sink.db",
            "lf_rows",
            lambda: ledgerflow_proc(spec, "sink", ctx.log("lfpg")),
        ),
        ("Quix Streams PostgreSQLSink", "at-least-once", ctx.name("quixpg"), "quix_rows", peer("quixpg", BENCH_PY)),
        ("raw consume + plain COPY", "at-least-once", ctx.name("rawcopy"), "raw_rows", peer("rawcopy", PY)),
    ]
    try:
        for label, guarantee, group, table, factory in contenders:
            if not ctx.wants(label):
                continue
            if label.startswith("Quix") and not BENCH_PY.exists():
                out.append(Result("postgres sink", label, guarantee, rows, None, None, "not installed (.venv-bench)"))
                continue
            say(f"pg: running {label}")
            proc = factory()  # type: ignore[operator]
            try:
                rate, wall, done = watch_group(admin, group, src, parts, rows, proc, ctx.timeout)
            finally:
                stop(proc)
            with psycopg.connect(server.dsn) as db:
                stored = db.execute(f"SELECT count(*) FROM {table}").fetchone()
            n = int(stored[0]) if stored else 0
            note = f"{n:,} rows in the table" + ("" if done >= rows else f"; only {done:,} committed")
            out.append(Result("postgres sink", label, guarantee, rows, rate, wall, note))
            say(f"pg: {label}: {rate or 0:,.0f} rows/s steady ({note})")
    finally:
        server.destroy()
    return out


def _count_lines(f: Path) -> int:
    with open(f, "rb") as fh:
        return sum(1 for _ in fh)


def scenario_latency(ctx: Ctx, rate: int, seconds: float, interval_ms: int = 100) -> list[Result]:
    name = ctx.name("lat")
    raw, clean = ctx.topic("lat-raw", ctx.partitions), ctx.topic("lat-clean", ctx.partitions)
    out_dir = ctx.tmp / "lat-out"
    rows = int(rate * seconds)
    spec = ledgerflow_spec(
        ctx.tmp,
        name,
        ctx.bootstrap,
        f"sources:\n  - {{name: gen, type: generator, topic: {raw}, rows: {rows}, seed: 5, rate_per_s: {rate}}}\n"
        f"transforms:\n  - {{name: t, input: {raw}, output: {clean}}}\n"
        f"sinks:\n  - name: s\n    type: file\n    input: {clean}\n    path: {out_dir}\n    format: ndjson\n"
        f"    part: {{max_rows: 100000, max_age_ms: {interval_ms}}}\n",
        interval_ms=interval_ms,
    )
    seen: dict[Path, float] = {}
    stop_watch = threading.Event()

    def watcher() -> None:
        while not stop_watch.is_set():
            if out_dir.exists():
                now = time.time()
                for f in out_dir.rglob("*.ndjson"):
                    if "_staging" not in f.parts and f not in seen:
                        seen[f] = now
            time.sleep(0.01)

    th = threading.Thread(target=watcher, daemon=True)
    th.start()
    say(f"latency: {rows:,} rows at {rate:,}/s through source -> transform -> file sink (one process each)")
    sink = ledgerflow_proc(spec, "sink", ctx.log("lat-sink"))
    transform = ledgerflow_proc(spec, "transform", ctx.log("lat-transform"))
    time.sleep(3)  # both joined their groups before the first row is made
    source = ledgerflow_proc(spec, "source", ctx.log("lat-source"), "--exit-when-done")
    try:
        source.wait(seconds + 120)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sum(_count_lines(f) for f in list(seen)) < rows:
            time.sleep(0.2)
    finally:
        for p in (source, transform, sink):
            stop(p)
        time.sleep(0.2)
        stop_watch.set()
        th.join()
    lat: list[float] = []
    for f, t_seen in seen.items():
        for line in f.read_bytes().splitlines():
            ev = json.loads(line)["_event_time_ms"]
            lat.append(t_seen * 1000 - ev)
    lat.sort()
    if not lat:
        return [Result("latency", "ledgerflow end to end", "exactly-once", rows, None, None, "no rows seen")]

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))]

    note = (
        f"p50 {pct(0.5):.0f} ms, p99 {pct(0.99):.0f} ms, max {lat[-1]:.0f} ms "
        f"at {rate:,} rows/s; commit interval {interval_ms} ms; 3 transactional hops, one process per stage"
    )
    say(f"latency: {note}")
    ctx.latency = (pct(0.5), pct(0.99), lat[-1], rate, len(lat))
    return [Result("latency", "ledgerflow source→transform→file sink", "exactly-once", len(lat), None, None, note)]


def stage_usage(proc: subprocess.Popen[bytes], until: object, timeout: float) -> tuple[float, float]:
    """(peak RSS MB, user+sys CPU s) of ``proc``, read until ``until()`` or exit."""
    peak = cpu = 0.0
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout and proc.poll() is None:
        peak = max(peak, peak_rss_mb([proc]))
        cpu = max(cpu, cpu_seconds([proc]))
        if until():  # type: ignore[operator]
            break
        time.sleep(0.2)
    return peak, cpu


def scenario_rss(ctx: Ctx, rows: int) -> list[Result]:
    name = ctx.name("rss")
    raw, clean = ctx.topic("rss-raw", ctx.partitions), ctx.topic("rss-clean", ctx.partitions)
    spec = ledgerflow_spec(
        ctx.tmp,
        name,
        ctx.bootstrap,
        f"sources:\n  - {{name: gen, type: generator, topic: {raw}, rows: {rows}, seed: 9}}\n"
        f"transforms:\n  - {{name: t, input: {raw}, output: {clean}}}\n"
        f"sinks:\n  - name: s\n    type: file\n    input: {clean}\n"
        f"    path: {ctx.tmp / 'rss-out'}\n    format: parquet\n",
    )
    out = []
    for stage, group, topic in (
        ("source", None, raw),
        ("transform", f"ledgerflow.{name}.transform.t", raw),
        ("sink", f"ledgerflow.{name}.sink.s", clean),
    ):
        say(f"rss: {stage} stage over a {rows:,}-row backlog")
        proc = ledgerflow_proc(spec, stage, ctx.log("rss"), "--exit-when-done")
        parts = [(topic, p) for p in range(ctx.partitions)]

        def done(g: str | None = group, ps: list[tuple[str, int]] = parts) -> bool:
            if g is None:
                return False
            try:
                return sum(ctx.admin.group_offsets(g, ps, require_stable=False).values()) >= rows
            except Exception:
                return False

        t0 = time.monotonic()
        mb, cpu = stage_usage(proc, done, ctx.timeout * 3)
        wall = time.monotonic() - t0
        stop(proc)
        note = f"peak RSS {mb:.0f} MB; CPU includes start-up"
        r = Result("memory", f"ledgerflow {stage} stage", "exactly-once", rows, rows / wall, wall, note)
        r.cpu_per_m, r.rss_mb = cpu / rows * 1e6, mb
        out.append(r)
        say(f"rss: {stage}: peak {mb:.0f} MB, {r.cpu_per_m:.1f} CPU s per 1M rows")
    return out


class Ctx:
    def __init__(self, args: argparse.Namespace) -> None:
        self.rows = args.rows
        self.sink_rows = args.sink_rows
        self.partitions = args.partitions
        self.timeout = args.timeout
        self.bootstrap = ensure_bootstrap(None)
        self.admin = Admin(self.bootstrap)
        self.run = uuid.uuid4().hex[:6]
        self.tmp = Path(tempfile.mkdtemp(prefix="ledgerflow-bench-"))
        self.latency: tuple[float, float, float, int, int] | None = None
        self.only = [c.strip().lower() for c in args.contenders.split(",")] if args.contenders else []
        self.latency_seconds = args.hop_latency_seconds

    def wants(self, label: str, default: bool = True, labels: frozenset[str] = frozenset()) -> bool:
        """Whether ``--contenders`` selects ``label``: a term equal to one of the scenario's
        ``labels`` selects that label only, any other term every label containing it; no
        terms: the defaults."""
        if not self.only:
            return default
        name = label.lower()
        return any(o == name or (o not in labels and o in name) for o in self.only)

    def name(self, what: str) -> str:
        return f"bench-{self.run}-{what}"

    def topic(self, what: str, partitions: int) -> str:
        t = f"bench-{self.run}.{what}"
        self.admin.create_topic(t, partitions, 1, {})
        return t

    def log(self, what: str) -> Path:
        return self.tmp / f"{what}.log"


def _num(v: float | None, fmt: str = ",.0f") -> str:
    return format(v, fmt) if v else "-"


def render(results: list[Result], args: argparse.Namespace) -> str:
    lines = [
        f"Run {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()}: {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, Apache Kafka {kafka_version()} (local broker), "
        f"{args.rows:,} rows (sink scenarios {args.sink_rows:,}), {args.partitions} partitions; "
        f"load average before the run {args.load_before}.",
        "",
        f"Command: `.venv/bin/python -m tests.bench --rows {args.rows} --sink-rows {args.sink_rows} "
        f"--partitions {args.partitions} --scenarios {args.scenarios}"
        + (f" --contenders {args.contenders}" if args.contenders else "")
        + "`",
        "",
        "Ratios: *vs ledgerflow* is the scenario's first ledgerflow contender (the eos map at 100 ms) "
        "over this row; *of ceiling* is this row over the broker's transactional ceiling. Latency is "
        "per hop (produce → visible to a read_committed reader of the output) at 20% of the row's own "
        "steady rate. CPU is user+sys seconds per 1,000,000 rows over the steady window (all the "
        "contender's processes).",
        "",
        "| scenario | contender | guarantee | commit | rows/s (steady) | wall s | vs ledgerflow | of ceiling "
        "| p50 / p99 ms (at rows/s) | CPU s / 1M rows | peak RSS MB | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base: dict[str, float] = {}
    ceiling = next((r.rows_per_s for r in results if r.contender.startswith("broker ceiling")), None)
    for r in results:
        if r.contender.startswith("ledgerflow") and r.rows_per_s:
            base.setdefault(r.scenario, r.rows_per_s)
    for r in results:
        ratio = of = lat = ""
        if r.rows_per_s and r.scenario in base and not r.contender.startswith("ledgerflow"):
            ratio = f"{base[r.scenario] / r.rows_per_s:.2f}x"
        if r.rows_per_s and ceiling and r.scenario == "eos transform":
            of = f"{r.rows_per_s / ceiling:.2f}"
        if r.p99:
            lat = f"{r.p50:,.0f} / {r.p99:,.0f} (at {r.latency_rate:,})"
        lines.append(
            f"| {r.scenario} | {r.contender} | {r.guarantee} | {r.commit} | {_num(r.rows_per_s)} | "
            f"{_num(r.wall_s, '.1f')} | {ratio} | {of} | {lat} | {_num(r.cpu_per_m, '.1f')} | "
            f"{_num(r.rss_mb)} | {r.note} |"
        )
    return "\n".join(lines)


def _find(results: list[Result], scenario: str, contender: str, commit: str | None = None) -> Result | None:
    for r in results:
        if r.scenario == scenario and r.contender == contender and (commit is None or r.commit == commit):
            return r
    return None


def _ratio(a: Result | None, b: Result | None) -> float | None:
    return a.rows_per_s / b.rows_per_s if a and b and a.rows_per_s and b.rows_per_s else None


def goals(results: list[Result]) -> str:
    """The issue's goals, each with the ratio this run measured (``-``: not measured)."""
    eos = "eos transform"
    lf, decl = _find(results, eos, "ledgerflow"), _find(results, eos, "ledgerflow declarative steps (columnar)")
    rows_decl = _find(results, eos, "ledgerflow declarative steps (row path)")
    quix100, quix5 = _find(results, eos, "Quix Streams", "100 ms"), _find(results, eos, "Quix Streams", "5 s (default)")
    ks = _find(results, eos, "Kafka Streams exactly_once_v2")
    ceiling = _find(results, eos, "broker ceiling (Java perf tools)")
    files = (
        _find(results, "file sink", "ledgerflow file sink (Parquet)"),
        _find(results, "file sink", "raw consume + pyarrow write"),
    )
    pg = (
        _find(results, "postgres sink", "ledgerflow PostgreSQL sink"),
        _find(results, "postgres sink", "raw consume + plain COPY"),
    )

    def x(v: float | None, goal: float) -> tuple[str, str]:
        return ("-", "not measured") if v is None else (f"{v:.2f}x", "met" if v >= goal else "not met")

    rows = [
        ("EOS transform, declarative steps, vs Quix EOS, 100 ms commits on both", "≥ 2x", *x(_ratio(decl, quix100), 2)),
        (
            "EOS transform, declarative steps (100 ms) vs Quix EOS at its default 5 s",
            "≥ 1.5x",
            *x(_ratio(decl, quix5), 1.5),
        ),
        ("EOS transform (the same map) vs Kafka Streams exactly_once_v2", "≥ 1.0x", *x(_ratio(lf, ks), 1.0)),
        ("EOS transform (map) vs the broker's transactional ceiling", "≥ 0.6x", *x(_ratio(lf, ceiling), 0.6)),
        ("EOS transform (declarative) vs the broker's transactional ceiling", "≥ 0.6x", *x(_ratio(decl, ceiling), 0.6)),
        ("Parquet sink vs raw consume + pyarrow write", "≥ 0.9x", *x(_ratio(*files), 0.9)),
        ("PostgreSQL sink vs raw COPY", "≥ 0.9x", *x(_ratio(*pg), 0.9)),
    ]
    stages = [r for r in results if r.scenario == "memory" and r.rss_mb]
    if stages:
        worst = max(r.rss_mb or 0 for r in stages)
        text = ", ".join(f"{r.contender.split()[1]} {r.rss_mb:.0f} MB" for r in stages)
        rows.append(
            ("Peak RSS per stage, 1,000,000-row backlog", "≤ 200 MB", text, "met" if worst <= 200 else "not met")
        )
    if lf and lf.p99:
        rows.append(
            (
                "p99 latency per transactional hop at 20% load (ledgerflow, 100 ms)",
                "≤ 150 ms",
                f"{lf.p99:.0f} ms",
                "met" if lf.p99 <= 150 else "not met",
            )
        )
    if rows_decl and decl and rows_decl.cpu_per_m and decl.cpu_per_m:
        half = decl.cpu_per_m / rows_decl.cpu_per_m
        rows.append(
            (
                "Transform CPU per 1,000,000 rows, columnar vs row path (same steps)",
                "halve (≤ 0.5)",
                f"{decl.cpu_per_m:.1f} s vs {rows_decl.cpu_per_m:.1f} s ({half:.2f})",
                "met" if half <= 0.5 else "not met",
            )
        )
    lines = ["| goal | target | this run | status |", "|---|---|---|---|"]
    lines += [f"| {g} | {t} | {v} | {st} |" for g, t, v, st in rows]
    return "\n".join(lines)


def write_doc(table: str) -> None:
    doc = REPO / "docs" / "benchmarks.md"
    text = doc.read_text()
    begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
    block = f"{begin}\n{table}\n{end}"
    if begin in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n## Peer comparison (generated by the harness)\n\n" + block + "\n"
    doc.write_text(text)


def main(argv: list[str] | None = None) -> list[Result]:
    ap = argparse.ArgumentParser(prog="python -m tests.bench")
    ap.add_argument("--rows", type=int, default=1_000_000, help="input rows of the eos scenario")
    ap.add_argument("--sink-rows", type=int, default=500_000, help="rows of the files and pg scenarios")
    ap.add_argument("--partitions", type=int, default=2, help="partitions of every input topic")
    ap.add_argument(
        "--scenarios", default="eos,files,pg,s3,iceberg,latency,rss,scaleout", help="comma-separated subset to run"
    )
    ap.add_argument("--scaleout-rows", type=int, default=500_000, help="rows of the scale-out scenario (4 partitions)")
    ap.add_argument(
        "--hop-latency-seconds", type=float, default=6, help="eos: per-contender latency window (0: skip the probes)"
    )
    ap.add_argument("--s3-port", type=int, default=18830, help="first port of the throwaway S3 store (s3)")
    ap.add_argument("--pg-port", type=int, default=15633, help="port of the throwaway PostgreSQL server (pg)")
    ap.add_argument("--rss-rows", type=int, default=1_000_000, help="backlog per stage of the rss scenario")
    ap.add_argument("--latency-rate", type=int, default=0, help="rows/s (default: 20%% of ledgerflow's eos rate)")
    ap.add_argument("--latency-seconds", type=float, default=20, help="how long the latency scenario produces")
    ap.add_argument("--latency-interval-ms", type=int, default=100, help="commit interval and part age of all stages")
    ap.add_argument("--timeout", type=float, default=90, help="per contender; slower ones report partial progress")
    ap.add_argument("--write-doc", action="store_true", help="update docs/benchmarks.md")
    ap.add_argument("--contenders", default="", help="eos: only contenders whose name contains one of these")
    ap.add_argument("--keep", action="store_true", help="keep the run's temp dir (logs)")
    args = ap.parse_args(argv)
    args.load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    ctx = Ctx(args)
    wanted = set(args.scenarios.split(","))
    results: list[Result] = []
    try:
        if "eos" in wanted:
            from tests.bench.eos import scenario_eos

            results += scenario_eos(ctx)
        if "files" in wanted:
            results += scenario_files(ctx)
        if "pg" in wanted:
            results += scenario_pg(ctx, args.pg_port)
        if "s3" in wanted:
            results += scenario_s3(ctx, args.s3_port)
        if "iceberg" in wanted:
            results += scenario_iceberg(ctx)
        if "latency" in wanted:
            lf = next((r.rows_per_s for r in results if r.contender == "ledgerflow" and r.rows_per_s), None)
            rate = args.latency_rate or int((lf or 10_000) * 0.2)
            results += scenario_latency(ctx, rate, args.latency_seconds, args.latency_interval_ms)
        if "rss" in wanted:
            results += scenario_rss(ctx, args.rss_rows)
        if "scaleout" in wanted:
            from tests.bench.eos import scenario_scaleout

            results += scenario_scaleout(ctx, args.scaleout_rows)
    finally:
        table = render(results, args) + "\n\nGoals (issue 17), from this run:\n\n" + goals(results)
        print(table)
        if args.write_doc:
            write_doc(table)
        if args.keep:
            say(f"logs kept in {ctx.tmp}")
        else:
            shutil.rmtree(ctx.tmp, ignore_errors=True)
    return results
