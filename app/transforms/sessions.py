"""Session windows: ``aggregate`` with ``window: {type: session, gap_ms, allowed_lateness_ms}``.

A key's session is a run of its rows whose event times lie within ``gap_ms`` of
each other; it spans ``[first event time, last event time]``. Decided per row
against the partition's watermark (the largest event time seen before the row),
like the fixed windows in ``app.transforms.stateful``, so results depend only on
the order of rows within the input partition:

* a row is *late* when its event time is more than ``allowed_lateness_ms`` behind
  the watermark: it goes to the DLQ (``late_row``) or the ``late`` topic;
* otherwise it joins every open session of its key it is within ``gap_ms`` of. A
  row that falls between two open sessions (out of order, within the lateness)
  *merges* them into one session starting at the earlier start;
* a session closes when the watermark passes its last event time + ``gap_ms`` +
  ``allowed_lateness_ms``; only then is it emitted, ONCE, with id
  ``<transform>:<key>:<session start>``, and it leaves the store.

What was emitted before a merge: nothing. Open sessions are never emitted, and a
closed one can never be merged into: any row near enough to touch it is late by
the rule above (its time is at most ``end + gap`` < ``watermark - lateness``). So
every emitted session is final, and the two sessions a bridging row merged never
appear in the output, only the merged one.

State: ``s|<key>|<start>`` -> ``{"end": last event time, <functions>}`` in the
partition's store (changelogged in the batch transaction like every store
change). The in-memory index of open sessions and the heap of closing times are
rebuilt from the store by ``open``.
"""

from __future__ import annotations

import heapq
from typing import Any

import orjson

from app.state.store import PartitionStore
from app.tokens import Token
from app.transforms.stateful import AggregateBase, Out, combine, fold, key_of, time_of

_PREFIX = b"s|"


def _skey(key: str, start: int) -> bytes:
    return b"s|%s|%d" % (key.encode(), start)


class SessionAggregate(AggregateBase):
    """count / sum / min / max per key and session (see the module docstring)."""

    def __init__(self, name: str, *, gap_ms: int, **common: Any) -> None:
        super().__init__(name, **common)
        self.gap = gap_ms
        # per partition: key -> {session start: session end}, and a heap of
        # (closing watermark, key, start) whose stale entries are skipped when popped
        self._open: dict[int, dict[str, dict[int, int]]] = {}
        self._heap: dict[int, list[tuple[int, str, int]]] = {}

    # -- lifecycle ---------------------------------------------------------------
    def open(self, partition: int, store: PartitionStore) -> None:
        self.wms.load(partition, store)
        self._index(partition, store)

    def row_failed(self, partition: int, store: PartitionStore) -> None:
        """A row's changes were dropped: its merges may be in the index, not the store."""
        self._index(partition, store)

    def _index(self, partition: int, store: PartitionStore) -> None:
        sessions: dict[str, dict[int, int]] = {}
        heap: list[tuple[int, str, int]] = []
        for k, v in store.scan_live(_PREFIX):
            key_raw, _, start_raw = k[2:].rpartition(b"|")
            key, start, end = key_raw.decode(), int(start_raw), int(orjson.loads(v)["end"])
            sessions.setdefault(key, {})[start] = end
            heap.append((self._closes_at(end), key, start))
        heapq.heapify(heap)
        self._open[partition] = sessions
        self._heap[partition] = heap

    def _indexes(self) -> tuple[dict[int, Any], ...]:
        return self._open, self._heap

    def _closes_at(self, end: int) -> int:
        """The smallest watermark at which a session ending at ``end`` is closed."""
        return end + self.gap + self.lateness + 1

    # -- rows --------------------------------------------------------------------
    def process(self, partition: int, store: PartitionStore, token: Token) -> Out:
        key = key_of(token, self.key_field)
        value = self._value(token)
        t = time_of(token, self.time_field)
        wm = self.wms.wm[partition]
        if t + self.lateness < wm:
            return self._late(token, t, wm)
        sessions = self._open[partition].setdefault(key, {})
        gap = self.gap
        touched = sorted(s for s, e in sessions.items() if s - gap <= t <= e + gap)
        start, end = t, t
        agg: dict[str, Any] = {}
        for s in touched:  # merge every session the row reaches (two when it bridges them)
            skey = _skey(key, s)
            raw = store.get(skey)
            assert raw is not None, f"session {skey!r} indexed but not in the store"
            old = orjson.loads(raw)
            start, end = min(start, s), max(end, int(old.pop("end")))
            combine(self.functions, agg, old)
            store.delete(skey)
            del sessions[s]
        fold(self.functions, agg, value)
        store.put(_skey(key, start), orjson.dumps({"end": end, **agg}))
        sessions[start] = end
        heapq.heappush(self._heap[partition], (self._closes_at(end), key, start))
        if t <= wm:
            return []
        self.wms.wm[partition] = t
        return self._close_due(partition, store, t)

    def _close_due(self, partition: int, store: PartitionStore, wm: int) -> Out:
        heap, open_ = self._heap[partition], self._open[partition]
        due: set[tuple[str, int]] = set()  # a session re-pushed with an unchanged end is due once
        while heap and heap[0][0] <= wm:
            closes, key, start = heapq.heappop(heap)
            sessions = open_.get(key)
            end = None if sessions is None else sessions.get(start)
            if end is None or self._closes_at(end) != closes:
                continue  # merged away or extended since this entry was pushed
            due.add((key, start))
        out: Out = []
        for key, start in sorted(due):
            skey = _skey(key, start)
            raw = store.get(skey)
            assert raw is not None, f"session {skey!r} indexed but not in the store"
            store.delete(skey)
            sessions = open_[key]
            del sessions[start]
            if not sessions:
                del open_[key]
            out.append((None, self._result(key, start, orjson.loads(raw))))
        return out

    def _result(self, key: str, start: int, agg: dict[str, Any]) -> Token:
        end = int(agg.pop("end"))
        return self._window_result(key, start, end, agg)
