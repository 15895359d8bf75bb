"""Stateful operators: ``dedupe``, ``aggregate`` (optionally windowed) and user functions.

Each operator keeps its state in the partition's ``PartitionStore`` and nowhere
else that matters: any in-memory index it keeps (open windows, the watermark) is
rebuilt from the store by ``open``. Because store changes commit in the same Kafka
transaction as the outputs they cause (the changelog), state and outputs never
disagree after a crash.

Determinism: results depend only on the order of rows within an input partition,
never on how rows are cut into batches. Lateness, expiry and window closing are
decided per row against the partition's *watermark* (the largest event time seen
before that row), so a re-run after a crash yields the same outputs with the same
token ids.

Keys: the state of a key must live in one partition, so operators key by the
record key by default (the key the input topic is partitioned by). Keying by a
payload field is allowed when rows with equal values share a partition (e.g. the
field is the partitioning key, or determines it). ``_token_id`` keys by the token
id: a row re-sent with the same id (an at-least-once stage upstream, e.g. faust)
carries the same record key, so it lands in the same partition.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, runtime_checkable

import orjson

from app.codecs.tokens import CodecError
from app.state.store import PartitionStore
from app.tokens import Token, child_token_id

Out = list[tuple[str | None, Token]]  # (topic, token); None = the transform's output
_WM = b"m|wm"


class LateRow(CodecError):
    """A row whose windows have all closed; it goes to the DLQ with reason ``late_row``."""

    def __init__(self, message: str) -> None:
        super().__init__("late_row", message)


class StatefulOp(Protocol):
    def open(self, partition: int, store: PartitionStore) -> None: ...
    def close(self, partition: int) -> None: ...
    def process(self, partition: int, store: PartitionStore, token: Token) -> Out: ...
    def end_batch(self, partition: int, store: PartitionStore) -> None: ...
    def row_failed(self, partition: int, store: PartitionStore) -> None: ...  # row's changes dropped: resync


@runtime_checkable
class ReadsBeforeBatch(Protocol):
    """An operator that reads input of its own (a join's table) before a batch's rows:
    outside the row loop, so a failing read stops the batch instead of refusing rows."""

    def begin_batch(self, partitions: list[int]) -> None: ...


@runtime_checkable
class TwoSided(Protocol):
    """An operator with a second input (an interval join's right topic): its rows go to
    ``process_right``, through the same store and changelog as the input's."""

    def process_right(self, partition: int, store: PartitionStore, token: Token) -> Out: ...


@runtime_checkable
class DeadLetterSource(Protocol):
    """An operator that refuses input of its own (e.g. a join's table records): its DLQ
    records go into the batch transaction, and are forgotten only after it commits."""

    def take_dead_letters(self) -> list[tuple[str, bytes]]: ...  # (reason, DLQ record)
    def dead_letters_committed(self) -> None: ...


TOKEN_ID_FIELD = "_token_id"


def key_of(token: Token, field: str | None) -> str:
    if field == TOKEN_ID_FIELD:
        return token["token_id"]
    if field is None:
        key = token["key"]
        if key is None:
            raise CodecError("no_key", "stateful operator keyed by the record key, but the row has no key")
        return key
    value = token["payload"].get(field)
    if value is None:
        raise CodecError("no_key", f"stateful operator keyed by payload field {field!r}, which is missing")
    return str(value)


def time_of(token: Token, field: str | None) -> int:
    t: Any = token["event_time_ms"] if field is None else token["payload"].get(field)
    if isinstance(t, bool) or not isinstance(t, int):
        where = "event_time_ms" if field is None else f"payload field {field!r}"
        raise CodecError("no_event_time", f"row has no integer event time in {where} (got {t!r})")
    return t


class Watermarks:
    """Per-partition watermark, persisted at ``m|wm`` at the end of each batch."""

    def __init__(self) -> None:
        self.wm: dict[int, int] = {}
        self._saved: dict[int, int] = {}

    def load(self, partition: int, store: PartitionStore) -> None:
        raw = store.get(_WM)
        self.wm[partition] = self._saved[partition] = int(raw) if raw is not None else -(2**62)

    def save(self, partition: int, store: PartitionStore) -> None:
        wm = self.wm[partition]
        if wm != self._saved[partition]:
            store.begin_row()
            store.put(_WM, str(wm).encode())
            store.end_row(True)
            self._saved[partition] = wm

    def drop(self, partition: int) -> None:
        self.wm.pop(partition, None)
        self._saved.pop(partition, None)


class Dedupe:
    """Pass the first row of each key; drop later rows with the same key.

    With ``ttl_ms`` a key is remembered until the watermark passes its first event
    time + ``ttl_ms``; after that the next row with that key passes again (and is
    remembered anew). Expired entries are purged from the store (tombstones in the
    changelog) at batch ends once the watermark has moved by a quarter of the TTL.
    """

    def __init__(self, field: str | None, ttl_ms: int | None, time_field: str | None) -> None:
        self.field = field
        self.ttl = ttl_ms
        self.time_field = time_field
        self.wms = Watermarks()
        self._purged_at: dict[int, int] = {}

    def open(self, partition: int, store: PartitionStore) -> None:
        self.wms.load(partition, store)
        self._purged_at[partition] = self.wms.wm[partition]

    def close(self, partition: int) -> None:
        self.wms.drop(partition)
        self._purged_at.pop(partition, None)

    def row_failed(self, partition: int, store: PartitionStore) -> None:
        return None  # no index: the store is the only state (the watermark stays deterministic)

    def process(self, partition: int, store: PartitionStore, token: Token) -> Out:
        skey = b"d|" + key_of(token, self.field).encode()
        if self.ttl is None:
            if store.get(skey) is not None:
                return []
            store.put(skey, b"0")
            return [(None, token)]
        t = time_of(token, self.time_field)
        wm = self.wms.wm[partition]
        seen = store.get(skey)
        live = seen is not None and int(seen) + self.ttl > wm
        if t > wm:
            self.wms.wm[partition] = t
        if live:
            return []
        store.put(skey, str(t).encode())
        return [(None, token)]

    def end_batch(self, partition: int, store: PartitionStore) -> None:
        self.wms.save(partition, store)
        if self.ttl is None:
            return
        wm = self.wms.wm[partition]
        if wm - self._purged_at[partition] < max(1, self.ttl // 4):
            return
        self._purged_at[partition] = wm
        store.begin_row()
        for k, v in store.scan(b"d|"):
            if k not in store.pending and int(v) + self.ttl <= wm:
                store.delete(k)
        store.end_row(True)


def value_of(token: Token, field: str | None) -> int | float:
    """The numeric ``field`` of a row's payload (``bad_value`` to the DLQ otherwise)."""
    assert field is not None
    v = token["payload"].get(field)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise CodecError("bad_value", f"aggregate value field {field!r} is not a number (got {v!r})")
    return v


def fold(functions: list[str], agg: dict[str, Any], value: int | float | None) -> dict[str, Any]:
    """``agg`` (count/sum/min/max so far) updated in place by one row's ``value``."""
    for f in functions:
        if f == "count":
            agg["count"] = agg.get("count", 0) + 1
        elif f == "sum":
            agg["sum"] = agg.get("sum", 0) + value
        elif f == "min":
            cur = agg.get("min")
            agg["min"] = value if cur is None or value < cur else cur
        else:
            cur = agg.get("max")
            agg["max"] = value if cur is None or value > cur else cur
    return agg


def combine(functions: list[str], a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two partial aggregates as one (``a`` updated in place): a merged session's."""
    for f in functions:
        if f in ("count", "sum"):
            a[f] = a.get(f, 0) + b.get(f, 0)
        elif b.get(f) is not None:
            cur = a.get(f)
            a[f] = b[f] if cur is None or (b[f] < cur if f == "min" else b[f] > cur) else cur
    return a


_FUNCS = ("count", "sum", "min", "max")


class AggregateBase:
    """What every aggregate shares: key, value and time fields, the functions, the
    allowed lateness, where late rows go, and the partition watermarks."""

    def __init__(
        self,
        name: str,
        *,
        key_field: str | None,
        value_field: str | None,
        functions: list[str],
        lateness_ms: int,
        time_field: str | None,
        late_topic: str | None,
    ) -> None:
        self.name = name
        self.key_field = key_field
        self.value_field = value_field
        self.functions = [f for f in _FUNCS if f in functions]
        self.lateness = lateness_ms
        self.time_field = time_field
        self.late_topic = late_topic
        self.needs_value = any(f != "count" for f in self.functions)
        self.wms = Watermarks()

    def _indexes(self) -> tuple[dict[int, Any], ...]:
        """The subclass's per-partition in-memory indexes (rebuilt by ``open``)."""
        raise NotImplementedError

    def close(self, partition: int) -> None:
        self.wms.drop(partition)
        for index in self._indexes():
            index.pop(partition, None)

    def end_batch(self, partition: int, store: PartitionStore) -> None:
        self.wms.save(partition, store)

    def _value(self, token: Token) -> int | float | None:
        return value_of(token, self.value_field) if self.needs_value else None

    def _window_result(self, key: str, start: int, end: int, agg: dict[str, Any]) -> Token:
        """A closed window's result: id ``<transform>:<key>:<start>``, event time ``end``."""
        return {
            "token_id": f"{self.name}:{key}:{start}",
            "key": key,
            "payload": {"key": key, "window_start": start, "window_end": end, **agg},
            "source_id": self.name,
            "source_position": f"{key}@{start}",
            "event_time_ms": end,
            "lineage": [self.name],
        }

    def _late(self, token: Token, t: int, wm: int) -> Out:
        """A late row: to ``late_topic``, or refused (DLQ ``late_row``)."""
        if self.late_topic is None:
            raise LateRow(f"event time {t} is behind the watermark {wm} by more than the allowed lateness")
        return [(self.late_topic, token)]


class Aggregate(AggregateBase):
    """count / sum / min / max per key, over all time or per event-time window.

    Without a window every row emits the key's updated aggregate (same token id as
    the row). With a window (tumbling, or hopping with ``advance_ms``) a row updates
    every window containing its event time that is still open; a window closes when
    the watermark reaches its end + ``allowed_lateness_ms``, and then emits ONE
    result (token id ``<transform>:<key>:<window_start>``) and leaves the store. A row
    all of whose windows are closed is late: DLQ (``late_row``) or ``late_topic``.
    """

    def __init__(self, name: str, *, size_ms: int | None, advance_ms: int | None, **common: Any) -> None:
        super().__init__(name, **common)
        self.size = size_ms
        self.advance = advance_ms or size_ms
        # per partition: heap of open window starts, and window start -> keys in it
        self._heap: dict[int, list[int]] = {}
        self._open: dict[int, dict[int, set[str]]] = {}

    # -- lifecycle ---------------------------------------------------------------
    def open(self, partition: int, store: PartitionStore) -> None:
        self.wms.load(partition, store)
        windows: dict[int, set[str]] = {}
        if self.size is not None:
            for k, _v in store.scan(b"w|"):
                ws_raw, _, key = k[2:].partition(b"|")
                windows.setdefault(int(ws_raw), set()).add(key.decode())
        self._open[partition] = windows
        heap = list(windows)
        heapq.heapify(heap)
        self._heap[partition] = heap

    def _indexes(self) -> tuple[dict[int, Any], ...]:
        return self._heap, self._open

    def row_failed(self, partition: int, store: PartitionStore) -> None:
        return None  # a window indexed for a dropped row is skipped when it closes

    # -- rows --------------------------------------------------------------------
    def _update(self, raw: bytes | None, value: int | float | None) -> dict[str, Any]:
        return fold(self.functions, orjson.loads(raw) if raw is not None else {}, value)

    def process(self, partition: int, store: PartitionStore, token: Token) -> Out:
        key = key_of(token, self.key_field)
        value = self._value(token)
        if self.size is None:
            skey = b"k|" + key.encode()
            agg = self._update(store.get(skey), value)
            store.put(skey, orjson.dumps(agg))
            out = token.copy()
            out["payload"] = {"key": key, **agg}
            return [(None, out)]
        t = time_of(token, self.time_field)
        wm = self.wms.wm[partition]
        size, lateness = self.size, self.lateness
        starts = [ws for ws in self._windows(t) if ws + size + lateness > wm]
        if not starts:
            return self._late(token, t, wm)
        windows, heap = self._open[partition], self._heap[partition]
        for ws in starts:
            skey = b"w|%020d|%s" % (ws, key.encode())
            store.put(skey, orjson.dumps(self._update(store.get(skey), value)))
            keys = windows.get(ws)
            if keys is None:
                keys = windows[ws] = set()
                heapq.heappush(heap, ws)
            keys.add(key)
        if t <= wm:
            return []
        self.wms.wm[partition] = t
        return self._close_due(partition, store, t)

    def _windows(self, t: int) -> Iterator[int]:
        assert self.size is not None
        adv = self.advance
        assert adv is not None
        ws = t - t % adv
        while ws > t - self.size:
            yield ws
            ws -= adv

    def _close_due(self, partition: int, store: PartitionStore, wm: int) -> Out:
        heap, windows = self._heap[partition], self._open[partition]
        assert self.size is not None
        size, lateness = self.size, self.lateness
        out: Out = []
        while heap and heap[0] + size + lateness <= wm:
            ws = heapq.heappop(heap)
            for key in sorted(windows.pop(ws, ())):
                skey = b"w|%020d|%s" % (ws, key.encode())
                raw = store.get(skey)
                if raw is None:
                    continue
                store.delete(skey)
                out.append((None, self._result(key, ws, orjson.loads(raw))))
        return out

    def _result(self, key: str, ws: int, agg: dict[str, Any]) -> Token:
        assert self.size is not None
        return self._window_result(key, ws, ws + self.size, agg)


class KeyValueState:
    """What a user stateful function sees: a per-partition mapping of str -> JSON value.

    Reads see the row's own writes and the batch's; writes become durable only if the
    batch commits (and vanish if the function raises)."""

    __slots__ = ("_store",)

    def __init__(self, store: PartitionStore) -> None:
        self._store = store

    def get(self, key: str, default: Any = None) -> Any:
        raw = self._store.get(b"u|" + key.encode())
        return default if raw is None else orjson.loads(raw)

    def __getitem__(self, key: str) -> Any:
        raw = self._store.get(b"u|" + key.encode())
        if raw is None:
            raise KeyError(key)
        return orjson.loads(raw)

    def __setitem__(self, key: str, value: Any) -> None:
        self._store.put(b"u|" + key.encode(), orjson.dumps(value))

    def __delitem__(self, key: str) -> None:
        self._store.delete(b"u|" + key.encode())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._store.get(b"u|" + key.encode()) is not None


UserFn = Callable[[KeyValueState, Token], Iterable[dict[str, Any]] | None]


class UserStateful:
    """``fn(state, token) -> payloads``: the i-th payload becomes child ``<token_id>/<i>``."""

    def __init__(self, fn: UserFn) -> None:
        self.fn = fn

    def open(self, partition: int, store: PartitionStore) -> None:
        return None

    def close(self, partition: int) -> None:
        return None

    def end_batch(self, partition: int, store: PartitionStore) -> None:
        return None

    def row_failed(self, partition: int, store: PartitionStore) -> None:
        return None

    def process(self, partition: int, store: PartitionStore, token: Token) -> Out:
        result = self.fn(KeyValueState(store), token)
        if result is None:
            return []
        out: Out = []
        for i, payload in enumerate(result):
            if not isinstance(payload, dict):
                raise TypeError(f"stateful function yielded {type(payload).__name__}, expected dict")
            child = token.copy()
            child["payload"] = payload
            child["token_id"] = child_token_id(token["token_id"], i)
            out.append((None, child))
        return out
