"""File sink: prepare is durable but invisible; finalize is idempotent and never overwrites
(I3, I8); rows the writer cannot place are refused as ``Reject``s, never a failed part (I7)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.journal.events import JournalEvent, PartInfo
from app.journal.keys import part_key
from app.journal.writer import Correlation, part_event
from app.sinks import parquet as parquet_module
from app.sinks.base import UNWRITABLE, Chunk, Prepared, Reject, Sink
from app.sinks.files import FileSink, PartConflictError, PartMissingError
from app.sinks.parquet import ParquetPart
from app.tokens import Token

Fmt = Literal["ndjson", "parquet"]
FORMATS: list[Fmt] = ["ndjson", "parquet"]


@dataclass(frozen=True)
class Rows:
    """A test-only ``PartRows``: ``tokens`` at ``offsets`` (default ``first_offset + i``),
    handed out ``chunk`` rows at a time (0: one chunk)."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    tokens: Sequence[Token] = ()
    offsets: Sequence[int] | None = None
    sizes: Sequence[int] | None = None
    chunk: int = 0

    def chunks(self) -> Iterator[Chunk]:
        n = len(self.tokens)
        offsets = list(self.offsets) if self.offsets is not None else [self.first_offset + i for i in range(n)]
        sizes = list(self.sizes) if self.sizes is not None else [len(orjson.dumps(t)) for t in self.tokens]
        step = self.chunk or max(n, 1)
        for start in range(0, n, step):
            end = start + step
            yield Chunk(list(self.tokens[start:end]), offsets[start:end], sizes[start:end])


def _rows(topic: str, partition: int, first: int, last: int, tokens: Sequence[Token], **kw: Any) -> Rows:
    return Rows(topic, partition, first, last, list(tokens), **kw)


def _tok(i: int, payload: dict[str, Any] | None = None, key: str | None = "k") -> Token:
    return Token(
        token_id=f"src:{i}",
        key=None if key is None else f"{key}{i % 3}",
        payload=payload if payload is not None else {"id": i, "name": f"n{i}", "amount": i * 1.5, "tags": ["a", "b"]},
        source_id="src",
        source_position=str(i),
        event_time_ms=1_700_000_000_000 + i if i % 4 else None,
        lineage=[],
    )


def _tokens(n: int = 50) -> list[Token]:
    return [_tok(i) for i in range(n)]


def _expected(tokens: Sequence[Token]) -> list[dict[str, Any]]:
    return [
        {"_token_id": t["token_id"], "_key": t["key"], "_event_time_ms": t["event_time_ms"], **t["payload"]}
        for t in tokens
    ]


def _read(path: str, fmt: Fmt) -> list[dict[str, Any]]:
    if fmt == "ndjson":
        data = Path(path).read_bytes()
        assert data.endswith(b"\n") or data == b""
        return [orjson.loads(line) for line in data.splitlines()]
    rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
    return rows


def _ids(path: str, fmt: Fmt) -> list[str]:
    return [r["_token_id"] for r in _read(path, fmt)]


def _staged(w: FileSink) -> list[Path]:
    return sorted((w.dir / "_staging").rglob("*.tmp"))


