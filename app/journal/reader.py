"""Rebuilds recovery state from the compacted journal topic.

``load_journal`` reads every committed event up to the high watermark seen when it
starts, so a transaction whose commit markers are still in flight is waited for,
never missed; the latest event per key wins (the same view compaction keeps).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from app.journal.events import JournalEvent, decode_event
from app.kafka.readers import read_topic_to_end

log = logging.getLogger("ledgerflow.journal")


def load_journal(
    bootstrap: str, topic: str, *, extra: Mapping[str, Any] | None = None, timeout: float = 120.0
) -> dict[str, JournalEvent]:
    """Latest committed event per key (tombstones delete the key)."""
    latest: dict[str, JournalEvent] = {}
    for rec in read_topic_to_end(bootstrap, topic, extra=extra, timeout=timeout):
        if rec.key is None:
            continue
        key = rec.key.decode()
        if rec.value is None:
            latest.pop(key, None)
            continue
        try:
            latest[key] = decode_event(rec.value)
        except Exception as exc:  # a foreign or corrupt record must not stop recovery
            log.error("journal %s offset %d: undecodable event for key %s: %s", topic, rec.offset, key, exc)
    return latest
