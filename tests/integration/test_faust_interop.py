"""A faust-streaming stage between two ledgerflow stages, on the real broker and a
real PostgreSQL server:

    ledgerflow generator ─► topic A ─► faust worker (app.interop.faust_example,
    adds a payload field) ─► topic B ─► ledgerflow PostgreSQL sink (upsert by token_id)

The faust worker is SIGKILLed mid-run and restarted. faust is at-least-once, so B
may hold some tokens twice; the sink must still hold every token exactly once,
with faust's field.
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.kafka.admin import Admin
from tests.conftest import KafkaEnv
from tests.harness import (
    LEDGERFLOW,
    REPO,
    PipelineFiles,
    assert_pg_exactly_once,
    popen,
    spec_head,
    stop,
    write_topics,
)

pytestmark = pytest.mark.integration

FIELD, VALUE = "enriched_by", "faust"


def _require_faust() -> None:
    """faust (and cramjam, aiokafka's lz4 codec) come with the ``dev`` extra; a
    missing one is a broken environment: fail, never skip."""
    for mod, why in (("faust", "faust-streaming"), ("cramjam", "aiokafka[lz4], to read lz4 batches")):
        try:
            importlib.import_module(mod)  # find_spec fails on faust once imported (its __spec__ is None)
        except ImportError:
            pytest.fail(f"{mod} is not installed ({why}): .venv/bin/pip install -e '.[dev]'", pytrace=False)


def _wait(
    what: str,
    cond: Callable[[], bool],
    timeout: float,
    *procs: tuple[subprocess.Popen[bytes], Path],
    detail: Callable[[], str] = str,
) -> None:
    """Poll ``cond`` until true; fail when a watched process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        for proc, log in procs:
            assert proc.poll() is None, f"{log.name}: exited {proc.returncode} while waiting for {what}:\n" + (
                log.read_text()[-3000:] if log.exists() else ""
            )
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} {detail()}")


def _start_faust(tmp: Path, kafka: KafkaEnv, app_id: str, inp: str, out: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
        "LEDGERFLOW_FAUST_INPUT": inp,
        "LEDGERFLOW_FAUST_OUTPUT": out,
        "LEDGERFLOW_FAUST_APP_ID": app_id,
        "LEDGERFLOW_FAUST_FIELD": FIELD,
        "LEDGERFLOW_FAUST_VALUE": VALUE,
        # faust's own settings: a SIGKILLed member leaves the group within 6 s
        # (the broker's minimum), so the restarted worker is not kept waiting 60 s
        "BROKER_SESSION_TIMEOUT": "6",
        "BROKER_HEARTBEAT_INTERVAL": "1",
    }
    cmd = [sys.executable, "-m", "faust", "-A", "app.interop.faust_example", "worker", "-l", "info", "--without-web"]
    with open(log, "ab") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=fh, env=env, cwd=tmp)


