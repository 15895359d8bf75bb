"""Stream-stream interval join: the first step of a transform (``interval_join``).

The transform's input is the *left* side; the co-partitioned topic ``right`` is the
*right* side (partition *p* of each meets partition *p* of the other; the runner reads
right partition *p* for every input partition *p* it owns). A left row ``l`` and a
right row ``r`` *match* when their keys are equal and
``t_l - before_ms <= t_r <= t_l + after_ms``.

Per partition and side a *watermark*: the largest event time seen on that side (in
that side's offset order) minus ``grace_ms``. Per row, in this order:

1. no key / no integer event time: refused (DLQ ``no_key`` / ``no_event_time``);
2. event time below its own side's watermark: *late*, refused (DLQ ``join_late``);
3. paired with every buffered row of the other side it matches: one output per pair,
   id ``<left id>+<right id>`` (left id first, whichever arrived second);
4. buffered in the partition store, unless its window is already closed by the other
   side's watermark (then no later partner can come: it would be late);
5. its side's watermark moves; buffered rows of the *other* side whose window it
   closes leave the store: a right row ``r`` once ``wm_left > t_r + before_ms``, a
   left row ``l`` once ``wm_right > t_l + after_ms``.

``left`` and ``outer`` joins emit a left row that never matched when its window
closes (evicted, or closed at arrival): id ``<left id>+``, the right fields null;
``outer`` does the same for right rows (id ``+<right id>``, only the right fields).

Why the output does not depend on how the sides interleave (batches, reruns, which
side is read ahead): take a matching pair ``(l, r)``, neither late on its own side,
and say ``l`` arrives second. ``r`` is then still buffered: had it been evicted,
``wm_left > t_r + before_ms >= t_l`` would have held before ``l`` arrived, so ``l``
would be late. Symmetrically for ``r`` second (``wm_right > t_l + after_ms >= t_r``).
So whichever arrives second finds the other and the pair is emitted exactly once;
the set of pairs is ``{(l, r): keys equal, within the bounds, neither late}``. A
left row's unmatched output needs its window closed: ``wm_right > t_l + after_ms``;
then every non-late right partner has already arrived (it would be late otherwise)
and has met it, so "never matched" is decided by the input alone. Lateness depends
only on a side's own partition order. Everything is therefore a pure function of the
two partition sequences: a rerun from committed offsets and restored state emits
the same ids with the same payloads.

Output payloads: a pair is the left payload plus the right one's ``fields`` (or all)
under ``prefix``; its key is the left key, its event time the larger of the two
rows' ``event_time_ms``. An unmatched right row (outer) carries only its prefixed
fields, its own key and event time.

State, per partition store (changelogged in the batch transaction like every store):
``jl|<key>\\0<t>\\0<id>`` and ``jr|...`` -> ``{"t", "k", "m" (matched), "tok"}``; the
watermarks at ``jm|l`` / ``jm|r``. The in-memory index (per side: key -> buffered rows,
a heap of closing times) is rebuilt from the store by ``open``.
"""

from __future__ import annotations

import heapq
from typing import Any

import orjson

from app.codecs.tokens import CodecError
from app.state.store import PartitionStore
from app.tokens import Token
from app.transforms.stateful import Out, key_of, time_of

LEFT, RIGHT = 0, 1
_ROWS = (b"jl|", b"jr|")
_WM = (b"jm|l", b"jm|r")
_NO_WM = -(2**62)
_SIDE = ("left", "right")


class JoinLate(CodecError):
    def __init__(self, message: str) -> None:
        super().__init__("join_late", message)


class _Side:
    """One side's buffer in one partition: key -> {store key: event time}, and a heap
    of (closing time, store key, key) whose stale entries are skipped when popped."""

    __slots__ = ("by_key", "heap")

    def __init__(self) -> None:
        self.by_key: dict[str, dict[bytes, int]] = {}
        self.heap: list[tuple[int, bytes, str]] = []


