"""Pure views over the journal's latest events (no Kafka): what recovery reads.

``app.journal.reader.load_journal`` gives the latest committed event per key; these
functions pick out one source's checkpoints or one sink's committed, unfinalized
parts, so sinks can plan recovery without a Kafka client.
"""

from __future__ import annotations

from collections.abc import Mapping

from app.journal.events import JournalEvent
from app.journal.keys import sink_prefix, source_prefix
from app.sources.base import Checkpoint


def source_checkpoints(events: Mapping[str, JournalEvent], source_id: str) -> dict[str, Checkpoint]:
    prefix = source_prefix(source_id)
    return {
        k: ev.checkpoint
        for k, ev in events.items()
        if k.startswith(prefix) and ev.kind == "source_checkpoint" and ev.checkpoint is not None
    }


def pending_parts(
    events: Mapping[str, JournalEvent], sink: str, partitions: set[tuple[str, int]]
) -> list[JournalEvent]:
    """``part_committed`` events of ``sink`` on ``partitions`` not yet finalized, in offset order."""
    prefix = sink_prefix(sink)
    out = [
        ev
        for k, ev in events.items()
        if k.startswith(prefix)
        and ev.kind == "part_committed"
        and ev.part is not None
        and (ev.part.topic, ev.part.partition) in partitions
    ]
    out.sort(key=lambda ev: (ev.part.topic, ev.part.partition, ev.part.first_offset) if ev.part else ("", 0, 0))
    return out
