"""The state of one stateful transform in one worker: its stores, restore, and the
hand-off to the commit seam.

Lifecycle per input partition:

* assigned: open the local store (rebuilt empty if corrupt), restore it from the
  changelog to the committed end, then let the operator build its in-memory index;
* each batch: ``process`` rows (changes stay in memory), ``changelog_records`` gives
  the seam the batch's changes as changelog records for the SAME transaction as the
  outputs and offsets; after the commit point the seam calls ``after_commit``, which
  writes the changes locally together with the changelog offset they reach;
* aborted batch: ``abort`` forgets the batch's changes and reloads the indexes;
* revoked or lost: the store is closed and the partition released.

Local stores live at ``<state_dir>/<pipeline>/<worker_id>/<store>/p<partition>``:
one directory per worker, so workers sharing a disk never share a database.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from app.runtime.batch import TopicRecords
from app.state.changelog import Restorer
from app.state.store import PartitionStore
from app.tokens import Token
from app.transforms.stateful import StatefulOp

log = logging.getLogger("ledgerflow.state")


class StateManager:
    def __init__(
        self,
        *,
        bootstrap: str,
        extra: Mapping[str, Any] | None,
        state_dir: Path,
        pipeline: str,
        worker_id: str,
        store_name: str,
        changelog_topic: str,
        op: StatefulOp,
        restore_chunk: int = 50_000,
    ) -> None:
        self.root = state_dir / pipeline / worker_id / store_name
        self.changelog_topic = changelog_topic
        self.op = op
        self.restore_chunk = restore_chunk
        self.stores: dict[int, PartitionStore] = {}
        self._restorer = Restorer(bootstrap, extra)
        self._delivered: dict[int, int] = {}
        self.restored_records = 0
        # (partition, records applied since the last call, records remaining): restore progress
        self.on_restore: Callable[[int, int, int], None] | None = None

    def assign(self, partitions: list[int]) -> None:
        for p in partitions:
            if p in self.stores:
                continue
            store = PartitionStore.open_or_rebuild(self.root / f"p{p}", self.changelog_topic, p)
            report = self.on_restore
            progress = None if report is None else (lambda n, rem, p=p, report=report: report(p, n, rem))
            self.restored_records += self._restorer.restore(store, chunk=self.restore_chunk, progress=progress)
            self.op.open(p, store)
            self.stores[p] = store

    def revoke(self, partitions: list[int]) -> None:
        for p in partitions:
            store = self.stores.pop(p, None)
            if store is not None:
                self.op.close(p)
                store.close()

    def close(self) -> None:
        self.revoke(list(self.stores))
        self._restorer.close()

    def process_row(self, partition: int, items: list[tuple[str, Token]]) -> list[tuple[str, Token]]:
        """Run the operator on what the stateless steps made of ONE input row.

        All or nothing per input row: if the operator raises for any of its tokens,
        none of the row's state changes survive (the runner dead-letters the row).
        Outputs without a topic of their own go where the stateless steps sent them."""
        store = self.stores[partition]
        op = self.op
        out: list[tuple[str, Token]] = []
        store.begin_row()
        try:
            for dest, token in items:
                for d, t in op.process(partition, store, token):
                    out.append((d or dest, t))
        except BaseException:
            store.end_row(False)
            raise
        store.end_row(True)
        return out

    def changelog_records(self, partitions: list[int]) -> list[TopicRecords]:
        """The batch's state changes, one record list per changelog partition."""
        out: list[TopicRecords] = []
        self._delivered.clear()
        for p in partitions:
            store = self.stores.get(p)
            if store is None:
                continue
            self.op.end_batch(p, store)
            changes = store.take_changes()
            if not changes:
                continue
            out.append(
                TopicRecords(
                    self.changelog_topic,
                    list(changes.values()),
                    list(changes.keys()),
                    None,
                    partition=p,
                    on_last=self._tracker(p),
                )
            )
        return out

    def _tracker(self, partition: int) -> Any:
        def done(offset: int) -> None:
            self._delivered[partition] = offset

        return done

    def after_commit(self) -> None:
        """Called by the seam after the commit point: make the local stores match."""
        for p, store in self.stores.items():
            if not store.pending:
                continue
            last = self._delivered.get(p)
            if last is None:
                raise RuntimeError(f"changelog {self.changelog_topic}/{p}: no delivery report after commit")
            store.apply_committed(last + 1)

    def abort(self) -> None:
        """The batch was aborted: drop its changes and rebuild operator indexes."""
        for p, store in self.stores.items():
            store.discard_pending()
            self.op.close(p)
            self.op.open(p, store)
