"""A changelog that has lost records (delete-records, as retention would) is refused with
a clear error when a store must be rebuilt from it: never silently wrong state."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from app.kafka.admin import Admin
from tests.conftest import KafkaEnv
from tests.harness import run, uid
from tests.stateful_harness import sink_rows, write_stateful

pytestmark = [pytest.mark.integration, pytest.mark.crash]

RUNNING = "      aggregate: {value_field: amount, functions: [count]}\n"


def test_a_store_rebuilt_from_a_changelog_with_deleted_records_is_refused(kafka: KafkaEnv, tmp_path: Path) -> None:
    sp = write_stateful(tmp_path, f"st-gap-{uid()}", kafka, RUNNING, rows=3_000)
    first = run(sp.spec, "--worker-id", "w1")
    assert first.returncode == 0, first.stderr[-3000:]
    changelog = f"{sp.name}.state.agg.changelog"
    # a compacted topic refuses delete-records: as after someone added the delete policy
    Admin(kafka.bootstrap).alter_config(changelog, "cleanup.policy", "compact,delete")
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    for fut in admin.delete_records([TopicPartition(changelog, 1, 5)]).values():
        assert fut.result().low_watermark == 5
    shutil.rmtree(sp.state_dir)  # the stores must come back from the changelog
    rows_before = len(sink_rows(sp.out))
    sp.spec.write_text(sp.spec.read_text().replace("rows: 3000", "rows: 3500"))
    second = run(sp.spec, "--worker-id", "w1", timeout=120)
    assert second.returncode != 0, "the transform ran on state rebuilt from a changelog with a gap"
    assert (
        f"changelog {changelog}/1 starts at offset 5, but the store needs its records from offset 0: "
        "records were deleted"
    ) in second.stderr, second.stderr[-3000:]
    assert len(sink_rows(sp.out)) == rows_before, "rows were emitted from incomplete state"
