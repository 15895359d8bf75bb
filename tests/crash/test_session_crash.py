"""Session windows on the real broker: an uninterrupted run emits exactly the sessions
recomputed from the input (merges by bridging rows included; late rows in the DLQ),
and after a SIGKILL mid-run, or a crash at a state crash point, the rerun's sink is
byte-identical to the uninterrupted run's (sorted lines; parts may be cut differently)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from app.faults import CRASH_EXIT_CODE
from tests.conftest import KafkaEnv
from tests.harness import hanging_transactions, popen, read_dlq, run, sink_lines, uid, wait_for_rows
from tests.session_harness import expected_sessions, session_input, write_sessions
from tests.stateful_harness import StatefulPipeline, sink_rows

pytestmark = [pytest.mark.integration, pytest.mark.crash]

ROWS = 8_000
POINTS = [
    "state.after_commit_before_local_write",
    pytest.param("state.after_changelog_before_commit", marks=pytest.mark.slow),
]
HITS = [
    pytest.param(1, marks=pytest.mark.slow),
    pytest.param(3, marks=pytest.mark.slow),
]  # SIGKILL covers the default suite


def finished_lines(kafka: KafkaEnv, sp: StatefulPipeline) -> list[bytes]:
    """The sink's lines, sorted, after checking them against the recomputed sessions."""
    want = expected_sessions(session_input(kafka, sp.raw))
    ids = [r["_token_id"] for r in sink_rows(sp.out)]
    assert sorted(ids) == sorted(want.sessions), "sessions missing, extra or emitted twice"
    assert hanging_transactions(kafka, f"ledgerflow.{sp.name}.") == [], "a transaction was left open"
    return sorted(sink_lines(sp.out))


@pytest.fixture(scope="module")
def reference_run(kafka: KafkaEnv, tmp_path_factory: pytest.TempPathFactory) -> StatefulPipeline:
    sp = write_sessions(tmp_path_factory.mktemp("ses-ref"), f"sesref-{uid()}", kafka, rows=ROWS)
    proc = run(sp.spec, "--worker-id", "w1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sp


@pytest.fixture(scope="module")
def uninterrupted(kafka: KafkaEnv, reference_run: StatefulPipeline) -> list[bytes]:
    return finished_lines(kafka, reference_run)


def test_session_windows_emit_each_merged_session_once(kafka: KafkaEnv, reference_run: StatefulPipeline) -> None:
    sp = reference_run
    want = expected_sessions(session_input(kafka, sp.raw))
    assert want.merges > 0 and want.late > 0, "the input exercises no merges or no late rows"
    rows = sink_rows(sp.out)
    fields = ("key", "window_start", "window_end", "count", "sum", "min", "max")
    got = {r["_token_id"]: {k: r[k] for k in fields} for r in rows}
    assert len(got) == len(rows), "a session was emitted twice"
    assert set(got) == set(want.sessions), (set(want.sessions) ^ set(got)) or None
    wrong = [k for k in want.sessions if got[k] != want.sessions[k]]
    assert not wrong, f"{len(wrong)} sessions differ, e.g. {got[wrong[0]]} != {want.sessions[wrong[0]]}"
    dlq = read_dlq(kafka, f"{sp.name}.dlq")
    assert sum(1 for d in dlq if d["error_class"] == "late_row") == want.late


def test_rerun_after_sigkill_is_byte_identical(kafka: KafkaEnv, tmp_path: Path, uninterrupted: list[bytes]) -> None:
    # 8 s of input at 1,000 rows/s; killed at the first session in the sink, well before the last
    # (waiting for more let a loaded machine's sink catch up with every session before the kill)
    sp = write_sessions(tmp_path, f"ses-kill-{uid()}", kafka, rows=ROWS, rate=1000)
    log = tmp_path / "killed.log"
    proc = popen(sp.spec, "--worker-id", "w1", "--exit-when-done", log=log)
    try:
        wait_for_rows(sp.out, 1, proc=proc)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    assert len(sink_lines(sp.out)) < len(uninterrupted), "the kill came after the last session"
    spec = sp.spec.read_text().replace("    rate_per_s: 1000\n", "")  # the rerun need not wait
    sp.spec.write_text(spec)
    rerun = run(sp.spec, "--worker-id", "w1")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert finished_lines(kafka, sp) == uninterrupted


@pytest.mark.parametrize("hit", HITS)
@pytest.mark.parametrize("point", POINTS)
def test_session_crash_point(kafka: KafkaEnv, tmp_path: Path, uninterrupted: list[bytes], point: str, hit: int) -> None:
    sp = write_sessions(tmp_path, f"ses-{point.split('.')[1][:12]}-{hit}-{uid()}", kafka, rows=ROWS)
    crashed = run(sp.spec, "--worker-id", "w1", crash_at=f"{point}:{hit}")
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr[-3000:]
    assert f"crash point {point}" in crashed.stderr
    finished = run(sp.spec, "--worker-id", "w1")
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert finished_lines(kafka, sp) == uninterrupted
