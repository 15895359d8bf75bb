"""The crash matrix: kill the process at every named crash point, restart, finish.

Each case runs source → transform → file sink (10,000 rows, 3 partitions) in one
process with ``LEDGERFLOW_CRASH_AT=<point>:<hit>``, asserts the process really
died there (exit 86, no cleanup), reruns without the fault to completion and then
checks: every row exactly once by token id, sink rows byte-identical to a run
without any crash, no staging leftovers, every committed part finalized, group
offsets at the end, no hanging transactions.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from app.faults import CRASH_EXIT_CODE
from tests.conftest import KafkaEnv
from tests.harness import assert_exactly_once, hanging_transactions, run, uid, write_pipeline

pytestmark = [pytest.mark.integration, pytest.mark.crash]

ROWS = 10_000
POINTS = [
    "source.after_produce",
    "source.before_commit",
    "source.after_commit",
    "transform.after_produce",
    "transform.before_commit",
    "transform.after_commit",
    "journal.after_write",
    "sink.after_prepare",
    "sink.after_produce",
    "sink.before_commit",
    "sink.after_commit",
    "sink.after_commit_before_finalize",
    "sink.after_finalize",
]
HITS = [1, pytest.param(3, marks=pytest.mark.slow)]  # hit 1 of every point by default; both with -m slow


def _expected_ids() -> set[str]:
    return {f"gen:{i}" for i in range(ROWS)}


@pytest.fixture(scope="module")
def reference_rows(kafka: KafkaEnv, tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """Sink rows of an uninterrupted run: what every crashed run must converge to."""
    tmp = tmp_path_factory.mktemp("reference")
    pf = write_pipeline(tmp, f"crashref-{uid()}", kafka, rows=ROWS, part_rows=500)
    proc = run(pf.spec, "--worker-id", "w1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sorted(assert_exactly_once(kafka, pf, _expected_ids()))


@pytest.mark.parametrize("hit", HITS)
@pytest.mark.parametrize("point", POINTS)
def test_crash_point(kafka: KafkaEnv, tmp_path: Path, reference_rows: list[bytes], point: str, hit: int) -> None:
    name = f"crash-{point.replace('.', '-').replace('_', '-')}-{hit}-{uid()}"
    pf = write_pipeline(tmp_path, name, kafka, rows=ROWS, part_rows=500)
    crashed = run(pf.spec, "--worker-id", "w1", crash_at=f"{point}:{hit}")
    assert crashed.returncode == CRASH_EXIT_CODE, (
        f"expected the crash at {point}#{hit}, got exit {crashed.returncode}\n{crashed.stderr[-3000:]}"
    )
    assert f"crash point {point} hit #{hit}" in crashed.stderr
    finished = run(pf.spec, "--worker-id", "w1")
    assert finished.returncode == 0, finished.stderr[-3000:]

    rows = assert_exactly_once(kafka, pf, _expected_ids())
    assert sorted(rows) == reference_rows, "sink rows differ from the uninterrupted run"
    assert hanging_transactions(kafka, f"ledgerflow.{name}.") == []
