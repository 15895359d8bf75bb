"""Row tokens: the unit that flows from sources through transforms to sinks.

A token id is deterministic: ``<source_id>:<position>`` for a token made by a
source (or by reading an external topic: ``<topic>/<partition>/<offset>``), and
``<parent_id>/<child_index>`` for the children of a fan-out. Re-reading the same
input after a crash therefore yields the same ids, which is what lets every sink
be idempotent.
"""

from __future__ import annotations

from typing import Any, TypedDict


class Token(TypedDict):
    """One row. ``payload`` is a JSON object; everything else is envelope."""

    token_id: str
    key: str | None
    payload: dict[str, Any]
    source_id: str
    source_position: str
    event_time_ms: int | None
    lineage: list[str]


def child_token_id(parent_id: str, index: int) -> str:
    """Id of the ``index``-th child a transform derives from ``parent_id``."""
    return f"{parent_id}/{index}"
