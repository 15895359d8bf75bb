"""File part writer: prepare is durable but invisible; finalize is idempotent and never overwrites (I3, I8)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import orjson
import pyarrow.parquet as pq
import pytest

from app.sinks.base import PartWriter
from app.sinks.files import FilePartWriter, PartConflictError, PartMissingError
from app.tokens import Token

Fmt = Literal["ndjson", "parquet"]
FORMATS: list[Fmt] = ["ndjson", "parquet"]


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


def _expected(tokens: list[Token]) -> list[dict[str, Any]]:
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


@pytest.mark.parametrize("fmt", FORMATS)
def test_prepare_then_finalize_makes_the_tokens_visible_in_order(tmp_path: Path, fmt: Fmt) -> None:
    w: PartWriter = FilePartWriter("s", tmp_path, fmt)
    toks = _tokens()
    part = w.prepare("t", 1, 10, 59, toks)
    staging, final = Path(part.staging_path), Path(part.final_path)
    assert staging.exists() and not final.exists()  # durable but invisible
    assert staging.parent == tmp_path / "_staging" / "t" / "1"
    assert staging.name.startswith(f"part-{10:020d}-{59:020d}.") and staging.name.endswith(f".{fmt}.tmp")
    assert final == tmp_path / "t" / "partition=1" / f"part-{10:020d}-{59:020d}.{fmt}"
    got = (part.sink, part.topic, part.partition, part.first_offset, part.last_offset, part.rows)
    assert got == ("s", "t", 1, 10, 59, 50)
    assert part.bytes == staging.stat().st_size
    assert part.checksum == hashlib.sha256(staging.read_bytes()).hexdigest()
    assert w.finalize(part) is True
    assert final.exists() and not staging.exists()
    assert hashlib.sha256(final.read_bytes()).hexdigest() == part.checksum
    assert _read(part.final_path, fmt) == _expected(toks)
    assert w.finalize(part) is False  # idempotent: re-driven from the journal
    assert w.leftover_staging("t", 1) == []


def test_ndjson_keeps_payload_insertion_order(tmp_path: Path) -> None:
    w = FilePartWriter("s", tmp_path, "ndjson")
    part = w.prepare("t", 0, 0, 0, [_tok(1, {"z": 1, "a": 2, "m": {"y": 1, "b": 2}})])
    w.finalize(part)
    assert Path(part.final_path).read_bytes() == (
        b'{"_token_id":"src:1","_key":"k1","_event_time_ms":1700000000001,"z":1,"a":2,"m":{"y":1,"b":2}}\n'
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_second_attempt_after_final_removes_its_staging_and_leaves_the_final_alone(tmp_path: Path, fmt: Fmt) -> None:
    w = FilePartWriter("s", tmp_path, fmt)
    toks = _tokens(20)
    part = w.prepare("t", 0, 0, 19, toks)
    assert w.finalize(part) is True
    final = Path(part.final_path)
    before = final.stat()
    again = w.prepare("t", 0, 0, 19, toks)  # e.g. a retry after a crash between rename and part_finalized
    assert again.staging_path != part.staging_path and again.checksum == part.checksum
    assert w.finalize(again) is False
    assert not Path(again.staging_path).exists()
    after = final.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
    assert w.leftover_staging("t", 0) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_two_prepares_of_one_range_never_collide(tmp_path: Path, fmt: Fmt) -> None:
    w = FilePartWriter("s", tmp_path, fmt)
    a = w.prepare("t", 0, 5, 9, _tokens(5))
    b = w.prepare("t", 0, 5, 9, _tokens(5))
    assert a.staging_path != b.staging_path and a.final_path == b.final_path
    assert Path(a.staging_path).read_bytes() == Path(b.staging_path).read_bytes()
    assert w.leftover_staging("t", 0) == sorted([a.staging_path, b.staging_path])


def test_missing_part_is_loud(tmp_path: Path) -> None:
    w = FilePartWriter("s", tmp_path, "ndjson")
    part = w.prepare("t", 0, 0, 9, _tokens(10))
    w.discard(part)
    with pytest.raises(PartMissingError, match=r"t/0 0\.\.9"):
        w.finalize(part)


def test_final_with_other_content_is_never_overwritten(tmp_path: Path) -> None:
    w = FilePartWriter("s", tmp_path, "ndjson")
    part = w.prepare("t", 0, 0, 9, _tokens(10))
    final = Path(part.final_path)
    final.parent.mkdir(parents=True)
    final.write_bytes(b"different")
    with pytest.raises(PartConflictError, match=r"t/0 0\.\.9"):
        w.finalize(part)
    assert final.read_bytes() == b"different"
    assert Path(part.staging_path).exists()  # kept as evidence


def test_staged_bytes_that_do_not_match_the_checksum_are_not_made_visible(tmp_path: Path) -> None:
    w = FilePartWriter("s", tmp_path, "ndjson")
    part = w.prepare("t", 0, 0, 9, _tokens(10))
    Path(part.staging_path).write_bytes(b"torn")
    with pytest.raises(PartConflictError, match="staged"):
        w.finalize(part)
    assert not Path(part.final_path).exists()


_SUBPROCESS_WRITE = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from tests.unit.test_sink_files import _tokens
from app.sinks.files import FilePartWriter
part = FilePartWriter("s", Path(sys.argv[1]), sys.argv[2]).prepare("t", 3, 100, 299, _tokens(200))
print(part.staging_path)
"""


