"""I4: row counters move only after the commit point (real broker, real registry)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from app.journal.writer import Correlation
from app.kafka.admin import Admin
from app.kafka.clients import TxnProducer
from app.observability.prometheus import PrometheusHooks
from app.runtime.commit import Batch, CommitSeam, WorkerFenced
from app.sinks.files import FilePartWriter
from app.sources.generator import GeneratorSource
from tests.conftest import KafkaEnv

pytestmark = pytest.mark.integration


def _value(hooks: PrometheusHooks, metric: str) -> float:
    for line in generate_latest(hooks.registry).decode().splitlines():
        if line.startswith(metric + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_counters_do_not_move_when_the_commit_fails(
    kafka: KafkaEnv, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    journal, dlq = unique("journal"), unique("dlq")
    admin = Admin(kafka.bootstrap)
    admin.create_topic(journal, 1, 1, {"cleanup.policy": "compact"})
    admin.create_topic(dlq, 1, 1, {})
    hooks = PrometheusHooks("p")
    writer = FilePartWriter("files", tmp_path, "ndjson")
    txn_id = unique("sink")
    corr = Correlation("p", "sink", "w1", "r1")

    def seam() -> CommitSeam:
        return CommitSeam(
            stage="sink",
            name="files",
            producer=TxnProducer(kafka.bootstrap, txn_id),
            corr=corr,
            journal_topic=journal,
            dlq_topic=dlq,
            writer=writer,
            hooks=hooks,
        )

    tokens = GeneratorSource("g", rows=100, seed=1).poll(100).tokens
    zombie = seam()
    zombie.init()
    part = writer.prepare("in", 0, 0, 99, tokens)  # the sink acknowledged: staged + fsynced
    successor = seam()
    successor.init()  # fences the first producer
    with pytest.raises(WorkerFenced, match="fenced"):
        zombie.commit(Batch(parts=[part], rows_in=100))
    assert _value(hooks, "ledgerflow_rows_out_total") == 0
    assert _value(hooks, "ledgerflow_rows_in_total") == 0
    assert not Path(part.final_path).exists()  # a fenced worker never makes a part visible (I5)

    part2 = writer.prepare("in", 0, 0, 99, tokens)
    successor.commit(Batch(parts=[part2], rows_in=100))
    assert _value(hooks, "ledgerflow_rows_out_total") == 100
    assert Path(part2.final_path).exists()