class IntervalJoin:
    """``interval_join``: see the module docstring. ``process`` takes left rows,
    ``process_right`` right rows; both return the outputs (pairs, unmatched rows)."""

    def __init__(
        self,
        *,
        key_field: str | None,
        time_field: str | None,
        right_key_field: str | None,
        right_time_field: str | None,
        before_ms: int,
        after_ms: int,
        grace_ms: int,
        join_type: str,
        prefix: str,
        fields: list[str],
    ) -> None:
        self.keys = (key_field, right_key_field)
        self.times = (time_field, right_time_field)
        self.before = before_ms
        self.after = after_ms
        self.grace = grace_ms
        self.prefix = prefix
        self.fields = list(fields)
        # which sides emit their rows that never matched
        self.unmatched = (join_type in ("left", "outer"), join_type == "outer")
        self._sides: dict[int, tuple[_Side, _Side]] = {}
        self._wm: dict[int, list[int]] = {}
        self._dirty = False  # the current row changed the index (a failure must rebuild it)

    # -- lifecycle ---------------------------------------------------------------
    def open(self, partition: int, store: PartitionStore) -> None:
        sides = (_Side(), _Side())
        for s in (LEFT, RIGHT):
            side = sides[s]
            for k, v in store.scan_live(_ROWS[s]):
                row = orjson.loads(v)
                side.by_key.setdefault(row["k"], {})[k] = row["t"]
                side.heap.append((self._closes_at(s, row["t"]), k, row["k"]))
            heapq.heapify(side.heap)
        self._sides[partition] = sides
        wms = []
        for s in (LEFT, RIGHT):
            raw = store.get(_WM[s])
            wms.append(int(raw) if raw is not None else _NO_WM)
        self._wm[partition] = wms

    def close(self, partition: int) -> None:
        self._sides.pop(partition, None)
        self._wm.pop(partition, None)

    def end_batch(self, partition: int, store: PartitionStore) -> None:
        return None  # every change is in the store already (watermarks included)

    def row_failed(self, partition: int, store: PartitionStore) -> None:
        if self._dirty:  # the row's store changes were dropped: so must its index changes be
            self.open(partition, store)
        self._dirty = False

    # -- rows --------------------------------------------------------------------
    def process(self, partition: int, store: PartitionStore, token: Token) -> Out:
        return self._row(partition, store, token, LEFT)

    def process_right(self, partition: int, store: PartitionStore, token: Token) -> Out:
        return self._row(partition, store, token, RIGHT)

    def _closes_at(self, side: int, t: int) -> int:
        """A buffered row of ``side`` is closed once the other side's watermark exceeds this."""
        return t + (self.after if side == LEFT else self.before)

    def _row(self, partition: int, store: PartitionStore, token: Token, s: int) -> Out:
        self._dirty = False
        o = 1 - s
        key = key_of(token, self.keys[s])
        t = time_of(token, self.times[s])
        wm = self._wm[partition]
        if t < wm[s]:
            raise JoinLate(f"{_SIDE[s]} row's event time {t} is behind its side's watermark {wm[s]}")
        sides = self._sides[partition]
        # partners of the other side: right in [t - before, t + after] for a left row,
        # left in [t - after, t + before] for a right row
        lo, hi = (t - self.before, t + self.after) if s == LEFT else (t - self.after, t + self.before)
        out: Out = []
        matched = False
        buffered = sides[o].by_key.get(key)
        if buffered:
            for _ot, okey in sorted((v, k) for k, v in buffered.items() if lo <= v <= hi):
                raw = store.get(okey)
                assert raw is not None, f"join row {okey!r} indexed but not in the store"
                other = orjson.loads(raw)
                pair = (token, other["tok"]) if s == LEFT else (other["tok"], token)
                out.append((None, self._pair(*pair)))
                matched = True
                if self.unmatched[o] and not other["m"]:
                    other["m"] = True
                    store.put(okey, orjson.dumps(other))
        if wm[o] > self._closes_at(s, t):  # the other side is past this row's window already
            if not matched and self.unmatched[s]:
                out.append((None, self._alone(token, s)))
        else:
            skey = _ROWS[s] + b"%s\x00%d\x00%s" % (key.encode(), t, token["token_id"].encode())
            store.put(skey, orjson.dumps({"t": t, "k": key, "m": matched, "tok": token}))
            self._dirty = True
            sides[s].by_key.setdefault(key, {})[skey] = t
            heapq.heappush(sides[s].heap, (self._closes_at(s, t), skey, key))
        if t - self.grace > wm[s]:
            wm[s] = t - self.grace
            store.put(_WM[s], str(wm[s]).encode())
            out.extend(self._evict(store, sides[o], o, wm[s]))
        return out

    def _evict(self, store: PartitionStore, side: _Side, s: int, wm: int) -> Out:
        """Buffered rows of side ``s`` whose window the other side's watermark ``wm`` closed."""
        out: Out = []
        heap = side.heap
        while heap and heap[0][0] < wm:
            _closes, skey, key = heapq.heappop(heap)
            rows = side.by_key.get(key)
            if rows is None or rows.pop(skey, None) is None:
                continue
            self._dirty = True
            if not rows:
                del side.by_key[key]
            if self.unmatched[s]:
                raw = store.get(skey)
                assert raw is not None, f"join row {skey!r} indexed but not in the store"
                row = orjson.loads(raw)
                if not row["m"]:
                    out.append((None, self._alone(row["tok"], s)))
            store.delete(skey)
        return out

    # -- outputs -----------------------------------------------------------------
    def _right_fields(self, right: Token | None) -> dict[str, Any]:
        if right is None:
            return {self.prefix + f: None for f in self.fields}
        p = right["payload"]
        if self.fields:
            return {self.prefix + f: p.get(f) for f in self.fields}
        return {self.prefix + k: v for k, v in p.items()}

    def _pair(self, left: Token, right: Token) -> Token:
        times = [x for x in (left["event_time_ms"], right["event_time_ms"]) if x is not None]
        out = left.copy()
        out["token_id"] = f"{left['token_id']}+{right['token_id']}"
        out["payload"] = {**left["payload"], **self._right_fields(right)}
        out["event_time_ms"] = max(times) if times else None
        return out

    def _alone(self, token: Token, side: int) -> Token:
        out = token.copy()
        if side == LEFT:
            out["token_id"] = f"{token['token_id']}+"
            out["payload"] = {**token["payload"], **self._right_fields(None)}
        else:
            out["token_id"] = f"+{token['token_id']}"
            out["payload"] = self._right_fields(token)
        return out
