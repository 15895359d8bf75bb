"""Helpers for tests that run real pipelines as subprocesses on the real broker."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import orjson

from app.journal.reader import load_journal
from app.kafka.admin import Admin
from tests.conftest import KafkaEnv
from tests.procs import die_with_parent

LEDGERFLOW = [sys.executable, "-m", "app.cli.main"]
REPO = Path(__file__).resolve().parents[1]


@dataclass
class PipelineFiles:
    name: str
    spec: Path
    out: Path
    raw: str
    clean: str
    rows: int


def write_topics(tmp: Path, name: str, data_topics: list[str], partitions: int) -> None:
    """``topics.yaml`` with the data topics plus the pipeline's journal and DLQ."""
    lines = ["topics:"]
    for t in data_topics:
        lines += [f"  - name: {t}", f"    partitions: {partitions}"]
    lines += [f"  - name: {name}.journal", "    partitions: 1", "    configs: {cleanup.policy: compact}"]
    lines += [f"  - name: {name}.dlq", "    partitions: 1", ""]
    (tmp / "topics.yaml").write_text("\n".join(lines))


def wait_log(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Wait until ``text`` appears in a worker's log; fail if the worker exits first."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text():
            return
        assert proc.poll() is None, f"worker exited early: {log.read_text()[-2000:]}"
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in {log} after {timeout}s")


def stop(*procs: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """SIGTERM every worker still running (resuming a SIGSTOPped one first), then wait
    (SIGKILL after ``timeout``)."""
    import signal

    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()


def uid() -> str:
    """A fresh suffix for pipeline/topic names: tests never meet an earlier run's
    journal or topics, even on a broker reused across sessions."""
    return uuid.uuid4().hex[:8]


def spec_head(
    name: str, kafka: KafkaEnv, *, max_rows: int = 1_000, session_timeout_ms: int = 6000, extra: str = ""
) -> str:
    """The common head of a test pipeline spec: topics file, broker, short sessions,
    100 ms commits; ``extra`` goes in after ``topics`` (e.g. ``state_dir``)."""
    return f"""pipeline: {name}
topics: [topics.yaml]
{extra}kafka:
  bootstrap_servers: "{kafka.bootstrap}"
  config:
    session.timeout.ms: {session_timeout_ms}
    heartbeat.interval.ms: 1000
commit:
  interval_ms: 100
  max_rows: {max_rows}
  transaction_timeout_ms: 20000
"""


def write_pipeline(
    tmp: Path,
    name: str,
    kafka: KafkaEnv,
    *,
    rows: int = 10_000,
    partitions: int = 3,
    fmt: str = "ndjson",
    part_rows: int = 2_000,
    max_rows: int = 1_000,
    extra_steps: str = "",
    source_block: str | None = None,
    session_timeout_ms: int = 6000,
    steps: str = "      - project: {rename: {amount: amount_cents}}\n",
) -> PipelineFiles:
    raw, clean = f"{name}.raw", f"{name}.clean"
    write_topics(tmp, name, [raw, clean], partitions)
    source = (
        source_block
        or f"""  - name: gen
    type: generator
    topic: {raw}
    rows: {rows}
    seed: 11
"""
    )
    spec = tmp / "pipeline.yaml"
    spec.write_text(
        spec_head(name, kafka, max_rows=max_rows, session_timeout_ms=session_timeout_ms)
        + f"""sources:
{source}transforms:
  - name: shape
    input: {raw}
    output: {clean}
    steps:
{steps}{extra_steps}sinks:
  - name: files
    type: file
    input: {clean}
    path: out
    format: {fmt}
    part: {{max_rows: {part_rows}, max_age_ms: 2000}}
"""
    )
    return PipelineFiles(name, spec, tmp / "out", raw, clean, rows)


def run(
    spec: Path,
    *args: str,
    crash_at: str | None = None,
    timeout: float = 240,
    env_extra: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("LEDGERFLOW_CRASH_AT", None)
    env["LEDGERFLOW_LOG_FORMAT"] = "text"
    env["PYTHONPATH"] = str(REPO)  # test-only user functions live in tests/fns.py
    if crash_at:
        env["LEDGERFLOW_CRASH_AT"] = crash_at
    env.update(env_extra or {})
    return subprocess.run(
        [*LEDGERFLOW, "run", str(spec), "--exit-when-done", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=spec.parent,
        check=False,
    )


def popen(
    spec: Path, *args: str, env_extra: dict[str, str] | None = None, log: Path | None = None
) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.pop("LEDGERFLOW_CRASH_AT", None)
    env["LEDGERFLOW_LOG_FORMAT"] = "text"
    env["PYTHONPATH"] = str(REPO)  # test-only user functions live in tests/fns.py
    env.update(env_extra or {})
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    return subprocess.Popen(
        [*LEDGERFLOW, "run", str(spec), *args],
        stdout=out,
        stderr=out,
        env=env,
        cwd=spec.parent,
        preexec_fn=die_with_parent,  # no orphan keeps writing if the test process dies
    )


def wait_for_rows(out: Path, n: int, timeout: float = 120, proc: subprocess.Popen[bytes] | None = None) -> list[bytes]:
    """Poll the sink until it holds at least ``n`` rows."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = sink_lines(out)
        if len(lines) >= n:
            return lines
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"pipeline exited with {proc.returncode} before {n} rows ({len(lines)} so far)")
        time.sleep(0.3)
    raise AssertionError(f"sink has {len(sink_lines(out))} rows after {timeout}s, expected {n}")


def read_dlq(kafka: KafkaEnv, topic: str) -> list[dict[str, object]]:
    from app.codecs.dlq import decode_dlq
    from app.kafka.readers import read_topic_to_end

    return [decode_dlq(r.value) for r in read_topic_to_end(kafka.bootstrap, topic) if r.value]


def sink_lines(out: Path) -> list[bytes]:
    """Every row line of every *finalized* NDJSON part (staging excluded)."""
    lines: list[bytes] = []
    for f in sorted(out.rglob("*.ndjson")):
        if "_staging" in f.parts:
            continue
        lines.extend(f.read_bytes().splitlines())
    return lines


def staging_leftovers(out: Path) -> list[Path]:
    staging = out / "_staging"
    return [p for p in staging.rglob("*") if p.is_file()] if staging.exists() else []


def token_ids(lines: list[bytes]) -> list[str]:
    return [orjson.loads(line)["_token_id"] for line in lines]


def assert_exactly_once(kafka: KafkaEnv, pf: PipelineFiles, expected_ids: set[str]) -> list[bytes]:
    """Every expected token id exactly once in the sink; journal and offsets consistent."""
    lines = sink_lines(pf.out)
    ids = token_ids(lines)
    dupes = len(ids) - len(set(ids))
    missing = expected_ids - set(ids)
    extra = set(ids) - expected_ids
    assert dupes == 0, f"{dupes} duplicate rows in the sink"
    assert not missing, f"{len(missing)} rows lost, e.g. {sorted(missing)[:5]}"
    assert not extra, f"{len(extra)} unexpected rows, e.g. {sorted(extra)[:5]}"
    assert staging_leftovers(pf.out) == [], "staging files left behind"

    events = load_journal(kafka.bootstrap, f"{pf.name}.journal")
    unfinalized = [k for k, ev in events.items() if ev.kind == "part_committed"]
    assert unfinalized == [], f"committed parts never finalized: {unfinalized[:5]}"
    finalized_rows = sum(ev.part.rows for ev in events.values() if ev.kind == "part_finalized" and ev.part)
    assert finalized_rows == len(ids), "journal row counts disagree with the files"

    admin = Admin(kafka.bootstrap)
    for group, topic in (
        (f"ledgerflow.{pf.name}.transform.shape", pf.raw),
        (f"ledgerflow.{pf.name}.sink.files", pf.clean),
    ):
        parts = [(topic, p) for p in admin.partitions_of(topic)]
        ends = admin.end_offsets(parts)
        committed = admin.group_offsets(group, parts)
        for tp in parts:
            # only a transaction marker may follow the committed offset
            assert ends[tp] - committed.get(tp, 0) <= 1, f"{group} {tp}: committed {committed.get(tp)} end {ends[tp]}"
    return lines


def hanging_transactions(kafka: KafkaEnv, prefix: str) -> list[str]:
    """Transactional ids starting with ``prefix`` that are still Ongoing/Prepare*."""
    proc = kafka.tool("transactions", "list")
    assert proc.returncode == 0, proc.stderr
    bad = []
    for line in proc.stdout.splitlines()[1:]:
        cols = re.split(r"\s+", line.strip())
        if cols and cols[0].startswith(prefix) and any(s in line for s in ("Ongoing", "PrepareCommit", "PrepareAbort")):
            bad.append(line)
    return bad


PG_COLUMNS = """    columns:
      - {name: token_id, type: text, source: _token_id}
      - {name: id, type: bigint}
      - {name: customer, type: text}
      - {name: country, type: varchar(2)}
      - {name: amount, type: bigint}
      - {name: quantity, type: int}
"""


def create_pg_table(dsn: str, table: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(
            f"CREATE TABLE {table} (token_id text PRIMARY KEY, id bigint NOT NULL, customer text, "
            f"country varchar(2), amount bigint, quantity int CHECK (quantity > 0))"
        )


def write_pg_pipeline(
    tmp: Path,
    name: str,
    kafka: KafkaEnv,
    dsn: str,
    *,
    rows: int = 10_000,
    rate: int | None = None,
    steps: str = "",
    part_rows: int = 1000,
    partitions: int = 3,
) -> PipelineFiles:
    table = "t_" + name.replace("-", "_")
    create_pg_table(dsn, table)
    rate_line = f"    rate_per_s: {rate}\n" if rate else ""
    src = f"""  - name: gen
    type: generator
    topic: {name}.raw
    rows: {rows}
    seed: 11
{rate_line}"""
    pf = write_pipeline(
        tmp,
        name,
        kafka,
        rows=rows,
        source_block=src,
        part_rows=part_rows,
        partitions=partitions,
        steps=steps or "      - project: {fields: [id, customer, country, amount, quantity]}\n",
    )
    text = pf.spec.read_text()
    head, _sep, _tail = text.partition("sinks:\n")
    pf.spec.write_text(
        head
        + f"""sinks:
  - name: db
    type: postgres
    input: {pf.clean}
    dsn: "{dsn}"
    table: {table}
{PG_COLUMNS}    part: {{max_rows: {part_rows}, max_age_ms: 2000}}
"""
    )
    return PipelineFiles(name, pf.spec, Path(table), pf.raw, pf.clean, rows)


def assert_pg_exactly_once(kafka: KafkaEnv, pf: PipelineFiles, dsn: str, expected_ids: set[str]) -> None:
    """Each expected token id exactly once in the table (the primary key makes doubles
    impossible, so also check the count), offsets table == group offsets == the end."""
    import psycopg

    table = str(pf.out)
    with psycopg.connect(dsn) as c:
        ids = [r[0] for r in c.execute(f"SELECT token_id FROM {table}").fetchall()]
        stored = dict(
            c.execute(
                "SELECT partition, next_offset FROM ledgerflow_offsets WHERE sink = 'db' AND topic = %s",
                (pf.clean,),
            ).fetchall()
        )
    missing = expected_ids - set(ids)
    assert not missing, f"{len(missing)} rows lost, e.g. {sorted(missing)[:5]}"
    assert set(ids) == expected_ids and len(ids) == len(set(ids))
    admin = Admin(kafka.bootstrap)
    parts = [(pf.clean, p) for p in admin.partitions_of(pf.clean)]
    ends = admin.end_offsets(parts)
    group = admin.group_offsets(f"ledgerflow.{pf.name}.sink.db", parts)
    # the journal covers exactly what the database committed: part events, plus
    # recovery events where Kafka had to be reconciled from the database
    covered = journal_coverage(kafka, pf.name, pf.clean)
    for tp in parts:
        assert covered.get(tp[1]) == stored.get(tp[1]), (
            f"{tp}: journal covers {covered.get(tp[1])}, db {stored.get(tp[1])}"
        )
        assert group.get(tp) == stored.get(tp[1]), f"{tp}: group {group.get(tp)} vs database {stored.get(tp[1])}"
        assert ends[tp] - stored.get(tp[1], 0) <= 1, f"{tp}: database at {stored.get(tp[1])}, end {ends[tp]}"


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fenced_count(port: int, sink: str) -> float:
    """``ledgerflow_transactions_total{outcome="fenced"}`` of ``sink`` from a worker's /metrics."""
    import urllib.request

    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in body.splitlines():
        if (
            line.startswith("ledgerflow_transactions_total{")
            and 'outcome="fenced"' in line
            and f'name="{sink}"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def journal_coverage(kafka: KafkaEnv, pipeline: str, topic: str) -> dict[int, int]:
    """Next offset per partition of ``topic`` the journal says a transactional sink
    committed: its ``part_committed`` events, plus ``recovery`` events where Kafka was
    reconciled from the sink's own store."""
    covered: dict[int, int] = {}
    for ev in load_journal(kafka.bootstrap, f"{pipeline}.journal").values():
        if ev.kind == "part_committed" and ev.part is not None and ev.part.topic == topic:
            covered[ev.part.partition] = max(covered.get(ev.part.partition, 0), ev.part.last_offset + 1)
        elif ev.kind == "recovery" and ev.detail and ev.detail.get("topic") == topic:
            p = int(ev.detail["partition"])
            covered[p] = max(covered.get(p, 0), int(ev.detail["to"]))
    return covered
