"""An abortable transaction failure on the real broker: the batch is aborted (nothing
of it visible), the transform rewinds to the committed offsets and redoes it, and
every row still lands exactly once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import KafkaEnv
from tests.harness import assert_exactly_once, hanging_transactions, run, uid, write_pipeline

pytestmark = pytest.mark.integration


def test_record_refused_by_the_broker_aborts_the_batch_and_it_is_redone(kafka: KafkaEnv, tmp_path: Path) -> None:
    name = f"abort-{uid()}"
    pf = write_pipeline(tmp_path, name, kafka, rows=10_000, steps='      - map: "tests.fns:oversize_once"\n')
    topics = tmp_path / "topics.yaml"
    clean = f"  - name: {pf.clean}\n    partitions: 3\n"
    assert clean in topics.read_text()
    topics.write_text(topics.read_text().replace(clean, clean + "    configs: {max.message.bytes: 600000}\n"))
    marker = tmp_path / "oversized"

    res = run(pf.spec, env_extra={"LF_TEST_MARKER": str(marker)})

    assert res.returncode == 0, res.stderr[-3000:]
    assert marker.exists(), "the oversized row was never produced"
    assert "transform shape: aborting transaction" in res.stderr, res.stderr[-3000:]
    lines = assert_exactly_once(kafka, pf, {f"gen:{i}" for i in range(10_000)})
    assert len(lines) == 10_000 and not any(b'"blob"' in line for line in lines)
    assert hanging_transactions(kafka, f"ledgerflow.{name}.") == []
