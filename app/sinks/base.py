"""The partition-scoped part-writer interface of two-phase sinks (DESIGN §5).

A *part* is the rows of one ``(topic, partition)`` offset range
``first_offset..last_offset`` (both inclusive). The commit seam drives a writer:

1. ``prepare`` stages the part durably but invisibly. Its return is the sink's
   acknowledgement: the staged bytes are on disk (file and directory fsynced).
2. The seam commits ``part_committed`` (built from the returned ``PreparedPart``)
   together with the consumer offsets in one Kafka transaction: the commit point.
3. ``finalize`` makes a committed part visible under a deterministic final name.
   It is idempotent, so recovery re-drives it from the journal (I3); it is called
   only after the commit point, so a fenced zombie never makes a part visible (I5).

``discard`` drops a part whose transaction will never commit; ``leftover_staging``
and ``remove_staging`` let recovery delete staging files no journal event names.
Writers never see Kafka objects, only tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from app.tokens import Token


class PartMissingError(RuntimeError):
    """A committed part has neither its staging nor its final file: data loss, never ignored."""


class PartConflictError(RuntimeError):
    """A part's file exists with content other than the committed checksum; nothing is overwritten."""


@dataclass(frozen=True, slots=True)
class PreparedPart:
    """A durably staged part: everything ``part_committed`` records and ``finalize`` needs.

    ``checksum`` is the sha256 hex of the staged file and ``bytes`` its size; both
    stay valid for the final file, which is the same file renamed.
    """

    sink: str
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    rows: int
    bytes: int
    checksum: str  # sha256 hex of the staged file
    staging_path: str
    final_path: str


class PartWriter(Protocol):
    """Two-phase writer for one sink; every call is scoped to one topic partition."""

    def prepare(
        self, topic: str, partition: int, first_offset: int, last_offset: int, tokens: Sequence[Token]
    ) -> PreparedPart:
        """Stage ``tokens`` (in order) durably and invisibly; the return is the sink's acknowledgement.

        Every call uses a fresh staging location, so two attempts at the same range never collide.
        """

    def prepare_chunks(
        self, topic: str, partition: int, first_offset: int, last_offset: int, chunks: Iterable[Sequence[Token]]
    ) -> PreparedPart:
        """``prepare`` for the concatenation of ``chunks``, consumed one at a time (same data).

        A part with zero rows is still staged (``rows == 0``); the caller discards it."""

    def finalize(self, part: PreparedPart) -> bool:
        """Make a committed part visible; True if it did so now, False if it already was.

        Idempotent. Raises ``PartMissingError`` if neither staging nor final data exists and
        ``PartConflictError`` if the final data differs from ``part.checksum`` (never overwritten).
        """

    def discard(self, part: PreparedPart) -> None:
        """Delete the staging data of a part that will never commit (no error if already gone)."""

    def leftover_staging(self, topic: str, partition: int) -> list[str]:
        """Staging locations of one partition, sorted (after a crash: keep or remove each)."""

    def remove_staging(self, path: str) -> None:
        """Delete one staging location durably (no error if already gone)."""
