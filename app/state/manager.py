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

With ``standby_replicas: 1`` a ``StandbyKeeper`` keeps warm copies of the partitions
not owned here (``app.state.standby``); an assignment takes the copy over and
restores only the changelog's tail.

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
from app.state.standby import StandbyKeeper
from app.state.store import PartitionStore
from app.tokens import Token
from app.transforms.stateful import DeadLetterSource, ReadsBeforeBatch, StatefulOp, TwoSided

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
        standby_partitions: int = 0,
    ) -> None:
        """``standby_partitions``: the changelog's partition count, to keep warm copies of
        those not owned here (``standby_replicas: 1``); 0: no standby copies."""
        self.root = state_dir / pipeline / worker_id / store_name
        self.changelog_topic = changelog_topic
        self.op = op
        self._process_right = op.process_right if isinstance(op, TwoSided) else None
        self.restore_chunk = restore_chunk
        self.stores: dict[int, PartitionStore] = {}
        self.standby: StandbyKeeper | None = None  # warm copies of the partitions not owned here
        if standby_partitions:
            self.standby = StandbyKeeper(
                bootstrap=bootstrap,
                extra=extra,
                root=self.root,
                changelog_topic=changelog_topic,
                partitions=standby_partitions,
                chunk=restore_chunk,
            )
            self.standby.start()
        self._restorer = Restorer(bootstrap, extra)
        self._delivered: dict[int, int] = {}
        self.restored_records = 0
        # (partition, records applied since the last call, records remaining): restore progress
        self.on_restore: Callable[[int, int, int], None] | None = None

    def assign(self, partitions: list[int]) -> None:
        for p in partitions:
            if p in self.stores:
                continue
            if self.standby is not None:
                self.standby.take(p)  # its warm copy becomes the store to restore from
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
            if self.standby is not None:
                self.standby.give_back(p)

    def close(self) -> None:
        self.revoke(list(self.stores))
        self._restorer.close()
        if self.standby is not None:
            self.standby.close()

    def begin_batch(self, partitions: list[int]) -> None:
        """Before the batch's first row: let the operator read what it needs (its errors
        propagate: the batch is not committed, the stage retries or stops)."""
        if isinstance(self.op, ReadsBeforeBatch):
            self.op.begin_batch([p for p in partitions if p in self.stores])

    def process_row(
        self, partition: int, items: list[tuple[str, Token]], *, right: bool = False
    ) -> list[tuple[str, Token]]:
        """Run the operator on what the stateless steps made of ONE input row (``right``:
        a row of an interval join's right topic, for ``op.process_right``).

        All or nothing per input row: if the operator raises for any of its tokens,
        none of the row's state changes survive (the runner dead-letters the row).
        Outputs without a topic of their own go where the stateless steps sent them."""
        store = self.stores[partition]
        op = self.op
        process = self._process_right if right and self._process_right is not None else op.process
        out: list[tuple[str, Token]] = []
        store.begin_row()
        try:
            for dest, token in items:
                for d, t in process(partition, store, token):
                    out.append((d or dest, t))
        except BaseException:
            store.end_row(False)
            op.row_failed(partition, store)
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

    def take_dead_letters(self) -> list[tuple[str, bytes]]:
        """The operator's own refusals for this batch's DLQ: (reason, DLQ record)."""
        return self.op.take_dead_letters() if isinstance(self.op, DeadLetterSource) else []

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
        if isinstance(self.op, DeadLetterSource):
            self.op.dead_letters_committed()

    def abort(self) -> None:
        """The batch was aborted: drop its changes and rebuild operator indexes."""
        for p, store in self.stores.items():
            store.discard_pending()
            self.op.close(p)
            self.op.open(p, store)
