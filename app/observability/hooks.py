"""Metric hooks the runtime calls (per batch, never per row).

The runtime depends on this interface only; ``app.observability.prometheus``
implements it. Hooks are called *after* the commit point, so a counter never
claims rows that did not commit (invariant I4).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from app.journal.events import PartInfo
    from app.runtime.batch import CommitReport


class Hooks(Protocol):
    def on_commit(self, report: CommitReport) -> None: ...
    def on_abort(self, stage: str, name: str, reason: str) -> None: ...
    def on_fenced(self, stage: str, name: str) -> None: ...
    def on_part_finalized(self, stage: str, name: str, part: PartInfo) -> None: ...
    def on_rebalance(self, stage: str, name: str, kind: str, partitions: int) -> None: ...
    def on_recovery(self, stage: str, name: str, action: str) -> None: ...
    def on_txn_open(self, stage: str, name: str, open_: bool) -> None: ...
    def on_lag(self, stage: str, name: str, lags: dict[tuple[str, int], int]) -> None: ...
    def on_partitions_gone(self, stage: str, name: str, partitions: list[tuple[str, int]]) -> None: ...
    def on_staging_leftovers(self, stage: str, name: str, count: int) -> None: ...
    def on_assigned(self, stage: str, name: str) -> None: ...
    def on_unready(self, stage: str, name: str) -> None: ...
    def on_producer_reinit(self, stage: str, name: str, reason: str) -> None: ...
    def on_consumer_reinit(self, stage: str, name: str, reason: str) -> None: ...
    def on_restore(self, stage: str, name: str, partition: int, applied: int, remaining: int) -> None: ...
    def tick(self) -> None: ...


class NullHooks:
    def on_commit(self, report: CommitReport) -> None:
        return None

    def on_abort(self, stage: str, name: str, reason: str) -> None:
        return None

    def on_fenced(self, stage: str, name: str) -> None:
        return None

    def on_part_finalized(self, stage: str, name: str, part: PartInfo) -> None:
        return None

    def on_rebalance(self, stage: str, name: str, kind: str, partitions: int) -> None:
        return None

    def on_recovery(self, stage: str, name: str, action: str) -> None:
        return None

    def on_txn_open(self, stage: str, name: str, open_: bool) -> None:
        return None

    def on_lag(self, stage: str, name: str, lags: dict[tuple[str, int], int]) -> None:
        return None

    def on_partitions_gone(self, stage: str, name: str, partitions: list[tuple[str, int]]) -> None:
        return None

    def on_staging_leftovers(self, stage: str, name: str, count: int) -> None:
        return None

    def on_assigned(self, stage: str, name: str) -> None:
        return None

    def on_unready(self, stage: str, name: str) -> None:
        return None

    def on_producer_reinit(self, stage: str, name: str, reason: str) -> None:
        return None

    def on_consumer_reinit(self, stage: str, name: str, reason: str) -> None:
        return None

    def on_restore(self, stage: str, name: str, partition: int, applied: int, remaining: int) -> None:
        return None

    def tick(self) -> None:
        return None
