"""File part writer: prepare is durable but invisible; finalize is idempotent."""

from __future__ import annotations

from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

from app.sinks.files import FilePartWriter, PartConflictError, PartMissingError
from app.sources.generator import GeneratorSource


def _tokens(n: int = 50) -> list:  # type: ignore[type-arg]
    return GeneratorSource("g", rows=n, seed=1).poll(n).tokens


@pytest.mark.parametrize("fmt", ["ndjson", "parquet"])
def test_prepare_finalize_content_and_determinism(tmp_path: Path, fmt: str) -> None:
    w = FilePartWriter("s", tmp_path, fmt)  # type: ignore[arg-type]
    toks = _tokens()
    part = w.prepare("t", 1, 10, 59, toks)
    assert Path(part.staging_path).exists() and not Path(part.final_path).exists()
    assert w.leftover_staging("t", 1) == [part.staging_path] and w.leftover_staging("t", 0) == []
    assert w.finalize(part) is True
    assert not Path(part.staging_path).exists()
    assert part.final_path.endswith(f"t/partition=1/part-{10:020d}-{59:020d}.{fmt}")
    if fmt == "ndjson":
        rows = [orjson.loads(x) for x in Path(part.final_path).read_bytes().splitlines()]
    else:
        rows = pq.read_table(part.final_path).to_pylist()
    assert [r["_token_id"] for r in rows] == [t["token_id"] for t in toks]
    assert rows[3]["amount"] == toks[3]["payload"]["amount"]
    again = w.prepare("t", 1, 10, 59, toks)
    assert again.staging_path != part.staging_path and again.checksum == part.checksum
    assert w.finalize(again) is False  # already final: the second attempt's staging is removed
    assert not Path(again.staging_path).exists()
    assert w.finalize(part) is False


def test_missing_and_conflicting_parts_are_loud(tmp_path: Path) -> None:
    w = FilePartWriter("s", tmp_path, "ndjson")
    part = w.prepare("t", 0, 0, 9, _tokens(10))
    w.discard(part)
    with pytest.raises(PartMissingError):
        w.finalize(part)
    other = w.prepare("t", 0, 0, 9, _tokens(5))
    Path(other.final_path).parent.mkdir(parents=True, exist_ok=True)
    Path(other.final_path).write_bytes(b"different")
    with pytest.raises(PartConflictError):
        w.finalize(other)


def test_envelope_collision_is_rejected(tmp_path: Path) -> None:
    tok = _tokens(1)[0]
    tok["payload"] = {"_token_id": "x"}
    with pytest.raises(ValueError, match="_token_id"):
        FilePartWriter("s", tmp_path, "ndjson").prepare("t", 0, 0, 0, [tok])