@pytest.mark.parametrize("fmt", FORMATS)
def test_prepare_then_finalize_makes_the_tokens_visible_in_order(tmp_path: Path, fmt: Fmt) -> None:
    w: Sink = FileSink("s", tmp_path, fmt)
    toks = _tokens()
    prepared = w.prepare(_rows("t", 1, 10, 59, toks))
    assert prepared.rejects == []
    part = prepared.info
    staging, final = Path(part.staging_path), Path(part.final_path)
    assert staging.exists() and not final.exists()  # durable but invisible
    assert staging.parent == tmp_path / "_staging" / "t" / "1"
    assert staging.name.startswith(f"part-{10:020d}-{59:020d}.") and staging.name.endswith(f".{fmt}.tmp")
    assert final == tmp_path / "t" / "partition=1" / f"part-{10:020d}-{59:020d}.{fmt}"
    got = (part.sink, part.topic, part.partition, part.first_offset, part.last_offset, part.rows)
    assert got == ("s", "t", 1, 10, 59, 50)
    assert part.bytes == staging.stat().st_size
    assert part.checksum == hashlib.sha256(staging.read_bytes()).hexdigest()
    assert w.commit_external(prepared).info == part  # the Kafka transaction is the commit point
    assert w.finalize(part) is True
    assert final.exists() and not staging.exists()
    assert hashlib.sha256(final.read_bytes()).hexdigest() == part.checksum
    assert _read(part.final_path, fmt) == _expected(toks)
    assert w.finalize(part) is False  # idempotent: re-driven from the journal
    assert isinstance(w, FileSink) and w.leftover_staging("t", 1) == []


