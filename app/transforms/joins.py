"""Stream-table lookup join: each row joined with the table version in force at its event time.

The table is a compacted topic materialised in versioned stores
(``app.state.table``) that the topic itself feeds (``app.state.table_feed``). Before
each batch's rows (``begin_batch``, outside the row loop: a failing read stops the
batch, it never refuses rows), the stores of its partitions are caught up with the
table topic's end; each row then looks up its key at its event time:

* a version is in force: the row's payload gets the table fields (``fields``, or all
  of them) under ``prefix``, same token id as the row;
* none (no record yet at that time, or a tombstone): ``inner`` drops the row, ``left``
  passes it with the listed fields set to null;
* the row's time is older than the history the store keeps: DLQ
  ``join_history_expired`` (never an answer from purged history);
* no key: DLQ ``no_key``; no integer event time: DLQ ``no_event_time``.

Determinism: the answer for a row depends only on its key, its event time and the
table records with timestamps up to that time. A rerun after a crash therefore
joins the same rows with the same versions provided every such table record was in
the topic when the row was first processed, as it is for a table written before
the rows that refer to it (reference data, or a table that changes ahead of the
stream's event time). A table record arriving after rows with later event times
were joined does not change those rows: they were committed with the version in
force then.

Exactly-once: the join writes no state of its own (the transform's changelog stays
empty); table records that fail to decode reach the DLQ in the batch transaction,
and leave the store only after that commit.
"""

from __future__ import annotations

from typing import Any

import orjson

from app.codecs.tokens import CodecError
from app.state.store import PartitionStore
from app.state.table import HistoryExpired, VersionedTable
from app.state.table_feed import TableFeed
from app.tokens import Token
from app.transforms.stateful import Out, key_of, time_of


class LookupJoin:
    """``lookup_join``: see the module docstring."""

    def __init__(
        self,
        feed: TableFeed,
        *,
        key_field: str | None,
        time_field: str | None,
        left: bool,
        fields: list[str],
        prefix: str,
    ) -> None:
        self.feed = feed
        self.key_field = key_field
        self.time_field = time_field
        self.left = left
        self.fields = fields
        self.prefix = prefix
        self._tables: dict[int, VersionedTable] = {}
        self._taken: list[tuple[VersionedTable, list[bytes]]] = []

    def open(self, partition: int, store: PartitionStore) -> None:
        self._tables[partition] = self.feed.open(partition)

    def close(self, partition: int) -> None:
        if self._tables.pop(partition, None) is not None:
            self.feed.close(partition)

    def begin_batch(self, partitions: list[int]) -> None:
        """Catch the tables of the batch's partitions up with the table topic (a global
        table, shared by all of them, once)."""
        for table in {id(t): t for p in partitions if (t := self._tables.get(p)) is not None}.values():
            self.feed.catch_up(table)

    def end_batch(self, partition: int, store: PartitionStore) -> None:
        return None

    def row_failed(self, partition: int, store: PartitionStore) -> None:
        return None  # no state of its own

    def process(self, partition: int, store: PartitionStore, token: Token) -> Out:
        table = self._tables[partition]
        key = key_of(token, self.key_field)
        t = time_of(token, self.time_field)
        try:
            raw = table.lookup(key.encode(), t)
        except HistoryExpired as exc:
            raise CodecError("join_history_expired", str(exc)) from exc
        if raw is None:
            if not self.left:
                return []
            row: dict[str, Any] = dict.fromkeys(self.fields)
        else:
            row = orjson.loads(raw)
            if self.fields:
                row = {f: row.get(f) for f in self.fields}
        out = token.copy()
        out["payload"] = {**token["payload"], **{self.prefix + k: v for k, v in row.items()}}
        return [(None, out)]

    # -- table records refused by the decoder ----------------------------------------
    def take_dead_letters(self) -> list[tuple[str, bytes]]:
        """DLQ records (reason, record) of refused table records, for this batch."""
        self._taken = []
        out: list[tuple[str, bytes]] = []
        for table in {id(t): t for t in self._tables.values()}.values():
            entries = table.dead_letters()
            if entries:
                self._taken.append((table, [k for k, _v in entries]))
                for _k, v in entries:
                    reason, _, record = v.partition(b"\x00")
                    out.append((reason.decode(), record))
        return out

    def dead_letters_committed(self) -> None:
        open_ = {id(t) for t in self._tables.values()}
        for table, keys in self._taken:
            if id(table) in open_:  # a store closed since keeps them: its next owner re-reports them
                table.forget_dead_letters(keys)
        self._taken = []
