"""Parquet parts built chunk by chunk as Arrow arrays, refusing rows instead of parts.

A part never holds all its rows as Python objects at once, only one decoded chunk
(the sink's memory bound). Envelope columns are typed ``string, string, int64``;
payload columns are the union of the payload keys in first-seen order, their types
inferred per column. The file equals the one a single ``pa.array`` per column over
all rows would give: chunks whose inferred types agree are concatenated, all-null
chunks take the column's type, and a column whose chunks disagree (``int64`` and
``double``) is re-inferred over all values.

When the values of a column cannot form one Arrow column (a list of ints in most
rows, a list holding a struct in one; an ``int`` column that meets a string), the
*first* type the column took in the part wins and every row whose value does not
convert to it is refused: ``bad`` maps its row index to a message naming the
field and both types, the row is left out of the file, and the caller sends it to
the DLQ. The outcome is a pure function of the part's rows in order, so a re-run
writes the same file and refuses the same rows (I8).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from app.tokens import Token

ENVELOPE = ("_token_id", "_key", "_event_time_ms")
_ENVELOPE_TYPES = (pa.string(), pa.string(), pa.int64())
_CONVERT_ERRORS = (pa.ArrowException, OverflowError, TypeError, ValueError)


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _struct_columns(payloads: list[dict[str, Any]], columns: Sequence[str]) -> dict[str, Any] | None:
    """Every payload column of a chunk from one type inference over the rows (a struct of
    the union of their fields, first-seen order), or None when that inference fails or
    names other fields: then the caller infers column by column and salvages. Each child
    is the array ``pa.array`` over that column's values gives (one inference, per field)."""
    try:
        struct = pa.array(payloads)
    except _CONVERT_ERRORS:
        return None
    typ = struct.type
    if not pa.types.is_struct(typ) or [typ.field(i).name for i in range(typ.num_fields)] != list(columns):
        return None
    return {c: struct.field(i) for i, c in enumerate(columns)}


class ParquetPart:
    """Rows added in order (``add``), then ``finish`` gives the file bytes and the refused rows."""

    def __init__(self) -> None:
        self.rows = 0
        self.envelope: list[list[Any]] = [[], [], []]
        self.columns: dict[str, list[Any]] = {}  # first-seen order -> one array per chunk
        self.bad: dict[int, str] = {}  # row index in the part -> why the row cannot be written

    def add(self, tokens: Sequence[Token], columns: Sequence[str]) -> None:
        """Append ``tokens`` whose payload keys are ``columns`` (first-seen order)."""
        n = len(tokens)
        for c in columns:
            if c not in self.columns:
                self.columns[c] = [pa.nulls(self.rows)] if self.rows else []
        for arrays, name, typ in zip(self.envelope, ("token_id", "key", "event_time_ms"), _ENVELOPE_TYPES, strict=True):
            arrays.append(pa.array([t[name] for t in tokens], typ))  # type: ignore[literal-required]
        payloads = [t["payload"] for t in tokens]
        inferred = _struct_columns(payloads, columns)
        present = set(columns)
        for c, arrays in self.columns.items():
            if c not in present:
                arrays.append(pa.nulls(n))
            elif inferred is not None:
                arrays.append(inferred[c])
            else:
                values = [p.get(c) for p in payloads]
                try:
                    arrays.append(pa.array(values))
                except _CONVERT_ERRORS:
                    arrays.append(self._salvage(c, values, self.rows, self._established(arrays)))
        self.rows += n

    @staticmethod
    def _established(arrays: list[Any]) -> Any:
        for a in arrays:
            if a.type != pa.null():
                return a.type
        return None

    def _salvage(self, name: str, values: Sequence[Any], base: int, target: Any) -> Any:
        """One array of ``target`` type (default: the first value's own type); every value
        that does not convert to it is refused (its row recorded in ``bad``) and nulled."""
        if target is None:
            for v in values:
                if v is None:
                    continue
                try:
                    target = pa.array([v]).type
                    break
                except _CONVERT_ERRORS as exc:
                    self.bad.setdefault(base + values.index(v), f"payload field {name!r}: {_describe(v)}: {exc}")
        kept: list[Any] = []
        for i, v in enumerate(values):
            if v is None or (base + i) in self.bad:
                kept.append(None)
                continue
            try:
                converted = pa.array([v], target).to_pylist()[0]
                if not isinstance(v, dict) and converted != v:  # e.g. 2.5 into int64 would become 2
                    raise ValueError(f"{_describe(v)} would be written as {_describe(converted)}")
            except _CONVERT_ERRORS:
                self.bad[base + i] = (
                    f"payload field {name!r}: value {_describe(v)} does not fit the column's type {target} "
                    "(taken from the first row of the part that has the field)"
                )
                kept.append(None)
            else:
                kept.append(v)
        if target is None:
            return pa.nulls(len(values))
        return pa.array(kept, target)

    def _column(self, name: str, arrays: list[Any]) -> Any:
        types = {a.type for a in arrays if a.type != pa.null()}
        if not types:
            return pa.nulls(self.rows)
        if len(types) == 1:
            (t,) = types
            return pa.concat_arrays([a if a.type == t else pa.nulls(len(a), t) for a in arrays])
        values = [v for a in arrays for v in a.to_pylist()]
        try:  # chunks inferred different types (e.g. int64 and double): infer over all values
            return pa.array(values)
        except _CONVERT_ERRORS:
            return self._salvage(name, values, 0, self._established(arrays))

    def finish(self) -> tuple[Any, int, dict[int, str]]:
        """(Parquet file bytes as a pyarrow Buffer, rows written, refused rows). The bytes are
        deterministic for a pyarrow version (``created_by`` names it; no timestamps)."""
        envelope = [
            pa.concat_arrays(a) if a else pa.array([], t) for a, t in zip(self.envelope, _ENVELOPE_TYPES, strict=True)
        ]
        payload = [self._column(c, a) for c, a in self.columns.items()]
        arrays = [*envelope, *payload]
        rows = self.rows
        if self.bad:
            keep = pa.array([i not in self.bad for i in range(self.rows)])
            arrays = [a.filter(keep) for a in arrays]
            rows -= len(self.bad)
        table = pa.Table.from_arrays(arrays, names=[*ENVELOPE, *self.columns])
        out = pa.BufferOutputStream()
        pq.write_table(table, out, compression="zstd", version="2.6", write_statistics=True)
        return out.getvalue(), rows, dict(self.bad)
