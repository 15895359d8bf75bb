"""A lookup join stays exactly-once across a crash: killed at a state crash point, with
its local stores then deleted (the table is rebuilt from the table topic, its only
changelog), the rerun's sink equals the versioned lookup at each row's event time."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from app.faults import CRASH_EXIT_CODE
from tests.conftest import KafkaEnv
from tests.harness import read_dlq, run, uid
from tests.join_harness import BAD_TABLE_RECORDS, assert_joined, produce_table, write_join

pytestmark = [pytest.mark.integration, pytest.mark.crash]

# the join writes no changelog records of its own, so state.after_changelog_before_commit
# is never reached; transform.after_produce is its batch with outputs in the open transaction
POINTS = [
    "state.after_commit_before_local_write",
    pytest.param("transform.after_produce", marks=pytest.mark.slow),
]
HITS = [2, pytest.param(4, marks=pytest.mark.slow)]


@pytest.mark.parametrize("hit", HITS)
@pytest.mark.parametrize("point", POINTS)
def test_join_rerun_after_crash_and_lost_stores(kafka: KafkaEnv, tmp_path: Path, point: str, hit: int) -> None:
    jp = write_join(tmp_path, f"join-{point.split('.')[1][:12]}-{hit}-{uid()}", kafka)
    produce_table(kafka, jp.table, 3)
    crashed = run(jp.spec, "--worker-id", "w1", crash_at=f"{point}:{hit}")
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr[-3000:]
    assert f"crash point {point}" in crashed.stderr
    shutil.rmtree(jp.state_dir)  # the table must come back from the topic alone
    finished = run(jp.spec, "--worker-id", "w1")
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert f"restored {jp.table}/0: " in finished.stderr, "the table store was not rebuilt from its topic"
    assert_joined(kafka, jp, "left")
    # a rebuilt store re-reports its refused table records: each is in the DLQ, none is lost
    refused = {
        (d["origin"]["partition"], d["origin"]["offset"]): d["error_class"]
        for d in read_dlq(kafka, f"{jp.name}.dlq")
        if d["origin"]["topic"] == jp.table
    }
    assert sorted(refused.values()) == sorted(r for r, n in BAD_TABLE_RECORDS.items() for _ in range(n))
