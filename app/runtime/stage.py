"""What every stage runner shares: identity, stop/finish signalling, live counters."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from app.journal.writer import Correlation


@dataclass
class Progress:
    """Committed counts only (they move after the commit point, like the metrics)."""

    rows_in: int = 0
    rows_out: int = 0
    dlq: int = 0
    commits: int = 0
    aborts: int = 0
    lag: int | None = None
    started: float = field(default_factory=time.monotonic)


@dataclass
class StageContext:
    """Handed to a runner by the supervisor."""

    corr: Correlation
    bootstrap: str
    kafka_extra: dict[str, Any]
    journal_topic: str
    dlq_topic: str
    interval_s: float
    max_rows: int
    transaction_timeout_ms: int
    stop: threading.Event  # asks the runner to finish its batch and return
    exit_when_done: bool = False  # finite runs: return once input is exhausted and drained
    upstream_done: threading.Event | None = None  # set when every upstream stage finished
    owned_topics: frozenset[str] = frozenset()  # topics only this pipeline writes (hanging-txn ownership)

    def upstream_finished(self) -> bool:
        return self.upstream_done is None or self.upstream_done.is_set()


def transactional_id(corr: Correlation, name: str) -> str:
    """Stable per (pipeline, stage, name, worker): a restarted worker fences its
    previous incarnation and aborts its open transaction at once."""
    return f"ledgerflow.{corr.pipeline}.{corr.stage}.{name}.{corr.worker_id}"


def group_id(pipeline: str, stage: str, name: str) -> str:
    return f"ledgerflow.{pipeline}.{stage}.{name}"
