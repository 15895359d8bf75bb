"""Stream-stream interval joins on the real broker: two co-partitioned JSON topics
(several partitions, rows out of order within the grace, late rows, rows without a key
or a time) joined inner, left and outer into the file sink. The sink's rows by id and
payload equal a nested loop over the topics' contents (``tests/interval_join_harness``);
bad and late rows reach the DLQ with their reasons; the group commits the right topic's
offsets too; a right topic that is not co-partitioned is refused at start."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import KafkaEnv
from tests.harness import LEDGERFLOW, REPO, read_dlq, uid
from tests.interval_join_harness import assert_joined, produce_sides, run_join, write_interval_join

pytestmark = pytest.mark.integration

ROWS = 3_000  # per side


# inner and left with -m slow: outer emits every pair and both sides' unmatched rows, and the
# crash tests run outer too
@pytest.mark.parametrize(
    "join_type", [pytest.param("inner", marks=pytest.mark.slow), pytest.param("left", marks=pytest.mark.slow), "outer"]
)
def test_interval_join_emits_each_pair_once(kafka: KafkaEnv, tmp_path: Path, join_type: str) -> None:
    ij = write_interval_join(tmp_path, f"ij-{join_type}-{uid()}", kafka, join_type=join_type)
    produce_sides(kafka, ij, ROWS)
    proc = run_join(ij.spec, "--worker-id", "w1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    want = assert_joined(kafka, ij)
    assert want.pairs > 500, "the input makes too few pairs"
    assert join_type == "inner" or want.unmatched > 100, "the input leaves too few rows unmatched"
    reasons = [str(d["error_class"]) for d in read_dlq(kafka, f"{ij.name}.dlq")]
    assert {r: reasons.count(r) for r in set(reasons)} == want.dlq
    assert set(want.dlq) == {"no_key", "no_event_time", "join_late"}
    # a second run finds everything committed (both sides) and adds nothing
    again = run_join(ij.spec, "--worker-id", "w1")
    assert again.returncode == 0, again.stderr[-3000:]
    assert_joined(kafka, ij)
    if join_type == "inner":  # operators see the right topic's lag under the transform's group
        view = subprocess.run(
            [*LEDGERFLOW, "inspect", str(ij.spec)], capture_output=True, text=True, timeout=180, cwd=REPO, check=False
        )
        assert view.returncode == 0, view.stderr[-2000:]
        assert f"transform ij (interval_join right) (group ledgerflow.{ij.name}.transform.ij, input {ij.right})" in (
            view.stdout
        )
        assert view.stdout.count("total lag 0") >= 3, view.stdout  # input, right, sink


def test_a_right_topic_that_is_not_co_partitioned_is_refused(kafka: KafkaEnv, tmp_path: Path) -> None:
    ij = write_interval_join(tmp_path, f"ij-copart-{uid()}", kafka, right_partitions=2)
    proc = run_join(ij.spec, "--worker-id", "w1")
    assert proc.returncode != 0
    assert (
        f"transform ij: interval_join right topic {ij.right} has 2 partitions but the input topic {ij.left} has 3"
        in proc.stderr
    ), proc.stderr[-2000:]