def test_ndjson_keeps_payload_insertion_order(tmp_path: Path) -> None:
    w = FileSink("s", tmp_path, "ndjson")
    part = w.prepare(_rows("t", 0, 0, 0, [_tok(1, {"z": 1, "a": 2, "m": {"y": 1, "b": 2}})])).info
    w.finalize(part)
    assert Path(part.final_path).read_bytes() == (
        b'{"_token_id":"src:1","_key":"k1","_event_time_ms":1700000000001,"z":1,"a":2,"m":{"y":1,"b":2}}\n'
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_second_attempt_after_final_removes_its_staging_and_leaves_the_final_alone(tmp_path: Path, fmt: Fmt) -> None:
    w = FileSink("s", tmp_path, fmt)
    toks = _tokens(20)
    part = w.prepare(_rows("t", 0, 0, 19, toks)).info
    assert w.finalize(part) is True
    final = Path(part.final_path)
    before = final.stat()
    again = w.prepare(_rows("t", 0, 0, 19, toks)).info  # a retry after a crash between rename and part_finalized
    assert again.staging_path != part.staging_path and again.checksum == part.checksum
    assert w.finalize(again) is False
    assert not Path(again.staging_path).exists()
    after = final.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
    assert w.leftover_staging("t", 0) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_two_prepares_of_one_range_never_collide(tmp_path: Path, fmt: Fmt) -> None:
    w = FileSink("s", tmp_path, fmt)
    a = w.prepare(_rows("t", 0, 5, 9, _tokens(5))).info
    b = w.prepare(_rows("t", 0, 5, 9, _tokens(5))).info
    assert a.staging_path != b.staging_path and a.final_path == b.final_path
    assert Path(a.staging_path).read_bytes() == Path(b.staging_path).read_bytes()
    assert w.leftover_staging("t", 0) == sorted([a.staging_path, b.staging_path])


def test_missing_part_is_loud(tmp_path: Path) -> None:
    w = FileSink("s", tmp_path, "ndjson")
    prepared = w.prepare(_rows("t", 0, 0, 9, _tokens(10)))
    w.discard(prepared)
    with pytest.raises(PartMissingError, match=r"t/0 0\.\.9"):
        w.finalize(prepared.info)


def test_final_with_other_content_is_never_overwritten(tmp_path: Path) -> None:
    w = FileSink("s", tmp_path, "ndjson")
    part = w.prepare(_rows("t", 0, 0, 9, _tokens(10))).info
    final = Path(part.final_path)
    final.parent.mkdir(parents=True)
    final.write_bytes(b"different")
    with pytest.raises(PartConflictError, match=r"t/0 0\.\.9"):
        w.finalize(part)
    assert final.read_bytes() == b"different"
    assert Path(part.staging_path).exists()  # kept as evidence


def test_staged_bytes_that_do_not_match_the_checksum_are_not_made_visible(tmp_path: Path) -> None:
    w = FileSink("s", tmp_path, "ndjson")
    part = w.prepare(_rows("t", 0, 0, 9, _tokens(10))).info
    Path(part.staging_path).write_bytes(b"torn")
    with pytest.raises(PartConflictError, match="staged"):
        w.finalize(part)
    assert not Path(part.final_path).exists()


_SUBPROCESS_WRITE = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from tests.unit.test_sink_files import _rows, _tokens
from app.sinks.files import FileSink
part = FileSink("s", Path(sys.argv[1]), sys.argv[2]).prepare(_rows("t", 3, 100, 299, _tokens(200))).info
print(part.staging_path)
"""


@pytest.mark.parametrize("fmt", FORMATS)
def test_same_tokens_give_byte_identical_files(tmp_path: Path, fmt: Fmt) -> None:
    toks = _tokens(200)
    a = FileSink("s", tmp_path / "a", fmt).prepare(_rows("t", 3, 100, 299, toks)).info
    b = FileSink("s", tmp_path / "b", fmt).prepare(_rows("t", 3, 100, 299, [dict(t) for t in toks])).info  # type: ignore[misc]
    assert a.checksum == b.checksum and a.bytes == b.bytes
    assert Path(a.staging_path).read_bytes() == Path(b.staging_path).read_bytes()
    # another process (fresh interpreter, other hash seed) writes the same bytes too
    repo = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", _SUBPROCESS_WRITE, str(tmp_path / "c"), fmt, repo],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=repo,
    ).stdout.strip()
    assert Path(out).read_bytes() == Path(a.staging_path).read_bytes()


def test_discard_removes_the_staging_file_and_tolerates_absence(tmp_path: Path) -> None:
    w = FileSink("s", tmp_path, "parquet")
    prepared = w.prepare(_rows("t", 2, 0, 4, _tokens(5)))
    w.discard(prepared)
    assert not Path(prepared.info.staging_path).exists() and not Path(prepared.info.final_path).exists()
    w.discard(prepared)  # no error the second time
    assert w.leftover_staging("t", 2) == []


def test_leftover_staging_lists_only_that_partition(tmp_path: Path) -> None:
    w = FileSink("s", tmp_path, "ndjson")
    mine = [w.prepare(_rows("t", 1, i * 10, i * 10 + 9, _tokens(3))).info.staging_path for i in (2, 0, 1)]
    w.prepare(_rows("t", 10, 0, 9, _tokens(3)))
    w.prepare(_rows("t", 0, 0, 9, _tokens(3)))
    w.prepare(_rows("u", 1, 0, 9, _tokens(3)))
    assert w.leftover_staging("t", 1) == sorted(mine)
    assert w.leftover_staging("t", 7) == [] and w.leftover_staging("nope", 1) == []
    for path in w.leftover_staging("t", 1):
        w.remove_staging(path)
    w.remove_staging(mine[0])  # already gone: no error
    assert w.leftover_staging("t", 1) == [] and len(w.leftover_staging("t", 10)) == 1
    with pytest.raises(ValueError, match="not a staging file"):
        w.remove_staging(str(tmp_path / "t" / "partition=1" / "part.ndjson"))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("field", ["_token_id", "_key", "_event_time_ms"])
def test_payload_field_colliding_with_the_envelope_is_refused_as_a_row(tmp_path: Path, fmt: Fmt, field: str) -> None:
    """Was a ``ValueError`` for the whole part; now only that row is refused (I7)."""
    toks = [*_tokens(3), _tok(7, {"x": 1, field: "boom"})]
    w = FileSink("s", tmp_path, fmt)
    prepared = w.prepare(_rows("t", 0, 0, 3, toks))
    assert [(r.offset, r.reason) for r in prepared.rejects] == [(3, UNWRITABLE)]
    assert "src:7" in prepared.rejects[0].message and repr(field) in prepared.rejects[0].message
    assert prepared.info.rows == 3
    assert _ids(prepared.info.staging_path, fmt) == ["src:0", "src:1", "src:2"]  # the row is absent, never overwritten
    assert _read(prepared.info.staging_path, fmt) == _expected(toks[:3])
    assert w.leftover_staging("t", 0) == [prepared.info.staging_path]  # staged: the part goes on


def test_parquet_takes_the_union_of_payload_fields(tmp_path: Path) -> None:
    w = FileSink("s", tmp_path, "parquet")
    toks = [_tok(0, {"a": 1}), _tok(1, {"a": 2, "b": "x"}), _tok(2, {"c": True}), _tok(3, {})]
    part = w.prepare(_rows("t", 0, 0, 3, toks)).info
    w.finalize(part)
    table = pq.read_table(part.final_path)
    assert table.column_names == ["_token_id", "_key", "_event_time_ms", "a", "b", "c"]
    assert [(r["a"], r["b"], r["c"]) for r in table.to_pylist()] == [
        (1, None, None),
        (2, "x", None),
        (None, None, True),
        (None, None, None),
    ]


def test_parquet_refuses_the_row_with_another_type_in_one_field(tmp_path: Path) -> None:
    """Was a ``ValueError`` for the whole part; now the first type wins, the other row is refused."""
    w = FileSink("s", tmp_path, "parquet")
    prepared = w.prepare(_rows("t", 0, 0, 1, [_tok(0, {"a": 1}), _tok(1, {"a": "one"})]))
    assert [(r.offset, r.reason) for r in prepared.rejects] == [(1, UNWRITABLE)]
    assert "'a'" in prepared.rejects[0].message and "'one'" in prepared.rejects[0].message
    assert prepared.info.rows == 1
    assert _read(prepared.info.staging_path, "parquet") == _expected([_tok(0, {"a": 1})])
    assert w.leftover_staging("t", 0) == [prepared.info.staging_path]


@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_part_and_all_null_envelope(tmp_path: Path, fmt: Fmt) -> None:
    w = FileSink("s", tmp_path, fmt)
    empty = w.prepare(_rows("t", 0, 0, 9, [])).info  # e.g. every row of the range went to the DLQ
    assert empty.rows == 0 and w.finalize(empty) is True
    assert _read(empty.final_path, fmt) == []
    toks = [_tok(1, key=None)]
    toks[0]["event_time_ms"] = None
    part = w.prepare(_rows("t", 0, 10, 10, toks)).info
    w.finalize(part)
    assert _read(part.final_path, fmt) == _expected(toks)


@pytest.mark.parametrize(
    ("topic", "partition", "first", "last"),
    [("../x", 0, 0, 1), ("", 0, 0, 1), ("..", 0, 0, 1), ("a/b", 0, 0, 1), ("t", -1, 0, 1), ("t", 0, 5, 4)],
)
def test_bad_ranges_and_topic_names_are_rejected(
    tmp_path: Path, topic: str, partition: int, first: int, last: int
) -> None:
    with pytest.raises(ValueError):
        FileSink("s", tmp_path, "ndjson").prepare(_rows(topic, partition, first, last, _tokens(1)))
    assert list(tmp_path.iterdir()) == []


def test_unknown_format_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="csv"):
        FileSink("s", tmp_path, "csv")  # type: ignore[arg-type]


def _mixed_tokens() -> list[Token]:
    """Rows whose columns vary: ``late`` appears only after row 7, ``gap`` is null in
    rows 4..11, ``num`` is int in the first rows and float later."""
    out = []
    for i in range(20):
        payload: dict[str, Any] = {"id": i, "num": i if i < 6 else i + 0.5, "gap": None if 4 <= i < 12 else f"g{i}"}
        if i > 7:
            payload["late"] = {"x": i}
        out.append(_tok(i, payload))
    return out


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("size", [1, 4, 7, 20])
def test_a_part_prepared_in_chunks_is_byte_identical_to_one_prepared_whole(tmp_path: Path, fmt: Fmt, size: int) -> None:
    toks = _mixed_tokens()
    w = FileSink("s", tmp_path, fmt)
    whole_p = w.prepare(_rows("t", 0, 0, 19, toks))
    chunked_p = w.prepare(_rows("t", 0, 0, 19, toks, chunk=size))
    whole, chunked = whole_p.info, chunked_p.info
    assert whole_p.rejects == chunked_p.rejects == []
    assert chunked.rows == whole.rows == 20
    assert (chunked.checksum, chunked.bytes) == (whole.checksum, whole.bytes)
    assert Path(chunked.staging_path).read_bytes() == Path(whole.staging_path).read_bytes()
    assert _read(chunked.staging_path, fmt) == _read(whole.staging_path, fmt)
    assert [r["_token_id"] for r in _read(chunked.staging_path, fmt)] == [t["token_id"] for t in toks]
    if fmt == "parquet":  # int64 chunks and double chunks still promote to one double column
        assert str(pq.read_schema(whole.staging_path).field("num").type) == "double"


def test_chunks_that_cannot_share_a_parquet_column_refuse_the_later_rows_naming_the_field(tmp_path: Path) -> None:
    """Was a ``ValueError`` for the whole part: the first chunk's type wins."""
    toks = [_tok(0, {"v": 1}), _tok(1, {"v": "one"})]
    w = FileSink("s", tmp_path, "parquet")
    prepared = w.prepare(_rows("t", 0, 0, 1, toks, chunk=1))
    assert [(r.offset, r.reason) for r in prepared.rejects] == [(1, UNWRITABLE)]
    assert "payload field 'v'" in prepared.rejects[0].message
    assert _ids(prepared.info.staging_path, "parquet") == ["src:0"]
    assert _staged(w) == [Path(prepared.info.staging_path)]


# -- rows the writer refuses (issue 15, defect 1) --------------------------------------


def _poison_tokens() -> list[Token]:
    """The issue's row: ``nested.a`` holds a struct in row 3, lists of ints elsewhere."""
    toks = [_tok(i, {"id": i, "nested": {"a": [1, 2, i]}}) for i in range(8)]
    toks[3] = _tok(3, {"id": 3, "nested": {"a": [1, 2, {"b": None}]}})
    return toks


@pytest.mark.parametrize("size", [0, 1, 3])
def test_the_issues_poison_row_is_refused_and_the_part_is_written(tmp_path: Path, size: int) -> None:
    toks = _poison_tokens()
    w = FileSink("s", tmp_path, "parquet")
    prepared = w.prepare(_rows("t", 0, 100, 107, toks, chunk=size))
    assert [(r.offset, r.reason) for r in prepared.rejects] == [(103, UNWRITABLE)]
    assert "payload field 'nested'" in prepared.rejects[0].message
    assert prepared.info.rows == 7
    assert w.finalize(prepared.info) is True
    rows = _read(prepared.info.final_path, "parquet")
    assert [r["_token_id"] for r in rows] == [f"src:{i}" for i in range(8) if i != 3]
    assert rows == _expected([t for i, t in enumerate(toks) if i != 3])


def test_the_poison_row_first_in_the_part_is_refused_and_the_next_row_sets_the_type(tmp_path: Path) -> None:
    toks = _poison_tokens()
    toks[0], toks[3] = toks[3], toks[0]
    prepared = FileSink("s", tmp_path, "parquet").prepare(_rows("t", 0, 0, 7, toks))
    assert [(r.offset, r.reason) for r in prepared.rejects] == [(0, UNWRITABLE)]
    assert "payload field 'nested'" in prepared.rejects[0].message
    assert _ids(prepared.info.staging_path, "parquet") == [
        "src:1",
        "src:2",
        "src:0",
        "src:4",
        "src:5",
        "src:6",
        "src:7",
    ]


def test_a_type_change_across_chunks_keeps_the_first_type_and_refuses_the_other_rows(tmp_path: Path) -> None:
    toks = [_tok(i, {"id": i, "v": i}) for i in range(4)] + [_tok(i, {"id": i, "v": f"s{i}"}) for i in range(4, 8)]
    prepared = FileSink("s", tmp_path, "parquet").prepare(_rows("t", 0, 0, 7, toks, chunk=4))
    assert [(r.offset, r.reason) for r in prepared.rejects] == [(i, UNWRITABLE) for i in range(4, 8)]
    assert all("payload field 'v'" in r.message and "int64" in r.message for r in prepared.rejects)
    assert prepared.info.rows == 4
    path = prepared.info.staging_path
    assert _read(path, "parquet") == _expected(toks[:4])
    assert str(pq.read_schema(path).field("v").type) == "int64"


def test_int_chunks_and_double_chunks_still_promote_to_double(tmp_path: Path) -> None:
    toks = [_tok(i, {"v": i}) for i in range(3)] + [_tok(i, {"v": i + 0.5}) for i in range(3, 6)]
    prepared = FileSink("s", tmp_path, "parquet").prepare(_rows("t", 0, 0, 5, toks, chunk=3))
    assert prepared.rejects == [] and prepared.info.rows == 6
    assert str(pq.read_schema(prepared.info.staging_path).field("v").type) == "double"
    assert [r["v"] for r in _read(prepared.info.staging_path, "parquet")] == [0.0, 1.0, 2.0, 3.5, 4.5, 5.5]


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_row_over_max_row_bytes_is_refused(tmp_path: Path, fmt: Fmt) -> None:
    toks = _tokens(4)
    w = FileSink("s", tmp_path, fmt, max_row_bytes=1000)
    prepared = w.prepare(_rows("t", 0, 0, 3, toks, sizes=[10, 1000, 1001, 10]))
    assert [(r.offset, r.reason) for r in prepared.rejects] == [(2, UNWRITABLE)]
    assert "src:2" in prepared.rejects[0].message and "1001" in prepared.rejects[0].message
    assert prepared.info.rows == 3
    assert _ids(prepared.info.staging_path, fmt) == ["src:0", "src:1", "src:3"]


def _refusing_tokens() -> list[Token]:
    """Rows Parquet refuses for several reasons, and rows both formats refuse."""
    toks = _poison_tokens()
    toks.append(_tok(8, {"id": "eight", "nested": {"a": [1]}}))  # ``id`` changes type
    toks.append(_tok(9, {"id": 9, "_key": "clash"}))  # reserved name: refused by both formats
    toks.append(_tok(10, {"id": 10, "nested": {"a": [4]}}))  # too large: refused by both formats
    return toks


@pytest.mark.parametrize("fmt", FORMATS)
def test_refusals_are_deterministic(tmp_path: Path, fmt: Fmt) -> None:
    toks = _refusing_tokens()
    sizes = [10] * 10 + [5000]
    a = FileSink("s", tmp_path / "a", fmt, max_row_bytes=4096).prepare(_rows("t", 0, 0, 10, toks, sizes=sizes, chunk=3))
    b = FileSink("s", tmp_path / "b", fmt, max_row_bytes=4096).prepare(
        _rows("t", 0, 0, 10, [dict(t) for t in toks], sizes=sizes, chunk=3)  # type: ignore[misc]
    )
    assert a.rejects == b.rejects and a.rejects
    assert (a.info.rows, a.info.bytes, a.info.checksum) == (b.info.rows, b.info.bytes, b.info.checksum)
    assert Path(a.info.staging_path).read_bytes() == Path(b.info.staging_path).read_bytes()
    assert a.info.rows == len(toks) - len(a.rejects)


def test_ndjson_refuses_only_reserved_names_and_too_large_rows(tmp_path: Path) -> None:
    """NDJSON has no column types: what Parquet refuses for a type, NDJSON writes."""
    toks = _refusing_tokens()
    sizes = [10] * 10 + [5000]
    nd = FileSink("s", tmp_path / "n", "ndjson", max_row_bytes=4096).prepare(_rows("t", 0, 0, 10, toks, sizes=sizes))
    pa_ = FileSink("s", tmp_path / "p", "parquet", max_row_bytes=4096).prepare(_rows("t", 0, 0, 10, toks, sizes=sizes))
    assert [r.offset for r in nd.rejects] == [9, 10]
    assert [r.offset for r in pa_.rejects] == [3, 8, 9, 10]  # the poison row and the type change too
    assert {r.reason for r in (*nd.rejects, *pa_.rejects)} == {UNWRITABLE}
    assert _read(nd.info.staging_path, "ndjson") == _expected(toks[:9])
    assert _ids(pa_.info.staging_path, "parquet") == [f"src:{i}" for i in (0, 1, 2, 4, 5, 6, 7)]


# -- recovery ---------------------------------------------------------------------------

CORR = Correlation("p", "sink", "w1", "r1")


def _journal(*events: tuple[str, PartInfo]) -> dict[str, JournalEvent]:
    """The latest event per key, as ``load_journal`` gives it (later events win)."""
    out: dict[str, JournalEvent] = {}
    for kind, info in events:
        key = part_key(info.sink, info.topic, info.partition, info.first_offset)
        out[key] = part_event(CORR, kind, key, info)
    return out


def test_recover_plans_finalize_for_committed_parts_and_discard_for_unreferenced_staging(tmp_path: Path) -> None:
    w = FileSink("s", tmp_path, "ndjson")
    committed = w.prepare(_rows("t", 0, 0, 9, _tokens(10))).info  # committed, not finalized
    committed_p1 = w.prepare(_rows("t", 1, 0, 4, _tokens(5))).info  # committed, not finalized
    done = w.prepare(_rows("t", 0, 10, 19, _tokens(10))).info  # committed and finalized
    assert w.finalize(done) is True
    orphan = w.prepare(_rows("t", 0, 20, 29, _tokens(10))).info  # never committed
    orphan_p1 = w.prepare(_rows("t", 1, 5, 9, _tokens(5))).info  # never committed
    other_partition = w.prepare(_rows("t", 2, 0, 9, _tokens(10))).info  # not being recovered
    other_sink = part_event(CORR, "part_committed", part_key("x", "t", 0, 30), committed)  # another sink's part
    calls: list[int] = []

    def journal() -> dict[str, JournalEvent]:
        calls.append(1)
        events = _journal(
            ("part_committed", committed),
            ("part_committed", committed_p1),
            ("part_committed", done),
            ("part_finalized", done),
        )
        events[other_sink.key] = other_sink
        return events

    plan = w.recover([("t", 0), ("t", 1)], {("t", 0): 20, ("t", 1): 5}, journal)
    assert calls == [1]
    assert plan.finalize == [committed, committed_p1]
    assert sorted(plan.discard) == sorted([orphan.staging_path, orphan_p1.staging_path])
    assert committed.staging_path not in plan.discard and other_partition.staging_path not in plan.discard
    assert plan.discard_topic == "t"
    assert plan.reconcile == [] and plan.seek == {}
    # carrying the plan out makes the committed parts visible and leaves no orphan staging
    for info in plan.finalize:
        assert w.finalize(info) is True
    for loc in plan.discard:
        w.remove_staging(loc)
    assert w.leftover_staging("t", 0) == [] and w.leftover_staging("t", 1) == []
    assert w.leftover_staging("t", 2) == [other_partition.staging_path]
    assert _read(committed.final_path, "ndjson") == _expected(_tokens(10))


def test_recover_with_nothing_to_do_is_an_empty_plan(tmp_path: Path) -> None:
    w = FileSink("s", tmp_path, "parquet")
    plan = w.recover([("t", 0)], {("t", 0): None}, dict)
    assert (plan.finalize, plan.discard, plan.reconcile, plan.seek) == ([], [], [], {})


def test_prepared_parts_carry_their_rejects_sorted_by_offset(tmp_path: Path) -> None:
    toks = _refusing_tokens()
    prepared: Prepared = FileSink("s", tmp_path, "parquet", max_row_bytes=4096).prepare(
        _rows("t", 0, 0, 10, toks, sizes=[10] * 10 + [5000], chunk=2)
    )
    assert [r.offset for r in prepared.rejects] == sorted(r.offset for r in prepared.rejects)
    assert all(isinstance(r, Reject) for r in prepared.rejects)


@pytest.mark.parametrize("size", [0, 1])
def test_a_float_in_a_salvaged_int_column_is_never_truncated(tmp_path: Path, size: int) -> None:
    toks = [_tok(0, {"a": 1}), _tok(1, {"a": 2.5}), _tok(2, {"a": "x"})]
    prepared = FileSink("s", tmp_path, "parquet").prepare(_rows("t", 0, 0, 2, toks, chunk=size))
    written = {r["_token_id"]: r["a"] for r in _read(prepared.info.staging_path, "parquet")}
    refused = {r.offset for r in prepared.rejects}
    assert 2 in refused and "src:2" not in written
    assert 1 in refused or written.get("src:1") == 2.5  # refused, or written exactly: never 2


@pytest.mark.parametrize("chunk", [0, 3])
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_token_id_repeated_in_a_part_is_written_once(tmp_path: Path, fmt: Fmt, chunk: int) -> None:
    """A row delivered twice upstream (the same token id at two offsets of one part, as an
    idempotent-producer retry across a broker restart can leave) is written once: the
    file equals the one without the repeat, and nothing goes to the DLQ for it."""
    toks = _tokens(10)
    twice = [*toks[:6], *toks[2:6], *toks[6:]]  # offsets 0..13, ids 2..5 a second time
    sink = FileSink("s", tmp_path / "a", fmt)
    p = sink.prepare(_rows("t", 0, 0, 13, twice, chunk=chunk))
    clean = FileSink("s", tmp_path / "b", fmt).prepare(_rows("t", 0, 0, 13, toks, offsets=list(range(10)), chunk=chunk))
    assert p.repeated == 4 and p.rejects == [] and p.info.rows == 10
    assert p.info.checksum == clean.info.checksum  # byte-identical to the part without the repeat
    assert sink.finalize(p.info) is True
    assert _ids(p.info.final_path, fmt) == [t["token_id"] for t in toks]


_values = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(2**63, 2**64),  # no Arrow integer type holds these: the row is refused
    st.floats(allow_nan=False),
    st.text(max_size=5),
    st.booleans(),
    st.lists(st.integers(0, 9), max_size=3),
    st.fixed_dictionaries({"n": st.integers(0, 9)}),
)


@given(
    chunks=st.lists(
        st.lists(st.dictionaries(st.sampled_from("abcd"), _values, max_size=4), min_size=1, max_size=12),
        min_size=1,
        max_size=4,
    )
)
def test_parquet_chunk_inference_in_one_call_writes_what_the_per_column_path_writes(
    chunks: list[list[dict[str, Any]]],
) -> None:
    """A chunk's payload columns come from one struct inference when it succeeds; the file
    bytes and the refused rows must equal those of the column-by-column path."""

    def build(one_call: bool) -> tuple[bytes, int, dict[int, str]]:
        part = ParquetPart()
        base = 0
        for payloads in chunks:
            toks = [_tok(base + i, p) for i, p in enumerate(payloads)]
            base += len(toks)
            cols = list(dict.fromkeys(k for p in payloads for k in p))
            if one_call:
                part.add(toks, cols)
            else:
                with pytest.MonkeyPatch.context() as mp:
                    mp.setattr(parquet_module, "_struct_columns", lambda _p, _c: None)
                    part.add(toks, cols)
        data, rows, bad = part.finish()
        return data.to_pybytes(), rows, bad

    assert build(True) == build(False)
