"""Generator and file-tail sources: determinism, restore, I6 (no partial line), I7."""

from __future__ import annotations

import os
from pathlib import Path

from app.sources.base import Checkpoint
from app.sources.file_tail import FileTailSource
from app.sources.generator import GeneratorSource


def _drain(src: FileTailSource | GeneratorSource, batch: int, rounds: int = 50) -> tuple[list, list, dict]:  # type: ignore[type-arg]
    tokens, dead, cps = [], [], {}
    for _ in range(rounds):
        b = src.poll(batch)
        tokens += b.tokens
        dead += b.dead_letters
        cps.update({c.key: c for c in b.checkpoints})
        if b.exhausted:
            break
    return tokens, dead, cps


def test_generator_is_deterministic_across_batch_sizes_and_restores() -> None:
    a, _, _ = _drain(GeneratorSource("g", rows=1000, seed=3), 7, 1000)
    b, _, _ = _drain(GeneratorSource("g", rows=1000, seed=3), 1000)
    assert a == b and len(a) == 1000 and a[10]["token_id"] == "g:10"
    g = GeneratorSource("g", rows=1000, seed=3)
    first = g.poll(300)
    assert first.checkpoints[0].offset == 300
    g2 = GeneratorSource("g", rows=1000, seed=3)
    g2.restore({first.checkpoints[0].key: first.checkpoints[0]})
    rest, _, _ = _drain(g2, 256, 100)
    assert first.tokens + rest == b
    assert g2.poll(10).exhausted


def test_partial_line_is_never_emitted_or_checkpointed(tmp_path: Path) -> None:
    f = tmp_path / "a.ndjson"
    f.write_bytes(b'{"n": 1}\n{"n": ')
    src = FileTailSource("s", glob=str(tmp_path / "*.ndjson"), fmt="ndjson")
    b = src.poll(100)
    assert [t["payload"] for t in b.tokens] == [{"n": 1}]
    assert b.checkpoints[0].offset == len(b'{"n": 1}\n')
    assert src.poll(100).tokens == []
    with open(f, "ab") as fh:
        fh.write(b"2}\n")
    b2 = src.poll(100)
    assert [t["payload"] for t in b2.tokens] == [{"n": 2}]
    assert b2.checkpoints[0].offset == f.stat().st_size
    # restart from the first checkpoint re-emits the second line once, whole, same id
    src2 = FileTailSource("s", glob=str(tmp_path / "*.ndjson"), fmt="ndjson")
    src2.restore({b.checkpoints[0].key: b.checkpoints[0]})
    again = src2.poll(100)
    assert [t["token_id"] for t in again.tokens] == [t["token_id"] for t in b2.tokens]


def test_bad_lines_go_to_dead_letters_with_origin(tmp_path: Path) -> None:
    (tmp_path / "a.ndjson").write_bytes(b'{"ok": 1}\nnot json\n[1, 2]\n\xff\xfe\n\n{"ok": 2}\r\n')
    src = FileTailSource("s", glob=str(tmp_path / "*.ndjson"), fmt="ndjson")
    b = src.poll(100)
    assert [t["payload"] for t in b.tokens] == [{"ok": 1}, {"ok": 2}]
    assert [d.reason_class for d in b.dead_letters] == ["json_decode", "json_not_object", "utf8"]
    assert b.dead_letters[0].origin == {"file": str(tmp_path / "a.ndjson"), "byte_offset": "10", "line": "2"}
    assert b.dead_letters[0].raw == b"not json"
    assert b.checkpoints[0].rows == 5


def test_csv_header_and_column_mismatch(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text('id,name\n1,ann\n2,bob,extra\n3,"c, d"\n')
    src = FileTailSource("s", glob=str(tmp_path / "*.csv"), fmt="csv")
    b = src.poll(100)
    assert [t["payload"] for t in b.tokens] == [{"id": "1", "name": "ann"}, {"id": "3", "name": "c, d"}]
    assert [d.reason_class for d in b.dead_letters] == ["csv_columns"]
    # resuming mid-file still knows the header
    src2 = FileTailSource("s", glob=str(tmp_path / "*.csv"), fmt="csv")
    cp = b.checkpoints[0]
    mid = Checkpoint(cp.key, cp.source_id, cp.path, cp.fingerprint, cp.fingerprint_len, len("id,name\n1,ann\n"), 1)
    src2.restore({cp.key: mid})
    assert [t["payload"]["id"] for t in src2.poll(100).tokens] == ["3"]


def test_new_files_rename_and_copytruncate(tmp_path: Path) -> None:
    glob = str(tmp_path / "app.log*")
    log = tmp_path / "app.log"
    log.write_text("".join(f'{{"i": {i}}}\n' for i in range(100)))
    src = FileTailSource("s", glob=glob, fmt="ndjson", fingerprint_bytes=64)
    seen = [t["payload"]["i"] for t in src.poll(1000).tokens]
    assert seen == list(range(100))
    # rotation by rename: the moved file continues, the new file starts from 0
    with open(log, "a") as fh:
        fh.write('{"i": 100}\n')
    os.rename(log, tmp_path / "app.log.1")
    log.write_text('{"i": 200}\n')
    src._last_scan = 0
    seen = sorted(t["payload"]["i"] for t in src.poll(1000).tokens)
    assert seen == [100, 200]
    # copytruncate: copy keeps its identity, the truncated path restarts at 0
    with open(log, "a") as fh:
        fh.write('{"i": 201}\n')
    (tmp_path / "app.log.2").write_bytes(log.read_bytes())
    log.write_text('{"i": 300}\n')
    src._last_scan = 0
    seen = sorted(t["payload"]["i"] for t in src.poll(1000).tokens)
    assert seen == [201, 300]


def test_small_file_checkpoint_survives_growth_and_identical_prefixes_are_distinct(tmp_path: Path) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("id\n1\n")
    b.write_text("id\n1\n")
    src = FileTailSource("s", glob=str(tmp_path / "*.csv"), fmt="csv", fingerprint_bytes=1024)
    first = src.poll(100)
    assert len(first.tokens) == 2 and len({c.key for c in first.checkpoints}) == 2
    with open(a, "a") as fh:
        fh.write("2\n")
    src2 = FileTailSource("s", glob=str(tmp_path / "*.csv"), fmt="csv", fingerprint_bytes=1024)
    src2.restore({c.key: c for c in first.checkpoints})
    assert [t["payload"] for t in src2.poll(100).tokens] == [{"id": "2"}]
