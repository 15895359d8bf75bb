"""The partition-scoped part-writer interface of two-phase sinks.

``prepare`` is the sink's acknowledgement: when it returns, the part's bytes are
durable in a staging location, but not visible. ``finalize`` makes a *committed*
part visible and is idempotent (re-driven from the journal after a crash).
``discard`` drops a part whose transaction did not commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from app.tokens import Token


@dataclass(frozen=True, slots=True)
class PreparedPart:
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
    def prepare(
        self, topic: str, partition: int, first_offset: int, last_offset: int, tokens: Sequence[Token]
    ) -> PreparedPart:
        """Stage ``tokens`` durably (fsync file and directory); nothing becomes visible."""

    def finalize(self, part: PreparedPart) -> bool:
        """Make a committed part visible; True if renamed now, False if it already was."""

    def discard(self, part: PreparedPart) -> None:
        """Delete the staging file of a part that will never commit."""

    def leftover_staging(self, topic: str, partition: int) -> list[str]:
        """Staging files of one partition (after a crash: candidates for recovery)."""

    def remove_staging(self, path: str) -> None: ...
