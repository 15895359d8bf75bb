"""Warm standby copies of a stateful transform's stores (``standby_replicas: 1``).

A worker keeps a local copy of every changelog partition it does not own, caught up
from the changelog about once a second by a thread of its own (its own read_committed
consumer). The copies live where the worker's active stores would
(``<state_dir>/<pipeline>/<worker_id>/<store>/p<partition>``), so when a partition is
assigned, the usual restore starts from the copy's changelog offset and applies only
the tail, instead of the whole changelog.

Guarantees:

* A copy is only ever written from committed changelog records, with the offset it
  reaches in the same RocksDB write batch (``PartitionStore.apply_restored``), so it is
  exactly the state of some committed changelog prefix: the active restore that
  takes it over is the same as one from an older local store. Exactly-once is
  unchanged; only the restore gets shorter.
* The active side and the keeper never hold a partition's store at the same time:
  ``take`` waits for the keeper's current catch-up of that partition (only that one)
  and closes its copy before the active store is opened; ``give_back`` (on revoke)
  lets the keeper watch it again, starting from what the active store left.
* A copy that fails to catch up (broker away, a changelog gap) is closed and retried
  on a later pass; the failure is logged and never stops the stage.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.state.changelog import Restorer
from app.state.store import PartitionStore

log = logging.getLogger("ledgerflow.state.standby")


class StandbyKeeper:
    def __init__(
        self,
        *,
        bootstrap: str,
        extra: Mapping[str, Any] | None,
        root: Path,
        changelog_topic: str,
        partitions: int,
        interval_s: float = 1.0,
        chunk: int = 50_000,
    ) -> None:
        self.root = root
        self.changelog_topic = changelog_topic
        self.partitions = partitions
        self.interval_s = interval_s
        self.chunk = chunk
        self._restorer = Restorer(bootstrap, extra)
        self._lock = threading.Lock()  # guards _owned and _copies
        self._busy = {p: threading.Lock() for p in range(partitions)}  # held while a copy catches up
        self._owned: set[int] = set()
        self._copies: dict[int, PartitionStore] = {}
        self._warm: set[int] = set()  # caught up at least once (logged once)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"standby-{changelog_topic}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def take(self, partition: int) -> None:
        """The partition becomes active here: stop keeping its copy (waits for a catch-up
        of that partition in progress) and close it, so the active store can open it."""
        with self._lock:
            self._owned.add(partition)
        busy = self._busy.get(partition)
        if busy is None:
            return
        with busy, self._lock:
            copy = self._copies.pop(partition, None)
            if copy is not None:
                copy.close()

    def give_back(self, partition: int) -> None:
        """The partition is no longer active here (its store is closed): keep it warm."""
        with self._lock:
            self._owned.discard(partition)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(60)
        with self._lock:
            for copy in self._copies.values():
                copy.close()
            self._copies.clear()
        self._restorer.close()

    # -- the keeper thread ----------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            for p in range(self.partitions):
                if self._stop.is_set():
                    return
                self._catch_up(p)

    def _catch_up(self, p: int) -> None:
        with self._busy[p]:
            with self._lock:
                if p in self._owned:
                    return
                copy = self._copies.get(p)
            try:
                if copy is None:
                    copy = PartitionStore.open_or_rebuild(self.root / f"p{p}", self.changelog_topic, p)
                    with self._lock:
                        self._copies[p] = copy
                self._restorer.restore(copy, chunk=self.chunk, timeout=60.0, quiet=True)
            except Exception as exc:  # the stage goes on; the next pass retries from the copy's offset
                log.warning("standby copy of %s/%d: catching up failed: %s", self.changelog_topic, p, exc)
                with self._lock:
                    dropped = self._copies.pop(p, None)
                if dropped is not None:
                    dropped.close()
                return
            if p not in self._warm:
                self._warm.add(p)
                log.info("standby copy of %s/%d is warm at offset %d", self.changelog_topic, p, copy.offset)
