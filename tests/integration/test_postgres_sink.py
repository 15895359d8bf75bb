"""The PostgreSQL sink on a real server: exactly once by token id, rejected rows to
the DLQ with the database's error, a server restart mid-run, schema checks."""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from app.sinks.postgres import Column, PostgresWriter, SchemaMismatch
from tests.conftest import KafkaEnv
from tests.harness import assert_pg_exactly_once, popen, read_dlq, run, uid, write_pg_pipeline

pytestmark = pytest.mark.integration


def _count(dsn: str, table: str) -> int:
    import psycopg

    with psycopg.connect(dsn) as c:
        row = c.execute(f"SELECT count(*) FROM {table}").fetchone()
        return int(row[0]) if row else 0


def test_bad_rows_are_isolated_and_good_rows_land_once(kafka: KafkaEnv, postgres: Any, tmp_path: Path) -> None:
    rows = 10_000
    name = f"pgbad-{uid()}"
    steps = (
        '      - map: "tests.fns:spoil_some"\n      - project: {fields: [id, customer, country, amount, quantity]}\n'
    )
    pf = write_pg_pipeline(tmp_path, name, kafka, postgres.dsn, rows=rows, steps=steps)
    proc = run(pf.spec, "--worker-id", "w1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    bad = {i for i in range(rows) if i % 500 == 7}
    assert_pg_exactly_once(kafka, pf, postgres.dsn, {f"gen:{i}" for i in range(rows) if i not in bad})
    dlq = read_dlq(kafka, f"{name}.dlq")
    assert len(dlq) == len(bad) and {d["error_class"] for d in dlq} == {"db_rejected"}
    msgs = Counter(
        "syntax"
        if "invalid input syntax" in str(d["error_message"])
        else "length"
        if "too long" in str(d["error_message"])
        else "check"
        if "check constraint" in str(d["error_message"])
        else str(d["error_message"])
        for d in dlq
    )
    assert msgs == {"syntax": 7, "length": 7, "check": 6}, msgs
    assert {int(d["origin"]["offset"]) >= 0 for d in dlq} == {True}


def test_server_restart_mid_run(kafka: KafkaEnv, postgres: Any, tmp_path: Path) -> None:
    rows = 20_000
    pf = write_pg_pipeline(tmp_path, f"pgrestart-{uid()}", kafka, postgres.dsn, rows=rows, rate=2500)
    proc = popen(pf.spec, "--worker-id", "w1", "--exit-when-done", log=tmp_path / "run.log")
    deadline = time.monotonic() + 120
    while _count(postgres.dsn, str(pf.out)) < 3000 and time.monotonic() < deadline:
        time.sleep(0.3)
    postgres.restart_after(3)
    assert proc.wait(300) == 0, (tmp_path / "run.log").read_text()[-3000:]
    assert "retry" in (tmp_path / "run.log").read_text()
    assert_pg_exactly_once(kafka, pf, postgres.dsn, {f"gen:{i}" for i in range(rows)})


def test_schema_mismatch_names_table_column_and_type(postgres: Any) -> None:
    import psycopg

    with psycopg.connect(postgres.dsn, autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS mism (token_id text PRIMARY KEY, amount text)")
    w = PostgresWriter(
        "s",
        postgres.dsn,
        "mism",
        [Column("token_id", "text", "_token_id"), Column("amount", "bigint", "amount")],
        ["token_id"],
    )
    with pytest.raises(SchemaMismatch, match="table 'mism' column 'amount' is text, spec says bigint"):
        w.ensure_schema()
    w2 = PostgresWriter(
        "s",
        postgres.dsn,
        "mism",
        [Column("token_id", "text", "_token_id"), Column("gone", "int", "x")],
        ["token_id"],
    )
    with pytest.raises(SchemaMismatch, match="has no column 'gone'"):
        w2.ensure_schema()
    created = PostgresWriter(
        "s",
        postgres.dsn,
        "made_here",
        [Column("token_id", "text", "_token_id"), Column("n", "bigint", "n")],
        ["token_id"],
        create_table=True,
    )
    created.ensure_schema()
    created.ensure_schema()  # idempotent


@pytest.mark.parametrize("use_copy", [True, False])
def test_redelivered_token_ids_upsert_instead_of_duplicating(postgres: Any, use_copy: bool) -> None:
    from app.sources.generator import GeneratorSource

    table = f"redeliver_{int(use_copy)}"
    cols = [Column("token_id", "text", "_token_id"), Column("amount", "bigint", "amount")]
    w = PostgresWriter(table, postgres.dsn, table, cols, ["token_id"], create_table=True, use_copy=use_copy)
    w.ensure_schema()
    toks = GeneratorSource("g", rows=100, seed=2).poll(100).tokens
    assert w.write_part("in", 0, None, 100, toks, list(range(100))).rejects == []
    # the same token ids again at later offsets (an at-least-once upstream re-sent them)
    again = w.write_part("in", 0, 100, 250, toks[:50], list(range(200, 250)))
    assert again.rejects == [] and again.written == 50
    assert _count(postgres.dsn, table) == 100
    assert w.stored_offsets("in", [0]) == {0: 250}


@pytest.mark.parametrize("use_copy", [True, False])
def test_columns_map_token_fields_and_payload_values_in_spec_order(postgres: Any, use_copy: bool) -> None:
    """Token fields may sit anywhere among the columns; objects and arrays land as JSON
    (in ``jsonb`` and in ``text`` columns), a missing field as NULL, on both write paths."""
    import psycopg

    table = f"mapping_{int(use_copy)}"
    cols = [
        Column("amount", "bigint", "amount"),
        Column("token_id", "text", "_token_id"),
        Column("doc", "jsonb", "doc"),
        Column("tags", "text", "tags"),
        Column("k", "text", "_key"),
        Column("absent", "text", "absent"),
        Column("at", "bigint", "_event_time_ms"),
    ]
    w = PostgresWriter(table, postgres.dsn, table, cols, ["token_id"], create_table=True, use_copy=use_copy)
    w.ensure_schema()
    toks: list[Any] = [
        {
            "token_id": f"t{i}",
            "key": f"key{i}",
            "event_time_ms": 1_700_000_000_000 + i,
            "payload": {"amount": i * 10, "doc": {"n": i, "xs": [1, "two"]}, "tags": ["a", f"b{i}"]},
        }
        for i in range(3)
    ]
    assert w.write_part("in", 0, None, 3, toks, [0, 1, 2]).rejects == []
    w.close()
    with psycopg.connect(postgres.dsn) as c:
        got = c.execute(f"SELECT amount, token_id, doc, tags, k, absent, at FROM {table} ORDER BY token_id").fetchall()
    assert got == [
        (i * 10, f"t{i}", {"n": i, "xs": [1, "two"]}, f'["a","b{i}"]', f"key{i}", None, 1_700_000_000_000 + i)
        for i in range(3)
    ]


def test_logs_are_json_with_correlation_ids_and_never_show_the_password(
    kafka: KafkaEnv, postgres: Any, tmp_path: Path
) -> None:
    import json as _json
    import os
    import subprocess
    import sys

    name = f"pgsecret-{uid()}"
    secret = "s3cret-Pa55word"
    dsn = postgres.dsn.replace("ledgerflow@", f"ledgerflow:{secret}@")  # trust auth accepts any password
    pf = write_pg_pipeline(tmp_path, name, kafka, dsn, rows=500)
    env = {**os.environ, "LEDGERFLOW_LOG_FORMAT": "json", "LEDGERFLOW_LOG_LEVEL": "DEBUG"}
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli.main", "run", str(pf.spec), "--exit-when-done", "--worker-id", "w9"],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert secret not in proc.stderr and secret not in proc.stdout
    lines = [_json.loads(x) for x in proc.stderr.splitlines() if x.startswith("{")]
    sink_lines_ = [x for x in lines if x.get("stage") == "sink"]
    assert sink_lines_ and all(x["pipeline"] == name and x["worker_id"] == "w9" and x["run_id"] for x in sink_lines_)
    assert _count(postgres.dsn, str(pf.out)) == 500


SPOIL = '      - map: "tests.fns:spoil_some"\n      - project: {fields: [id, customer, country, amount, quantity]}\n'


def test_rows_out_counts_what_the_database_committed(kafka: KafkaEnv, postgres: Any, tmp_path: Path) -> None:
    """I4 for the transactional sink: ``ledgerflow_rows_out_total`` moves by the rows the
    database committed, and the rows it refused are counted as DLQ rows, not as written."""
    from app.cli.run_cmd import run_spec
    from app.config.pipeline import load_pipeline
    from app.observability.prometheus import PrometheusHooks

    rows = 5_000
    name = f"pgmet-{uid()}"
    pf = write_pg_pipeline(tmp_path, name, kafka, postgres.dsn, rows=rows, steps=SPOIL)
    spec = load_pipeline(pf.spec)
    hooks = PrometheusHooks(spec.pipeline)
    code = run_spec(spec, stage="all", worker_id="m1", exit_when_done=True, metrics_port=None, hooks=hooks)
    assert code == 0
    bad = {i for i in range(rows) if i % 500 == 7}
    lab = {"pipeline": spec.pipeline, "stage": "sink", "name": "db"}
    assert hooks.registry.get_sample_value("ledgerflow_rows_out_total", lab) == rows - len(bad)
    assert hooks.registry.get_sample_value("ledgerflow_rows_in_total", lab) == rows
    assert hooks.registry.get_sample_value("ledgerflow_dlq_rows_total", {**lab, "reason": "db_rejected"}) == len(bad)
    assert _count(postgres.dsn, pf.out) == rows - len(bad)


def test_lost_commit_acknowledgement_still_dead_letters_the_rejects(
    kafka: KafkaEnv, postgres: Any, tmp_path: Path
) -> None:
    """The connection drops after the database committed a part but before the client
    read the acknowledgement. The sink reads the outcome back (the offsets row moved) and
    the rejects that commit recorded, so they reach the DLQ in the Kafka transaction that
    records the part; nothing is written twice."""
    rows = 6_000
    name = f"pgack-{uid()}"
    pf = write_pg_pipeline(tmp_path, name, kafka, postgres.dsn, rows=rows, steps=SPOIL, partitions=1, part_rows=6_000)
    proc = run(pf.spec, "--worker-id", "w1", env_extra={"LEDGERFLOW_FAULT_AT": "sink.db_commit_ack_lost:1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fault point sink.db_commit_ack_lost hit #1" in proc.stderr
    read_back = re.search(r"landed before the connection dropped \((\d+) reject\(s\) read back\)", proc.stderr)
    assert read_back is not None, proc.stderr[-3000:]
    assert int(read_back.group(1)) > 0  # the part whose acknowledgement was lost held rejected rows
    bad = {i for i in range(rows) if i % 500 == 7}
    assert_pg_exactly_once(kafka, pf, postgres.dsn, {f"gen:{i}" for i in range(rows) if i not in bad})
    dlq = read_dlq(kafka, f"{name}.dlq")
    assert len(dlq) == len(bad) and {d["error_class"] for d in dlq} == {"db_rejected"}


def test_sink_workers_starting_at_once_all_pass_the_schema_check(postgres: Any) -> None:
    """Several sink workers create the same tables on a fresh database at the same
    moment (a scaled-out deployment starting): every one of them passes."""
    import threading

    import psycopg

    db = f"race_{uid().replace('-', '_')}"
    with psycopg.connect(postgres.dsn, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {db}")
    dsn = postgres.dsn.rsplit("/", 1)[0] + f"/{db}"
    cols = [Column("token_id", "text", "_token_id"), Column("n", "bigint", "n")]
    writers = [PostgresWriter(f"s{i}", dsn, "made_at_once", cols, ["token_id"], create_table=True) for i in range(6)]
    for w in writers:
        w.conn()  # connected before the race, so the DDL itself is what overlaps
    gate = threading.Barrier(len(writers))
    errors: list[BaseException] = []

    def start(w: PostgresWriter) -> None:
        gate.wait()
        try:
            w.ensure_schema()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(w,)) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for w in writers:
        w.close()
    assert errors == []
    assert _count(dsn, "made_at_once") == 0 and _count(dsn, "ledgerflow_offsets") == 0
