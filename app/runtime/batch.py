"""What the seam takes and gives: batches, parts, the commit report, its exceptions.

Plain values, no behaviour: ``app.runtime.commit`` (the seam) orders the steps;
runners build ``Batch``es and ``SinkInput`` parts; hooks and metrics see only the
``CommitReport`` the seam builds after a commit point.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from app.journal.events import JournalEvent
from app.kafka.clients import Headers
from app.sinks.base import PartRows

Offsets = list[tuple[str, int, int]]  # (topic, partition, next offset)


class BatchAborted(Exception):
    """The Kafka transaction was aborted; nothing of it is visible. Rewind and go on.

    ``external_committed`` says a transactional sink had already committed (some of)
    the batch itself: its stored offsets are ahead of Kafka and recovery reconciles."""

    def __init__(self, message: str, external_committed: bool = False) -> None:
        super().__init__(message)
        self.external_committed = external_committed


class ProducerLost(Exception):
    """The transactional producer is unusable (fenced, timed out, fatal). Nothing was
    discarded: whether the last transaction committed is for recovery to find out."""

    def __init__(self, message: str, reason: str, operation: str) -> None:
        super().__init__(message)
        self.reason = reason  # fenced | timed_out | fatal
        self.operation = operation


class WorkerFenced(Exception):
    """Another live instance owns this work now: the worker must stop (I5)."""


@dataclass(frozen=True, slots=True)
class CommitReport:
    """What one committed transaction did; the only thing hooks and metrics see."""

    stage: str
    name: str
    rows_in: int
    rows_out: int
    dlq: Mapping[str, int]  # reason class -> rows
    parts: int
    offsets: tuple[tuple[str, int, int], ...]
    checkpoints: int
    filtered: Mapping[str, int]  # transform step -> rows it dropped
    seconds: float


@dataclass(slots=True)
class TopicRecords:
    """Records for one output topic, already encoded (column form: cheap to build).

    ``partition`` -1 lets the partitioner choose by key; ``on_last`` receives the
    offset of the last record once delivered (changelogs track their offsets so)."""

    topic: str
    values: Sequence[bytes | None]
    keys: Sequence[bytes | None]
    headers: Headers | None = None
    partition: int = -1
    on_last: Callable[[int], None] | None = None


@dataclass(slots=True)
class Batch:
    """What a source or transform hands the seam: everything one transaction commits."""

    outputs: list[TopicRecords] = field(default_factory=list)
    dlq: list[bytes] = field(default_factory=list)
    dlq_reasons: dict[str, int] = field(default_factory=dict)  # reason class -> rows
    journal: list[JournalEvent] = field(default_factory=list)
    offsets: Offsets = field(default_factory=list)
    changelog: list[TopicRecords] = field(default_factory=list)
    after_commit: Callable[[], None] | None = None  # stateful: apply committed changes locally
    rows_in: int = 0
    filtered: dict[str, int] = field(default_factory=dict)


class SinkInput(PartRows, Protocol):
    """A part as a sink runner hands it over: ``app.sinks.base.PartRows`` plus what the
    seam needs to dead-letter rows (the sink itself never sees input records)."""

    @property
    def records_in(self) -> int: ...
    def undecodable(self) -> list[tuple[str, bytes]]: ...
    def dead_letter(self, offset: int, reason: str, message: str) -> bytes: ...
