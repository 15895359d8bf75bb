"""Exactly-once state: crashes at the stateful points, mid-restore, lost local state,
and a stateful partition moving between workers. Every case compares the sink with
results recomputed from the input (``tests.stateful_harness``)."""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from app.faults import CRASH_EXIT_CODE
from app.kafka.admin import Admin
from app.state.changelog import changelog_topic
from tests.conftest import KafkaEnv
from tests.harness import hanging_transactions, popen, read_dlq, run, stop, uid, wait_for_rows, wait_log
from tests.stateful_harness import (
    AGGREGATE,
    DEDUPE,
    StatefulPipeline,
    expected_dedupe,
    expected_windows,
    input_by_partition,
    sink_rows,
    write_stateful,
)

pytestmark = [pytest.mark.integration, pytest.mark.crash]

OPS = {"aggregate": AGGREGATE, "dedupe": DEDUPE}
POINTS = ["state.after_changelog_before_commit", "state.after_commit_before_local_write"]
HITS = [1, pytest.param(3, marks=pytest.mark.slow)]  # hit 1 by default; both with -m slow


def assert_results(kafka: KafkaEnv, sp: StatefulPipeline, op: str) -> int:
    """The sink holds exactly the recomputed results, each once; returns the row count."""
    parts = input_by_partition(kafka, sp.raw)
    rows = sink_rows(sp.out)
    ids = [r["_token_id"] for r in rows]
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} duplicate result rows"
    if op == "aggregate":
        expected, late = expected_windows(parts)
        got = {r["_token_id"]: {k: r[k] for k in ("count", "sum", "min", "max")} for r in rows}
        missing = set(expected) - set(got)
        extra = set(got) - set(expected)
        assert not missing and not extra, f"missing {sorted(missing)[:5]}, unexpected {sorted(extra)[:5]}"
        wrong = [k for k in expected if expected[k] != got[k]]
        assert not wrong, f"{len(wrong)} windows differ, e.g. {wrong[0]}: {got[wrong[0]]} != {expected[wrong[0]]}"
        dlq = read_dlq(kafka, f"{sp.name}.dlq")
        assert sum(1 for d in dlq if d["error_class"] == "late_row") == late
    else:
        assert set(ids) == expected_dedupe(parts), "dedupe did not pass each key exactly once"
    assert hanging_transactions(kafka, f"ledgerflow.{sp.name}.") == [], "a transaction was left open"
    return len(rows)


