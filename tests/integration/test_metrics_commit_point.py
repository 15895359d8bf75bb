"""I4: row counters move only after the commit point (real broker, real registry)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from app.journal.writer import Correlation
from app.kafka.admin import Admin
from app.kafka.clients import BatchConsumer, TxnProducer
from app.observability.prometheus import PrometheusHooks
from app.runtime.batch import ProducerLost
from app.runtime.commit import CommitSeam
from app.sinks.base import Chunk
from app.sinks.files import FileSink
from app.sources.generator import GeneratorSource
from app.tokens import Token
from tests.conftest import KafkaEnv

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class _Part:
    """One input partition's range as a sink runner hands it to the seam."""

    topic: str
    partition: int
    first_offset: int
    tokens: list[Token]

    @property
    def last_offset(self) -> int:
        return self.first_offset + len(self.tokens) - 1

    @property
    def records_in(self) -> int:
        return len(self.tokens)

    def chunks(self) -> Iterator[Chunk]:
        offsets = list(range(self.first_offset, self.last_offset + 1))
        yield Chunk(self.tokens, offsets, [100] * len(offsets))

    def undecodable(self) -> list[tuple[str, bytes]]:
        return []

    def dead_letter(self, offset: int, reason: str, message: str) -> bytes:
        raise AssertionError(f"no row of this part is refused ({offset}: {message})")


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
    src = unique("in")
    admin.create_topic(src, 1, 1, {})
    consumer = BatchConsumer(kafka.bootstrap, unique("group"))  # offsets go with the part (I2)
    hooks = PrometheusHooks("p")
    sink = FileSink("files", tmp_path, "ndjson")
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
            sink=sink,
            consumer=consumer,
            hooks=hooks,
        )

    tokens = GeneratorSource("g", rows=100, seed=1).poll(100).tokens
    final = Path(sink.final_path(src, 0, 0, 99))
    zombie = seam()
    zombie.init()
    successor = seam()
    successor.init()  # fences the first producer
    with pytest.raises(ProducerLost, match="fenced"):
        zombie.commit_parts([_Part(src, 0, 0, tokens)])  # prepared (staged + fsynced), then fenced
    assert _value(hooks, "ledgerflow_rows_out_total") == 0
    assert _value(hooks, "ledgerflow_rows_in_total") == 0
    assert not final.exists()  # a fenced worker never makes a part visible (I5)
    assert len(sink.leftover_staging(src, 0)) == 1  # outcome unknown to the zombie: recovery decides

    successor.commit_parts([_Part(src, 0, 0, tokens)])
    assert _value(hooks, "ledgerflow_rows_out_total") == 100
    assert final.exists()
    assert consumer.committed([(src, 0)]) == {(src, 0): 100}
    consumer.close()