@pytest.mark.parametrize("fmt", FORMATS)
def test_same_tokens_give_byte_identical_files(tmp_path: Path, fmt: Fmt) -> None:
    toks = _tokens(200)
    a = FilePartWriter("s", tmp_path / "a", fmt).prepare("t", 3, 100, 299, toks)
    b = FilePartWriter("s", tmp_path / "b", fmt).prepare("t", 3, 100, 299, [dict(t) for t in toks])  # type: ignore[misc]
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
    w = FilePartWriter("s", tmp_path, "parquet")
    part = w.prepare("t", 2, 0, 4, _tokens(5))
    w.discard(part)
    assert not Path(part.staging_path).exists() and not Path(part.final_path).exists()
    w.discard(part)  # no error the second time
    assert w.leftover_staging("t", 2) == []


def test_leftover_staging_lists_only_that_partition(tmp_path: Path) -> None:
    w = FilePartWriter("s", tmp_path, "ndjson")
    mine = [w.prepare("t", 1, i * 10, i * 10 + 9, _tokens(3)).staging_path for i in (2, 0, 1)]
    w.prepare("t", 10, 0, 9, _tokens(3))
    w.prepare("t", 0, 0, 9, _tokens(3))
    w.prepare("u", 1, 0, 9, _tokens(3))
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
def test_payload_field_colliding_with_the_envelope_is_rejected(tmp_path: Path, fmt: Fmt, field: str) -> None:
    toks = [*_tokens(3), _tok(7, {"x": 1, field: "boom"})]
    w = FilePartWriter("s", tmp_path, fmt)
    with pytest.raises(ValueError, match=rf"src:7.*{field}"):
        w.prepare("t", 0, 0, 3, toks)
    assert w.leftover_staging("t", 0) == []  # nothing staged


def test_parquet_takes_the_union_of_payload_fields(tmp_path: Path) -> None:
    w = FilePartWriter("s", tmp_path, "parquet")
    toks = [_tok(0, {"a": 1}), _tok(1, {"a": 2, "b": "x"}), _tok(2, {"c": True}), _tok(3, {})]
    part = w.prepare("t", 0, 0, 3, toks)
    w.finalize(part)
    table = pq.read_table(part.final_path)
    assert table.column_names == ["_token_id", "_key", "_event_time_ms", "a", "b", "c"]
    assert [(r["a"], r["b"], r["c"]) for r in table.to_pylist()] == [
        (1, None, None),
        (2, "x", None),
        (None, None, True),
        (None, None, None),
    ]


def test_parquet_rejects_mixed_types_in_one_field(tmp_path: Path) -> None:
    w = FilePartWriter("s", tmp_path, "parquet")
    with pytest.raises(ValueError, match="'a'"):
        w.prepare("t", 0, 0, 1, [_tok(0, {"a": 1}), _tok(1, {"a": "one"})])
    assert w.leftover_staging("t", 0) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_part_and_all_null_envelope(tmp_path: Path, fmt: Fmt) -> None:
    w = FilePartWriter("s", tmp_path, fmt)
    empty = w.prepare("t", 0, 0, 9, [])  # e.g. every row of the range went to the DLQ
    assert empty.rows == 0 and w.finalize(empty) is True
    assert _read(empty.final_path, fmt) == []
    toks = [_tok(1, key=None)]
    toks[0]["event_time_ms"] = None
    part = w.prepare("t", 0, 10, 10, toks)
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
        FilePartWriter("s", tmp_path, "ndjson").prepare(topic, partition, first, last, _tokens(1))
    assert list(tmp_path.iterdir()) == []


def test_unknown_format_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="csv"):
        FilePartWriter("s", tmp_path, "csv")  # type: ignore[arg-type]


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
    w = FilePartWriter("s", tmp_path, fmt)
    whole = w.prepare("t", 0, 0, 19, toks)
    chunked = w.prepare_chunks("t", 0, 0, 19, (toks[i : i + size] for i in range(0, len(toks), size)))
    assert chunked.rows == whole.rows == 20
    assert (chunked.checksum, chunked.bytes) == (whole.checksum, whole.bytes)
    assert Path(chunked.staging_path).read_bytes() == Path(whole.staging_path).read_bytes()
    assert _read(chunked.staging_path, fmt) == _read(whole.staging_path, fmt)
    assert [r["_token_id"] for r in _read(chunked.staging_path, fmt)] == [t["token_id"] for t in toks]


def test_chunks_that_cannot_share_a_parquet_column_name_the_field(tmp_path: Path) -> None:
    toks = [_tok(0, {"v": 1}), _tok(1, {"v": "one"})]
    with pytest.raises(ValueError, match="payload field 'v'"):
        FilePartWriter("s", tmp_path, "parquet").prepare_chunks("t", 0, 0, 1, ([t] for t in toks))
    assert not list((tmp_path / "_staging").rglob("*.tmp"))
