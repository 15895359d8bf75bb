"""The source interface the source runner drives.

A source keeps an in-memory read position. ``poll`` advances it and returns the
tokens read plus the checkpoint state that covers them; the runner commits tokens,
dead letters and checkpoints in one Kafka transaction (invariant I1). If that
transaction aborts, the runner calls ``restore`` with the last *committed*
checkpoints and the source re-reads from there, producing the same token ids.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from app.tokens import Token


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Durable position of one input identity (a file, or a generator stream).

    ``offset`` is the byte offset *after the last complete record handed out*
    (never a read position inside a partial line: invariant I6); for the
    generator it is the index of the next row.
    """

    key: str  # journal key: source/<source_id>/<identity>
    source_id: str
    path: str
    fingerprint: str
    fingerprint_len: int
    offset: int
    rows: int  # records consumed from this identity so far (good + dead-lettered)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Input that could not become a token; goes to the DLQ with its origin."""

    reason_class: str  # short machine-readable class, e.g. "json_decode", "csv_columns"
    message: str
    raw: bytes
    origin: dict[str, str] = field(default_factory=dict)  # e.g. {"file":..., "byte_offset":...}


@dataclass(slots=True)
class SourceBatch:
    tokens: list[Token]
    dead_letters: list[DeadLetter]
    checkpoints: list[Checkpoint]  # full state of every identity this batch advanced
    exhausted: bool = False  # a finite source will never produce more


class Source(Protocol):
    source_id: str

    def restore(self, checkpoints: Mapping[str, Checkpoint]) -> None:
        """Reset the read position to committed ``checkpoints`` (journal key -> state)."""

    def poll(self, max_rows: int) -> SourceBatch:
        """Read up to ``max_rows`` records without blocking for long."""

    def close(self) -> None: ...