def test_faust_stage_between_ledgerflow_stages_delivers_each_token_once_to_postgres(
    kafka: KafkaEnv, postgres: Any, tmp_path: Path
) -> None:
    _require_faust()
    import psycopg

    rows, rate = 6_000, 750  # ~8 s of generation: time to kill faust mid-stream
    name = f"faust-{tmp_path.name[-4:].strip('_')}-{uuid.uuid4().hex[:6]}"
    topic_a, topic_b = f"{name}.a", f"{name}.b"
    table = "t_" + name.replace("-", "_")
    app_id = f"{name}-faust"
    dsn = postgres.dsn

    write_topics(tmp_path, name, [topic_a, topic_b], partitions=3)
    spec = tmp_path / "pipeline.yaml"
    spec.write_text(
        spec_head(name, kafka, max_rows=500)
        + f"""sources:
  - name: gen
    type: generator
    topic: {topic_a}
    rows: {rows}
    seed: 11
    rate_per_s: {rate}
sinks:
  - name: db
    type: postgres
    input: {topic_b}
    dsn: "{dsn}"
    table: {table}
    create_table: true
    columns:
      - {{name: token_id, type: text, source: _token_id}}
      - {{name: id, type: bigint}}
      - {{name: amount, type: bigint}}
      - {{name: {FIELD}, type: text}}
    part: {{max_rows: 500, max_age_ms: 1000}}
"""
    )
    # the topics exist before faust starts: the example never declares topics
    applied = subprocess.run(
        [*LEDGERFLOW, "topics", "apply", str(tmp_path / "topics.yaml"), "--bootstrap-server", kafka.bootstrap],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert applied.returncode == 0, applied.stderr[-2000:]

    admin = Admin(kafka.bootstrap)
    parts_a = [(topic_a, p) for p in admin.partitions_of(topic_a)]
    parts_b = [(topic_b, p) for p in admin.partitions_of(topic_b)]

    def in_b() -> int:
        return sum(admin.end_offsets(parts_b).values())  # B is not transactional: records only

    def pg(query: str) -> int:
        try:
            with psycopg.connect(dsn) as c:
                row = c.execute(query).fetchone()
        except psycopg.errors.UndefinedTable:  # the sink has not created it yet
            return 0
        return int(row[0]) if row and row[0] is not None else 0

    def sink_caught_up() -> bool:
        stored = pg(f"SELECT sum(next_offset) FROM ledgerflow_offsets WHERE sink = 'db' AND topic = '{topic_b}'")
        return stored == in_b()

    def b_settled(quiet_s: float = 3.0) -> Callable[[], bool]:
        """True once B's end has not moved for ``quiet_s``: faust has forwarded
        everything it is going to (re-sends included)."""
        last: dict[str, Any] = {"end": -1, "since": time.monotonic()}

        def check() -> bool:
            end = in_b()
            if end != last["end"]:
                last["end"], last["since"] = end, time.monotonic()
            return time.monotonic() - last["since"] >= quiet_s

        return check

    started = time.monotonic()
    log1, log2, lf_log = tmp_path / "faust-1.log", tmp_path / "faust-2.log", tmp_path / "ledgerflow.log"
    faust1 = _start_faust(tmp_path, kafka, app_id, topic_a, topic_b, log1)
    lf = faust2 = None
    try:
        _wait("faust worker ready", lambda: log1.exists() and "Ready" in log1.read_text(), 60, (faust1, log1))
        lf = popen(spec, "--worker-id", "w1", log=lf_log)

        # SIGKILL faust once part of the stream reached B, while the source is still producing
        _wait("first tokens in B", lambda: in_b() >= rows // 4, 45, (faust1, log1), (lf, lf_log))
        faust1.send_signal(signal.SIGKILL)
        faust1.wait(10)
        at_kill = in_b()
        assert at_kill < rows, f"faust was killed too late: B already holds {at_kill} of {rows} tokens"

        faust2 = _start_faust(tmp_path, kafka, app_id, topic_a, topic_b, log2)
        _wait(
            f"{rows} rows in {table}",
            lambda: pg(f"SELECT count(*) FROM {table}") >= rows,
            75,
            (faust2, log2),
            (lf, lf_log),
        )
        # faust's own commits are not waited for: faust-streaming stops committing
        # input offsets at gaps (transaction markers; faust-streaming/faust#606),
        # so after a restart it re-sends from its last commit. That is exactly the
        # at-least-once behaviour the sink must absorb.
        _wait("faust to stop forwarding", b_settled(), 60, (faust2, log2), (lf, lf_log))
        _wait("the sink to drain B", sink_caught_up, 30, (faust2, log2), (lf, lf_log))
    finally:
        stop(*(p for p in (faust1, faust2, lf) if p is not None), timeout=30)
    assert lf is not None and lf.returncode == 0, lf_log.read_text()[-3000:]
    elapsed = time.monotonic() - started

    expected = {f"gen:{i}" for i in range(rows)}
    with psycopg.connect(dsn) as c:
        got = c.execute(f"SELECT token_id, {FIELD} FROM {table}").fetchall()
    ids = [r[0] for r in got]
    assert len(ids) == rows, f"{len(ids)} rows in {table}, expected {rows}"
    assert set(ids) == expected, (
        f"missing {sorted(expected - set(ids))[:5]}, unexpected {sorted(set(ids) - expected)[:5]}"
    )
    assert {r[1] for r in got} == {VALUE}, "faust's payload field is missing from some rows"
    # offsets: database == sink group == end of B; journal covers what the database committed
    assert_pg_exactly_once(kafka, PipelineFiles(name, spec, Path(table), topic_a, topic_b, rows), dsn, expected)

    total_b = in_b()
    faust_committed = sum(admin.group_offsets(app_id, parts_a, require_stable=False).values())
    assert total_b >= rows, f"B holds {total_b} records, fewer than the {rows} tokens"
    print(
        f"\nfaust interop: {rows} tokens, faust SIGKILLed at {at_kill} records in B; "
        f"B holds {total_b} records ({total_b - rows} re-sent by faust's at-least-once), "
        f"sink holds {len(ids)} distinct token ids; faust's group committed {faust_committed} of "
        f"{sum(admin.end_offsets(parts_a).values())} offsets of A; {elapsed:.1f}s"
    )
