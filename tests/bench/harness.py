"""Benchmark harness: ledgerflow against its peers, on one broker, in one run.

    .venv/bin/python -m tests.bench [--rows 1000000] [--scenarios eos,files,pg,latency,rss] [--write-doc]

Scenarios (identical input per scenario, rows of ~130 bytes):
  eos      topic -> topic with a trivial map (add one field): ledgerflow transform
           (exactly once), Kafka's TransactionalMessageCopier (Java, exactly once, one
           process per partition, copies bytes without a map, transaction size 200 as
           the tool fixes it), a raw confluent-kafka loop (at-least-once: the ceiling),
           Quix Streams and faust-streaming in their exactly-once modes (from
           .venv-bench, if present).
  files    topic -> Parquet: ledgerflow file sink (exactly once) vs a raw consume +
           pyarrow write (at-least-once).
  pg       JSON topic -> PostgreSQL table: ledgerflow PostgreSQL sink (exactly once,
           upsert by token id + offsets CAS), Quix Streams' PostgreSQLSink (at-least-once,
           upsert by row id; from .venv-bench) and a raw consume + plain COPY into an
           unkeyed table (at-least-once: the ceiling), on a throwaway PostgreSQL server.
  latency  source -> transform -> file sink at a fixed rate: event time -> part visible.
  rss      peak RSS of each ledgerflow stage over a backlog (--rss-rows, 1,000,000).

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
from app.kafka.local_broker import LocalBroker, ensure_bootstrap, kafka_version
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
def watch_group(
    admin: Admin, group: str, topic: str, partitions: int, rows: int, proc: subprocess.Popen[bytes], timeout: float
) -> tuple[float | None, float | None, int]:
    """Poll committed offsets: (steady rows/s, wall s to 100%, rows done).

    Offsets move in steps (one per commit), so the steady rate is measured between the
    *observed* committed counts at the first poll past 10% and the first past 90% of
    the input: with few large commits (Quix commits every 5 s) a window
    between nominal 10%/90% marks would read a step as a rate."""
    parts = [(topic, p) for p in range(partitions)]
    t0 = time.monotonic()
    marks: dict[float, tuple[float, int]] = {}
    done = 0
    while time.monotonic() - t0 < timeout:
        try:
            done = sum(admin.group_offsets(group, parts, require_stable=False).values())
        except Exception:
            done = 0
        now = time.monotonic()
        for frac in (0.1, 0.9, 1.0):
            if frac not in marks and done >= frac * rows:
                marks[frac] = (now, done)
        if 1.0 in marks:
            break
        if proc.poll() is not None and proc.returncode != 0:
            break
        time.sleep(0.2)
    rate = None
    if 0.1 in marks:
        (ta, da), (tb, db) = marks[0.1], marks.get(0.9, (time.monotonic(), done))  # timed out: partial progress
        if tb > ta and db > da:
            rate = (db - da) / (tb - ta)
    if rate is None and 1.0 in marks and marks[1.0][0] > t0:  # one commit took it all: no steady window
        rate = rows / (marks[1.0][0] - t0)
    wall = marks[1.0][0] - t0 if 1.0 in marks else None
    return rate, wall, done


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
def scenario_eos(ctx: Ctx) -> list[Result]:
    rows, parts, admin, b = ctx.rows, ctx.partitions, ctx.admin, ctx.bootstrap
    src = ctx.topic("json", parts)
    say(f"eos: producing {rows:,} JSON rows to {src}")
    produce_json(b, src, rows)
    out: list[Result] = []

    def run(contender: str, guarantee: str, group: str, proc_factory: object, note: str = "") -> None:
        if ctx.only and not any(o in contender.lower() for o in ctx.only):
            return
        say(f"eos: running {contender}")
        procs = proc_factory()  # type: ignore[operator]
        t0 = time.monotonic()
        try:
            rate, wall, done = watch_group(admin, group, src, parts, rows, procs[0], ctx.timeout)
        finally:
            for p in procs:
                stop(p)
        status = (
            note
            if done >= rows
            else f"{note} only {done:,}/{rows:,} rows committed in {time.monotonic() - t0:.0f}s".strip()
        )
        out.append(Result("eos transform", contender, guarantee, rows, rate, wall, status))
        say(f"eos: {contender}: {rate or 0:,.0f} rows/s steady ({status or 'ok'})")

    # default settings: a transaction per 100 ms (larger transactions are not faster
    # here: see docs/benchmarks.md)
    name = ctx.name("lf")
    dst = ctx.topic("lf-out", parts)
    spec = ledgerflow_spec(
        ctx.tmp,
        name,
        b,
        f"transforms:\n  - name: t\n    input: {src}\n    input_format: json\n    output: {dst}\n"
        f'    steps:\n      - map: "tests.bench.fns:add_x"\n',
    )
    run(
        "ledgerflow",
        "exactly-once",
        f"ledgerflow.{name}.transform.t",
        lambda: [ledgerflow_proc(spec, "transform", ctx.log("lf"))],
    )

    dst = ctx.topic("copier-out", parts)
    group = ctx.name("copier")
    broker = LocalBroker(Path(tempfile.gettempdir()) / "ledgerflow-tools")

    def copiers() -> list[subprocess.Popen[bytes]]:
        return [
            subprocess.Popen(
                broker.tool_command(
                    "copier",
                    [
                        "--input-topic",
                        src,
                        "--input-partition",
                        str(p),
                        "--output-topic",
                        dst,
                        "--consumer-group",
                        group,
                        "--transactional-id",
                        f"{group}-{p}",
                        "--max-messages",
                        "-1",
                    ],
                    bootstrap=b,
                ),
                stdout=open(ctx.log("copier"), "ab"),  # its progress and errors are JSON lines on stdout
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
            for p in range(parts)
        ]

    run("Kafka TransactionalMessageCopier (Java)", "exactly-once", group, copiers, "copies bytes, no map; 200 msgs/txn")

    for mode, label, guarantee, python in (
        ("raw", "raw confluent-kafka loop", "at-least-once", Path(PY)),
        ("quix", "Quix Streams", "exactly-once", BENCH_PY),
        ("faust", "faust-streaming", "exactly-once", BENCH_PY),
    ):
        if ctx.only and not any(o in label.lower() for o in ctx.only):
            continue
        if not Path(python).exists():
            out.append(Result("eos transform", label, guarantee, rows, None, None, "not installed (.venv-bench)"))
            continue
        dst = ctx.topic(f"{mode}-out", parts)
        group = ctx.name(mode)
        run(
            label,
            guarantee,
            group,
            lambda m=mode, py=python, d=dst, g=group: [
                contender_proc(py, m, ctx.log(m), bootstrap=b, input=src, output=d, group=g, rows=rows)
            ],
        )
    return out


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
            if ctx.only and not any(o in label.lower() for o in ctx.only):
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


def peak_rss(proc: subprocess.Popen[bytes], until: object, timeout: float) -> float:
    """VmHWM (peak resident set) of ``proc`` in MB, read until ``until()`` or exit."""
    peak = 0.0
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout and proc.poll() is None:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
        except OSError:
            break
        if until():  # type: ignore[operator]
            break
        time.sleep(0.2)
    return peak


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
        mb = peak_rss(proc, done, ctx.timeout * 3)
        wall = time.monotonic() - t0
        stop(proc)
        out.append(
            Result(
                "memory", f"ledgerflow {stage} stage", "exactly-once", rows, rows / wall, wall, f"peak RSS {mb:.0f} MB"
            )
        )
        say(f"rss: {stage}: peak {mb:.0f} MB")
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

    def name(self, what: str) -> str:
        return f"bench-{self.run}-{what}"

    def topic(self, what: str, partitions: int) -> str:
        t = f"bench-{self.run}.{what}"
        self.admin.create_topic(t, partitions, 1, {})
        return t

    def log(self, what: str) -> Path:
        return self.tmp / f"{what}.log"


def render(results: list[Result], args: argparse.Namespace) -> str:
    lines = [
        f"Run {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()}: {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, Apache Kafka {kafka_version()} (local broker), "
        f"{args.rows:,} rows (sink scenarios {args.sink_rows:,}), {args.partitions} partitions.",
        "",
        f"Command: `.venv/bin/python -m tests.bench --rows {args.rows} --sink-rows {args.sink_rows} "
        f"--partitions {args.partitions} "
        f"--scenarios {args.scenarios}`",
        "",
        "| scenario | contender | guarantee | rows/s (steady) | wall s | ratio | note |",
        "|---|---|---|---|---|---|---|",
    ]
    base: dict[str, float] = {}
    for r in results:
        if r.contender.startswith("ledgerflow") and r.rows_per_s:
            base.setdefault(r.scenario, r.rows_per_s)
    for r in results:
        ratio = ""
        if r.rows_per_s and r.scenario in base and not r.contender.startswith("ledgerflow"):
            ratio = f"ledgerflow = {base[r.scenario] / r.rows_per_s:.2f}x"
        lines.append(
            f"| {r.scenario} | {r.contender} | {r.guarantee} | "
            f"{f'{r.rows_per_s:,.0f}' if r.rows_per_s else '-'} | {f'{r.wall_s:.1f}' if r.wall_s else '-'} | "
            f"{ratio} | {r.note} |"
        )
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
    ap.add_argument("--scenarios", default="eos,files,pg,latency,rss", help="comma-separated subset to run")
    ap.add_argument("--pg-port", type=int, default=35633, help="port of the throwaway PostgreSQL server (pg)")
    ap.add_argument("--rss-rows", type=int, default=1_000_000, help="backlog per stage of the rss scenario")
    ap.add_argument("--latency-rate", type=int, default=0, help="rows/s (default: 20%% of ledgerflow's eos rate)")
    ap.add_argument("--latency-seconds", type=float, default=20, help="how long the latency scenario produces")
    ap.add_argument("--latency-interval-ms", type=int, default=100, help="commit interval and part age of all stages")
    ap.add_argument("--timeout", type=float, default=90, help="per contender; slower ones report partial progress")
    ap.add_argument("--write-doc", action="store_true", help="update docs/benchmarks.md")
    ap.add_argument("--contenders", default="", help="eos: only contenders whose name contains one of these")
    ap.add_argument("--keep", action="store_true", help="keep the run's temp dir (logs)")
    args = ap.parse_args(argv)
    ctx = Ctx(args)
    wanted = set(args.scenarios.split(","))
    results: list[Result] = []
    try:
        if "eos" in wanted:
            results += scenario_eos(ctx)
        if "files" in wanted:
            results += scenario_files(ctx)
        if "pg" in wanted:
            results += scenario_pg(ctx, args.pg_port)
        if "latency" in wanted:
            lf = next((r.rows_per_s for r in results if r.contender == "ledgerflow" and r.rows_per_s), None)
            rate = args.latency_rate or int((lf or 10_000) * 0.2)
            results += scenario_latency(ctx, rate, args.latency_seconds, args.latency_interval_ms)
        if "rss" in wanted:
            results += scenario_rss(ctx, args.rss_rows)
    finally:
        table = render(results, args)
        print(table)
        if args.write_doc:
            write_doc(table)
        if args.keep:
            say(f"logs kept in {ctx.tmp}")
        else:
            shutil.rmtree(ctx.tmp, ignore_errors=True)
    return results
