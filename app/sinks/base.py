"""The one sink protocol (DESIGN §5): every sink fills in the same steps, and only the
commit seam (``app.runtime.commit``) calls them, always in this order:

1. ``prepare(part)`` turns one input partition's offset range into a ``Prepared``
   part. A two-phase sink (files) stages it durably but invisibly: that is its
   acknowledgement. Rows the sink cannot write are *not* exceptions: they come back
   as ``Reject`` values and the seam sends them to the DLQ in the transaction that
   skips them (I7).
2. ``commit_external(prepared)`` is the commit point of a transactional sink
   (PostgreSQL: one DB transaction with the compare-and-set of its stored offset);
   a two-phase sink has nothing to do here. Rows the external system refused come
   back as ``Reject`` values too; ``SinkFenced`` means another owner moved the
   partition (I5).
3. The seam commits ``part_committed`` + the consumer offsets in one Kafka
   transaction (the commit point of a two-phase sink).
4. ``finalize(info)`` makes a committed part visible (idempotent, I3), or
   ``discard(prepared)`` drops a part whose transaction never commits.

``recover(...)`` runs on every assignment before any row of the partitions is read;
it returns a ``RecoveryPlan`` (values, never side effects on Kafka) that the seam
carries out in its fixed order. Sinks never see the Kafka transaction or a Kafka
message object, only tokens with their offsets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.journal.events import JournalEvent, PartInfo
from app.journal.view import pending_parts
from app.tokens import Token

TP = tuple[str, int]

UNWRITABLE = "unwritable_row"  # DLQ reason: the sink's writer cannot place the row
DB_REJECTED = "db_rejected"  # DLQ reason: the database refused the row


class PartMissingError(RuntimeError):
    """A committed part has neither its staging nor its final data: data loss, never ignored."""


class PartConflictError(RuntimeError):
    """A part's data exists with content other than the committed checksum; nothing is overwritten."""


class SinkUnavailable(RuntimeError):
    """The sink's store cannot be used (unreachable, missing bucket or table, access
    denied): the stage stops with this error, which names the sink and the store.
    Nothing of the batch was committed, so no row is lost."""


class SinkFenced(RuntimeError):
    """Another owner advanced the partition in the sink itself (a refused compare-and-set):
    nothing of the part was written, and this worker must re-read the sink's state."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """Consecutive decoded rows of a part with their input offsets and encoded sizes."""

    tokens: Sequence[Token]
    offsets: Sequence[int]
    sizes: Sequence[int]


class PartRows(Protocol):
    """One input partition's offset range ``first_offset..last_offset`` (inclusive), as
    the seam hands it to ``prepare``. ``chunks`` decodes lazily (one chunk of rows alive
    at a time); records that cannot be decoded never reach the sink."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def first_offset(self) -> int: ...
    @property
    def last_offset(self) -> int: ...
    def chunks(self) -> Iterator[Chunk]: ...


@dataclass(frozen=True, slots=True)
class Reject:
    """A row the sink will not write: it goes to the DLQ with ``reason`` and ``message``
    (which names the field where there is one); its offset is still committed."""

    offset: int
    reason: str
    message: str


@dataclass(slots=True)
class Prepared:
    """A prepared part: ``info`` is what ``part_committed`` records (rows = rows written),
    ``rejects`` the rows left out, ``state`` the sink's own handle for the next steps."""

    info: PartInfo
    rejects: list[Reject] = field(default_factory=list)
    state: Any = None
    repeated: int = 0  # rows whose token id already was in the part (an upstream redelivery): written once


@dataclass(frozen=True, slots=True)
class Outcome:
    """What ``commit_external`` committed: the part's final info and the rows refused."""

    info: PartInfo
    rejects: Sequence[Reject] = ()


@dataclass(frozen=True, slots=True)
class Reconcile:
    """The sink committed ``[start, end)`` of a partition but Kafka's group offset is at
    ``start``: record it in Kafka (offsets, DLQ for ``rejects``: offset -> message)."""

    topic: str
    partition: int
    start: int
    end: int
    rejects: Mapping[int, str]
    reason: str = DB_REJECTED  # the DLQ reason of the rejects


@dataclass(slots=True)
class RecoveryPlan:
    """What recovery must do, in the seam's order: finalize committed parts, discard
    staging no committed part names, reconcile ranges the sink holds but Kafka lags,
    then start consuming at ``seek`` (absent partitions: the group's committed offset)."""

    finalize: list[PartInfo] = field(default_factory=list)
    discard: list[str] = field(default_factory=list)
    discard_topic: str = ""  # the input topic the discarded staging belongs to (journal key)
    reconcile: list[Reconcile] = field(default_factory=list)
    seek: dict[TP, int] = field(default_factory=dict)


JournalView = Callable[[], Mapping[str, JournalEvent]]


def two_phase_plan(
    sink: str, partitions: Sequence[TP], journal: JournalView, leftovers: Callable[[str, int], list[str]]
) -> RecoveryPlan:
    """Recovery of a two-phase sink: finalize every committed, unfinalized part of
    ``partitions`` (from the journal) and discard every staging location of theirs
    (``leftovers(topic, partition)``) that no such part names."""
    pending = [ev.part for ev in pending_parts(journal(), sink, set(partitions)) if ev.part is not None]
    keep = {info.staging_path for info in pending}
    discard = [loc for t, p in partitions for loc in leftovers(t, p) if loc not in keep]
    return RecoveryPlan(finalize=pending, discard=discard, discard_topic=partitions[0][0] if partitions else "")


class StoreCommitted:
    """The parts of ``Sink`` that do nothing for a sink whose own store commit is the
    commit point (PostgreSQL, Iceberg): nothing to finalize, discard or un-stage."""

    def finalize(self, info: PartInfo) -> bool:
        return False

    def discard(self, prepared: Prepared) -> None:
        """Nothing: an uncommitted store transaction left nothing visible."""

    def remove_staging(self, location: str) -> None:
        """Nothing is staged."""


class Sink(Protocol):
    """A sink behind the seam. ``external`` says ``commit_external`` is the commit point
    (a transactional sink); ``two_phase`` says committed parts need ``finalize`` and a
    ``part_finalized`` journal event."""

    name: str
    external: bool
    two_phase: bool

    def prepare(self, part: PartRows) -> Prepared:
        """Stage ``part`` (durably and invisibly for a two-phase sink). Never raises for a
        row it cannot write: such rows are ``Reject``s. Raises only when the sink itself
        is unusable (disk full, permissions): that stops the stage."""
        ...

    def commit_external(self, prepared: Prepared) -> Outcome:
        """The sink's own commit point (transactional sinks); raises ``SinkFenced`` when
        another owner moved the partition. A two-phase sink returns ``Outcome(info)``."""
        ...

    def finalize(self, info: PartInfo) -> bool:
        """Make a committed part visible; True if done now, False if it already was.
        Idempotent; raises ``PartMissingError`` / ``PartConflictError``, never overwrites."""
        ...

    def discard(self, prepared: Prepared) -> None:
        """Drop a part whose transaction never commits (no error if already gone)."""
        ...

    def remove_staging(self, location: str) -> None:
        """Delete one staging location recovery found unreferenced (no error if gone)."""
        ...

    def recover(
        self, partitions: Sequence[TP], committed: Mapping[TP, int | None], journal: JournalView
    ) -> RecoveryPlan:
        """What to do before consuming ``partitions``; ``committed`` holds Kafka's group
        offsets, ``journal`` reads the journal's latest events when called."""
        ...

    def forget(self, partitions: Sequence[TP]) -> None:
        """The partitions were revoked: drop any per-partition state."""
        ...
