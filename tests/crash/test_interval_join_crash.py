"""An interval join stays exactly-once across crashes: killed at each state crash point
(the 2nd time it is reached; the 4th with ``-m slow``), or by SIGKILL mid-run, then rerun to the end, the sink
equals the nested-loop reference over both topics (each pair once, same payloads), and
the group's committed offsets of both topics are at their ends."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from app.faults import CRASH_EXIT_CODE
from tests.conftest import KafkaEnv
from tests.harness import popen, uid, wait_for_rows
from tests.interval_join_harness import assert_joined, produce_sides, run_join, write_interval_join

pytestmark = [pytest.mark.integration, pytest.mark.crash]

ROWS = 3_000  # per side
POINTS = ["state.after_changelog_before_commit", "state.after_commit_before_local_write"]
HITS = [2, pytest.param(4, marks=pytest.mark.slow)]  # the nth time the point is reached


# stores kept with -m slow: a rerun with the local stores lost restores everything from the changelog
@pytest.mark.parametrize(
    "lose_stores", [pytest.param(False, marks=pytest.mark.slow), True], ids=["stores-kept", "stores-lost"]
)
@pytest.mark.parametrize("hit", HITS)
@pytest.mark.parametrize("point", POINTS)
def test_interval_join_rerun_after_crash(
    kafka: KafkaEnv, tmp_path: Path, point: str, hit: int, lose_stores: bool
) -> None:
    ij = write_interval_join(tmp_path, f"ijc-{point.split('.')[1][:10]}-{hit}-{uid()}", kafka, join_type="outer")
    produce_sides(kafka, ij, ROWS)
    crashed = run_join(ij.spec, "--worker-id", "w1", crash_at=f"{point}:{hit}")
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr[-3000:]
    assert f"crash point {point}" in crashed.stderr
    if lose_stores:  # the buffers and watermarks must come back from the changelog alone
        shutil.rmtree(ij.state_dir)
    finished = run_join(ij.spec, "--worker-id", "w1")
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert_joined(kafka, ij)


@pytest.mark.slow
def test_interval_join_rerun_after_sigkill(kafka: KafkaEnv, tmp_path: Path) -> None:
    ij = write_interval_join(tmp_path, f"ijk-{uid()}", kafka, join_type="left", max_rows=100)
    produce_sides(kafka, ij, ROWS)
    proc = popen(ij.spec, "--worker-id", "w1", "--exit-when-done", log=tmp_path / "killed.log")
    try:
        wait_for_rows(ij.out, 1, proc=proc)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    finished = run_join(ij.spec, "--worker-id", "w1")
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert_joined(kafka, ij)