@pytest.fixture(scope="module")
def reference_counts(kafka: KafkaEnv, tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """Uninterrupted runs: their result counts are what crashed runs must also reach."""
    counts = {}
    for op, block in OPS.items():
        tmp = tmp_path_factory.mktemp(f"ref-{op}")
        sp = write_stateful(tmp, f"stref-{op}-{uid()}", kafka, block)
        proc = run(sp.spec, "--worker-id", "w1")
        assert proc.returncode == 0, proc.stderr[-3000:]
        counts[op] = assert_results(kafka, sp, op)
    return counts


@pytest.mark.parametrize("hit", HITS)
@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("op", list(OPS))
def test_stateful_crash_point(
    kafka: KafkaEnv, tmp_path: Path, reference_counts: dict[str, int], op: str, point: str, hit: int
) -> None:
    sp = write_stateful(tmp_path, f"st-{op}-{point.split('.')[1][:12]}-{hit}-{uid()}", kafka, OPS[op])
    crashed = run(sp.spec, "--worker-id", "w1", crash_at=f"{point}:{hit}")
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr[-3000:]
    assert f"crash point {point}" in crashed.stderr
    finished = run(sp.spec, "--worker-id", "w1")
    assert finished.returncode == 0, finished.stderr[-3000:]
    if point == "state.after_commit_before_local_write":
        assert "restored " in finished.stderr, "the store behind its changelog was not caught up"
    assert assert_results(kafka, sp, op) == reference_counts[op]


@pytest.mark.parametrize("op", list(OPS))
def test_crash_mid_restore(kafka: KafkaEnv, tmp_path: Path, reference_counts: dict[str, int], op: str) -> None:
    sp = write_stateful(tmp_path, f"st-{op}-midrestore-{uid()}", kafka, OPS[op], restore_chunk=100)
    first = run(sp.spec, "--worker-id", "w1", crash_at="state.after_commit_before_local_write:6")
    assert first.returncode == CRASH_EXIT_CODE, first.stderr[-3000:]
    shutil.rmtree(sp.state_dir)  # the rebuild must come from the changelog alone
    second = run(sp.spec, "--worker-id", "w1", crash_at="state.mid_restore:3")
    assert second.returncode == CRASH_EXIT_CODE, second.stderr[-3000:]
    assert "crash point state.mid_restore" in second.stderr
    finished = run(sp.spec, "--worker-id", "w1")
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "restored " in finished.stderr
    assert assert_results(kafka, sp, op) == reference_counts[op]


def test_local_state_deleted_between_runs(kafka: KafkaEnv, tmp_path: Path, reference_counts: dict[str, int]) -> None:
    op = "aggregate"
    sp = write_stateful(tmp_path, f"st-wipe-{uid()}", kafka, OPS[op], rows=10_000)
    assert run(sp.spec, "--worker-id", "w1").returncode == 0
    assert any(sp.state_dir.rglob("CURRENT")), "no local RocksDB store was written"
    shutil.rmtree(sp.state_dir)
    sp.spec.write_text(sp.spec.read_text().replace("rows: 10000", "rows: 20000"))  # the source continues
    # the rerun exposes /metrics: restore progress must show there, matching the log
    port, log = _free_port(), tmp_path / "second.log"
    second = popen(sp.spec, "--worker-id", "w1", "--exit-when-done", "--metrics-port", str(port), log=log)
    scrapes: list[dict[str, float]] = []
    deadline = time.monotonic() + 240
    while second.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            scrapes.append(_restore_metrics(port))
        time.sleep(0.2)
    assert second.wait(30) == 0, log.read_text()[-3000:]
    logged = [int(m) for m in re.findall(r"restored \S+: (\d+) records in", log.read_text())]
    assert logged and sum(logged) > 0, log.read_text()[-3000:]
    assert max(sc.get("restored", 0) for sc in scrapes) == sum(logged), scrapes[-3:]
    assert any(sc.get("partitions") == 3 and sc.get("remaining") == 0 for sc in scrapes), scrapes[-3:]
    assert assert_results(kafka, sp, op) == reference_counts[op]


def _free_port() -> int:
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return int(sk.getsockname()[1])


def _restore_metrics(port: int) -> dict[str, float]:
    """Restore metrics of one scrape: records restored, partitions with a remaining
    gauge, and the sum of what remains."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    out: dict[str, float] = {"restored": 0, "partitions": 0, "remaining": 0}
    for line in text.splitlines():
        if line.startswith("ledgerflow_state_restored_records_total{"):
            out["restored"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("ledgerflow_state_restore_remaining{"):
            out["partitions"] += 1
            out["remaining"] += float(line.rsplit(" ", 1)[1])
    return out


# an assignment's restore (INFO; a standby copy's catch-ups log at DEBUG): the records it applied
ACTIVE_RESTORE = re.compile(
    r" INFO ledgerflow\.state: (?:state store \S+ is up to date with|restored \S+\.changelog/\d+: (\d+) records)"
)


def _t2_takes_a_partition(
    sp: StatefulPipeline,
    tmp_path: Path,
    procs: dict[str, subprocess.Popen[bytes]],
    t1_env: dict[str, str] | None = None,
) -> dict[str, Path]:
    """Source, t1 and the sink run; once rows reach the sink t2 joins, takes a
    partition over from t1 and commits rows (and so changelog records) of its own.
    The processes go into ``procs`` (the caller stops them); returns their logs."""
    logs = {n: tmp_path / f"{n}.log" for n in ("src", "t1", "t2", "sink")}
    procs["src"] = popen(sp.spec, "--stage", "source", "--worker-id", "src", "--exit-when-done", log=logs["src"])
    procs["t1"] = popen(sp.spec, "--stage", "transform", "--worker-id", "t1", log=logs["t1"], env_extra=t1_env)
    procs["sink"] = popen(sp.spec, "--stage", "sink", "--worker-id", "sink", log=logs["sink"])
    wait_for_rows(sp.out, 1000, proc=procs["sink"])
    t2 = procs["t2"] = popen(sp.spec, "--stage", "transform", "--worker-id", "t2", log=logs["t2"])
    wait_log(logs["t2"], "transform agg: assigned [(", t2, timeout=90)
    deadline = time.monotonic() + 60
    while not re.search(r"transform/agg: [1-9]\d* rows committed", logs["t2"].read_text()):
        assert time.monotonic() < deadline and t2.poll() is None, logs["t2"].read_text()[-3000:]
        time.sleep(0.5)
    return logs


@pytest.mark.serial  # two workers racing on the session timeout
def test_stateful_partitions_move_between_workers(
    kafka: KafkaEnv, tmp_path: Path, reference_counts: dict[str, int]
) -> None:
    op = "aggregate"
    # 20,000 rows at 700/s (about 29 s of input): t2 joins while rows still arrive, commits
    # state of its own for the partition it takes over, and t1 must restore that when the
    # partition returns. At 1,250/s a loaded machine could finish the input before t2's
    # assignment, leaving t2 nothing to commit.
    sp = write_stateful(tmp_path, f"st-rebal-{uid()}", kafka, OPS[op], rate=700)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        logs = _t2_takes_a_partition(sp, tmp_path, procs)
        assert "restored " in logs["t2"].read_text()  # it took a partition over from t1's changelog
        stop(procs["t2"])  # the partition moves back to t1, whose local store is now behind
        assert procs["src"].wait(timeout=120) == 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(sink_rows(sp.out)) < reference_counts[op]:
            time.sleep(0.5)
        time.sleep(2)
    finally:
        stop(*procs.values())
    # t1 applied t2's changelog records when a partition came back (its store was behind);
    # only records t2 committed can put it behind, so this holds whenever the move happened
    t1_log = logs["t1"].read_text()
    applied = [int(n) for n in ACTIVE_RESTORE.findall(t1_log) if n]
    assert applied and max(applied) > 0, t1_log[-3000:]
    assert assert_results(kafka, sp, op) == reference_counts[op]


@pytest.mark.slow  # standbys are off by default; the default suite's budget keeps the move test above
@pytest.mark.serial  # two workers racing on the session timeout
def test_a_warm_standby_copy_leaves_nothing_to_restore_on_failback(
    kafka: KafkaEnv, tmp_path: Path, reference_counts: dict[str, int]
) -> None:
    """With ``standby_replicas: 1`` t1 keeps a warm copy of the partition t2 took over;
    when t2 stops after everything committed, t1 takes the partition back with its
    store already at the changelog's end (nothing applied), and the results are exact."""
    op = "aggregate"
    # 20,000 rows at 1,000/s: the source still runs once t2 has joined, so t2 commits state of its own
    sp = write_stateful(tmp_path, f"st-standby-{uid()}", kafka, OPS[op], rate=1000)
    sp.spec.write_text(sp.spec.read_text().replace("    stateful:\n", "    standby_replicas: 1\n    stateful:\n", 1))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        # t1 at debug level: its standby copy logs each catch-up with the offset it reached
        logs = _t2_takes_a_partition(sp, tmp_path, procs, t1_env={"LEDGERFLOW_LOG_LEVEL": "DEBUG"})
        t1 = procs["t1"]
        assert procs["src"].wait(timeout=120) == 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(sink_rows(sp.out)) < reference_counts[op]:
            time.sleep(0.5)
        # everything is committed: wait for t1's copy of t2's partition to reach the changelog's end
        assigned = re.search(r"transform agg: assigned (\[.*\])", logs["t2"].read_text())
        assert assigned is not None
        moved = [int(p) for p in re.findall(r", (\d+)\)", assigned.group(1))]
        changelog = changelog_topic(sp.name, "agg")
        ends = Admin(kafka.bootstrap).end_offsets([(changelog, p) for p in moved])
        deadline = time.monotonic() + 60
        for (_t, p), end in ends.items():
            caught_up = re.compile(rf"{re.escape(changelog)}/{p}\b.*offset {end}\b")
            while not caught_up.search(logs["t1"].read_text()):
                assert time.monotonic() < deadline and t1.poll() is None, f"t1's copy of {p} never reached {end}"
                time.sleep(0.3)
        before = len(logs["t1"].read_text())
        stop(procs["t2"])  # the partition comes back to t1
        deadline = time.monotonic() + 90  # t1's assignment of it restores (or finds it up to date)
        while not ACTIVE_RESTORE.search(logs["t1"].read_text()[before:]):
            assert time.monotonic() < deadline and t1.poll() is None, logs["t1"].read_text()[-3000:]
            time.sleep(0.3)
    finally:
        stop(*procs.values())
    t1_log = logs["t1"].read_text()
    assert re.search(r"standby copy of \S+\.changelog/\d+ is warm", t1_log), t1_log[-3000:]
    after = t1_log[before:]
    restores = ACTIVE_RESTORE.findall(after)
    assert restores and all(n in ("", "0") for n in restores), after[-3000:]  # up to date, or 0 applied
    assert assert_results(kafka, sp, op) == reference_counts[op]
