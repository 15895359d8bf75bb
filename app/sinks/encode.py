"""Rows of one part → the bytes of an NDJSON or Parquet object (shared by every file-like sink).

The encoding is a pure function of the part's rows in order (I8): the same rows give
byte-identical output and the same refusals for a given pyarrow version. Rows the
writer cannot place are refused, never a reason to stop (I7): each becomes a
``Reject`` (DLQ reason ``unwritable_row``) naming the token and the field:

* a payload field named like an envelope column (never silently overwritten);
* a row whose encoded input is larger than ``max_row_bytes``;
* NDJSON: a value orjson cannot encode; Parquet: a value that does not fit its
  column's type (``app.sinks.parquet``).

A row whose token id already appeared in the part (an upstream redelivery) is
written once and counted in ``repeated``. Rows arrive a chunk at a time, so at most
one chunk exists as Python objects (Parquet keeps the chunk's Arrow arrays).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from app.sinks.base import UNWRITABLE, Chunk, PartRows, Reject
from app.tokens import Token

ENVELOPE = ("_token_id", "_key", "_event_time_ms")  # the same names as app.sinks.parquet.ENVELOPE
DEFAULT_MAX_ROW_BYTES = 16 << 20
Format = Literal["ndjson", "parquet"]


@dataclass(slots=True)
class Encoded:
    """What ``encode`` found, complete once its iterator is exhausted."""

    rows: int = 0
    repeated: int = 0
    rejects: list[Reject] = field(default_factory=list)


def encode(part: PartRows, fmt: Format, max_row_bytes: int, out: Encoded) -> Iterator[Any]:
    """Bytes-like blobs of the part's object in ``fmt``; counts and refusals go to ``out``
    (rejects sorted by offset when the iterator ends)."""
    rejects = out.rejects
    seen: set[str] = set()
    if fmt == "ndjson":
        for chunk in part.chunks():
            tokens, offsets, _cols, dups = screen(chunk, max_row_bytes, rejects, seen)
            out.repeated += dups
            data, n = _ndjson(tokens, offsets, rejects)
            out.rows += n
            yield data
    elif fmt == "parquet":
        from app.sinks.parquet import ParquetPart

        builder = ParquetPart()
        kept: list[int] = []  # offset of each row handed to the builder, in order
        for chunk in part.chunks():
            tokens, offsets, cols, dups = screen(chunk, max_row_bytes, rejects, seen)
            out.repeated += dups
            builder.add(tokens, cols)
            kept.extend(offsets)
        data, rows, bad = builder.finish()
        out.rows = rows
        rejects.extend(Reject(kept[i], UNWRITABLE, msg) for i, msg in sorted(bad.items()))
        yield data
    else:
        raise ValueError(f"unknown part format {fmt!r} (ndjson or parquet)")
    rejects.sort(key=lambda r: r.offset)


def screen(
    chunk: Chunk, max_row_bytes: int, rejects: list[Reject], seen: set[str]
) -> tuple[Sequence[Token], Sequence[int], list[str], int]:
    """The chunk's writable rows with their offsets, their payload columns in first-seen
    order, and how many rows repeated a token id already in the part (``seen``): those
    are the same row delivered twice upstream and are written once. Refused rows are
    appended to ``rejects``."""
    tokens, offsets = chunk.tokens, chunk.offsets
    bad: dict[int, str] = {}
    if chunk.sizes and max(chunk.sizes) > max_row_bytes:
        for i, size in enumerate(chunk.sizes):
            if size > max_row_bytes:
                tid = tokens[i]["token_id"]
                bad[i] = f"token {tid!r}: row is {size} bytes, over the sink's max_row_bytes {max_row_bytes}"
    repeated: set[int] = set()
    last: Any = None
    clash: str | None = None
    cols: dict[str, None] = {}  # payload fields in first-seen order
    add, before = seen.add, len(seen)
    for i, t in enumerate(tokens):
        keys = t["payload"].keys()
        if keys != last:  # the common case: every row has the same fields
            last = keys
            clash = next((k for k in keys if k in ENVELOPE), None)
            cols.update(dict.fromkeys(keys))
        if clash is not None and i not in bad:
            bad[i] = f"token {t['token_id']!r}: payload field {clash!r} collides with the envelope column of that name"
        add(t["token_id"])
        if len(seen) == before + i + 1 - len(repeated):
            continue
        repeated.add(i)
    if bad or repeated:
        rejects.extend(Reject(offsets[i], UNWRITABLE, bad[i]) for i in sorted(bad))
        keep = [i for i in range(len(tokens)) if i not in bad and i not in repeated]
        tokens, offsets = [tokens[i] for i in keep], [offsets[i] for i in keep]
        return tokens, offsets, _columns(tokens), len(repeated)  # fields of the kept rows only
    return tokens, offsets, list(cols), 0


def _columns(tokens: Sequence[Token]) -> list[str]:
    cols: dict[str, None] = {}
    last: Any = None
    for t in tokens:
        keys = t["payload"].keys()
        if keys != last:
            cols.update(dict.fromkeys(keys))
            last = keys
    return list(cols)


def _ndjson_row(t: Token) -> bytes:
    return orjson.dumps(
        {"_token_id": t["token_id"], "_key": t["key"], "_event_time_ms": t["event_time_ms"], **t["payload"]}
    )


def _ndjson(tokens: Sequence[Token], offsets: Sequence[int], rejects: list[Reject]) -> tuple[bytes, int]:
    """NDJSON lines of ``tokens`` and how many; a row orjson refuses is a reject."""
    try:
        return b"".join([_ndjson_row(t) + b"\n" for t in tokens]), len(tokens)
    except (TypeError, orjson.JSONEncodeError):
        lines: list[bytes] = []
        for t, off in zip(tokens, offsets, strict=True):
            try:
                lines.append(_ndjson_row(t) + b"\n")
            except (TypeError, orjson.JSONEncodeError) as exc:
                rejects.append(Reject(off, UNWRITABLE, f"token {t['token_id']!r}: not JSON-encodable: {exc}"))
        return b"".join(lines), len(lines)
