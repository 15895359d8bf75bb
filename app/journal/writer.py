"""Builds journal events with the run's correlation ids.

The writer never produces on its own: events are handed to the commit seam, which
writes them inside the same Kafka transaction as the data they describe.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from app.journal.events import JournalEvent, PartInfo
from app.sources.base import Checkpoint


@dataclass(frozen=True, slots=True)
class Correlation:
    """Who writes: the same ids appear in every event and every structured log line."""

    pipeline: str
    stage: str
    worker_id: str
    run_id: str


def _now_ms() -> int:
    return int(time.time() * 1000)


def checkpoint_event(corr: Correlation, cp: Checkpoint) -> JournalEvent:
    return JournalEvent(
        kind="source_checkpoint",
        key=cp.key,
        pipeline=corr.pipeline,
        stage=corr.stage,
        worker_id=corr.worker_id,
        run_id=corr.run_id,
        ts_ms=_now_ms(),
        checkpoint=cp,
        part=None,
        detail=None,
    )


def part_event(corr: Correlation, kind: str, key: str, part: PartInfo) -> JournalEvent:
    return JournalEvent(
        kind=kind,  # type: ignore[arg-type]
        key=key,
        pipeline=corr.pipeline,
        stage=corr.stage,
        worker_id=corr.worker_id,
        run_id=corr.run_id,
        ts_ms=_now_ms(),
        checkpoint=None,
        part=part,
        detail=None,
    )


def info_event(corr: Correlation, kind: str, key: str, detail: dict[str, str]) -> JournalEvent:
    """run_started / run_stopped / recovery events."""
    return JournalEvent(
        kind=kind,  # type: ignore[arg-type]
        key=key,
        pipeline=corr.pipeline,
        stage=corr.stage,
        worker_id=corr.worker_id,
        run_id=corr.run_id,
        ts_ms=_now_ms(),
        checkpoint=None,
        part=None,
        detail=detail,
    )
