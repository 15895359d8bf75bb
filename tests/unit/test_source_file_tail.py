"""FileTailSource: I6 (no partial line), restore, identity (rotation, copytruncate,
short fingerprints, identical prefixes), dead letters (I7), CSV, CRLF."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest

from app.sources import file_tail
from app.sources.base import Checkpoint, DeadLetter
from app.sources.file_tail import FileTailSource
from app.tokens import Token


@pytest.fixture(autouse=True)
def _rescan_every_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(file_tail, "RESCAN_S", 0.0)


def _poll_all(
    src: FileTailSource, batch: int = 1000, rounds: int = 50
) -> tuple[list[Token], list[DeadLetter], dict[str, Checkpoint]]:
    tokens: list[Token] = []
    dead: list[DeadLetter] = []
    cps: dict[str, Checkpoint] = {}
    for _ in range(rounds):
        b = src.poll(batch)
        assert not b.exhausted
        tokens += b.tokens
        dead += b.dead_letters
        cps.update({c.key: c for c in b.checkpoints})
        if not (b.tokens or b.dead_letters or b.checkpoints):
            break
    return tokens, dead, cps


def _ndjson(values: range | list[int]) -> str:
    return "".join(f'{{"i": {i}}}\n' for i in values)


def _ids(tokens: list[Token]) -> list[int]:
    return [t["payload"]["i"] for t in tokens]


def test_partial_line_written_in_two_halves_is_emitted_once_whole(tmp_path: Path) -> None:
    f = tmp_path / "a.ndjson"
    f.write_bytes(b'{"i": 1}\n{"i": ')
    src = FileTailSource("s", glob=str(tmp_path / "*.ndjson"), fmt="ndjson")
    b = src.poll(100)
    assert _ids(b.tokens) == [1]
    assert b.checkpoints[0].offset == 9 and b.checkpoints[0].rows == 1
    again = src.poll(100)
    assert again.tokens == [] and again.checkpoints == []  # the half line is not checkpointed
    with open(f, "ab") as fh:
        fh.write(b"2}\n")
    b2 = src.poll(100)
    assert _ids(b2.tokens) == [2]
    assert b2.tokens[0]["token_id"].endswith(":9") and b2.tokens[0]["source_position"] == f"{f}:9"
    assert b2.checkpoints[0].offset == f.stat().st_size


def test_checkpoint_is_never_inside_a_line(tmp_path: Path) -> None:
    rnd = random.Random(7)
    f = tmp_path / "a.ndjson"
    data = _ndjson(range(500)).encode()
    src = FileTailSource("s", glob=str(f), fmt="ndjson", read_chunk=37)
    seen: list[int] = []
    written = 0
    while written < len(data) or len(seen) < 500:
        step = rnd.randint(1, 60)
        with open(f, "ab") as fh:
            fh.write(data[written : written + step])
        written = min(len(data), written + step)
        b = src.poll(rnd.randint(1, 7))
        seen += _ids(b.tokens)
        for cp in b.checkpoints:
            assert cp.offset == 0 or data[cp.offset - 1 : cp.offset] == b"\n"
            assert cp.offset <= written
    assert seen == list(range(500))


def test_restore_to_committed_checkpoint_reemits_same_ids(tmp_path: Path) -> None:
    (tmp_path / "a.ndjson").write_text(_ndjson(range(10)))
    src = FileTailSource("s", glob=str(tmp_path / "*.ndjson"), fmt="ndjson")
    first = src.poll(4)
    committed = {c.key: c for c in first.checkpoints}
    rest, _, cps = _poll_all(src)
    assert _ids(rest) == list(range(4, 10))
    # aborted transaction: the runner restores the same instance
    src.restore(committed)
    again, _, cps2 = _poll_all(src, batch=3)
    assert [t["token_id"] for t in again] == [t["token_id"] for t in rest]
    assert cps2 == cps
    # new process from the journal
    src2 = FileTailSource("s", glob=str(tmp_path / "*.ndjson"), fmt="ndjson")
    src2.restore(committed)
    assert [t["token_id"] for t in _poll_all(src2)[0]] == [t["token_id"] for t in rest]
    # same batches at any batch size: same ids and payloads
    src3 = FileTailSource("s", glob=str(tmp_path / "*.ndjson"), fmt="ndjson")
    assert _poll_all(src3, batch=1)[0] == first.tokens + rest


def test_new_file_is_picked_up_and_empty_files_wait(tmp_path: Path) -> None:
    (tmp_path / "a.ndjson").write_text(_ndjson([1]))
    (tmp_path / "empty.ndjson").write_text("")
    src = FileTailSource("s", glob=str(tmp_path / "*.ndjson"), fmt="ndjson")
    toks, _, cps = _poll_all(src)
    assert _ids(toks) == [1] and len(cps) == 1
    (tmp_path / "b.ndjson").write_text(_ndjson([2, 3]))
    (tmp_path / "empty.ndjson").write_text(_ndjson([4]))
    toks, _, cps = _poll_all(src)
    assert sorted(_ids(toks)) == [2, 3, 4] and len(cps) == 2
    assert src.poll(100).tokens == []


def test_rename_rotation_continues_without_duplicates(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    glob = str(tmp_path / "app.log*")
    log.write_text(_ndjson(range(50)))
    src = FileTailSource("s", glob=glob, fmt="ndjson", fingerprint_bytes=64)
    toks, _, cps = _poll_all(src)
    assert _ids(toks) == list(range(50))
    (key,) = cps
    committed = dict(cps)
    with open(log, "a") as fh:
        fh.write(_ndjson([50]))
    os.rename(log, tmp_path / "app.log.1")
    log.write_text(_ndjson([100]))
    toks, _, cps = _poll_all(src)
    assert sorted(_ids(toks)) == [50, 100]
    assert cps[key].path == str(tmp_path / "app.log.1")  # same key, new path
    assert len(cps) == 2
    # a restart from the pre-rename checkpoint finds the moved file by fingerprint
    src2 = FileTailSource("s", glob=glob, fmt="ndjson", fingerprint_bytes=64)
    src2.restore(committed)
    toks2, _, _ = _poll_all(src2)
    assert sorted(_ids(toks2)) == [50, 100]
    assert {t["token_id"] for t in toks2} == {t["token_id"] for t in toks}


def test_copytruncate(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    glob = str(tmp_path / "app.log*")
    log.write_text(_ndjson(range(20)))
    src = FileTailSource("s", glob=glob, fmt="ndjson", fingerprint_bytes=64)
    toks, _, cps = _poll_all(src)
    (old_key,) = cps
    with open(log, "a") as fh:
        fh.write(_ndjson([20]))
    # the copy appears while the original is still intact: held back, not re-read
    shutil.copyfile(log, tmp_path / "app.log.1")
    assert _ids(src.poll(100).tokens) == [20]  # read once, from the original
    assert src.poll(100).tokens == []
    with open(tmp_path / "app.log.1", "a") as fh:
        fh.write(_ndjson([21]))  # (not realistic, but shows the copy continues the identity)
    with open(log, "r+b") as fh:
        fh.truncate(0)
    log.write_text(_ndjson([300]))
    toks, _, cps = _poll_all(src)
    assert sorted(_ids(toks)) == [21, 300]
    assert (
        cps[old_key].path == str(tmp_path / "app.log.1")
        and cps[old_key].offset == (tmp_path / "app.log.1").stat().st_size
    )
    new_key = next(k for k in cps if k != old_key)
    assert cps[new_key].path == str(log) and cps[new_key].rows == 1
    # from the journal: both continue where they are
    src2 = FileTailSource("s", glob=glob, fmt="ndjson", fingerprint_bytes=64)
    src2.restore(cps)
    assert _poll_all(src2)[0] == []


def test_truncated_then_regrown_path_restarts_from_zero(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text(_ndjson(range(20)))
    src = FileTailSource("s", glob=str(log), fmt="ndjson", fingerprint_bytes=64)
    _poll_all(src)
    log.write_text(_ndjson([7, 8]))  # truncate + rewrite in place, shorter than the offset
    toks, _, cps = _poll_all(src)
    assert _ids(toks) == [7, 8]
    assert [c.offset for c in cps.values()] == [log.stat().st_size]


def test_small_file_keeps_its_checkpoint_as_it_grows_past_the_window(tmp_path: Path) -> None:
    f = tmp_path / "a.csv"
    f.write_text("id\n1\n")
    src = FileTailSource("s", glob=str(tmp_path / "*.csv"), fmt="csv", fingerprint_bytes=64)
    b = src.poll(100)
    (cp,) = b.checkpoints
    assert cp.fingerprint_len == 5 and cp.offset == 5 and [t["payload"] for t in b.tokens] == [{"id": "1"}]
    with open(f, "a") as fh:
        fh.write("".join(f"{i}\n" for i in range(2, 60)))
    src2 = FileTailSource("s", glob=str(tmp_path / "*.csv"), fmt="csv", fingerprint_bytes=64)
    src2.restore({cp.key: cp})
    toks, _, cps = _poll_all(src2)
    assert [t["payload"]["id"] for t in toks] == [str(i) for i in range(2, 60)]
    assert list(cps) == [cp.key]  # same key; fingerprint widened to the full window
    assert cps[cp.key].fingerprint_len == 64
    src3 = FileTailSource("s", glob=str(tmp_path / "*.csv"), fmt="csv", fingerprint_bytes=64)
    src3.restore(cps)
    assert _poll_all(src3)[0] == []


def test_identical_first_bytes_are_distinct_identities(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("id\n1\n")
    (tmp_path / "b.csv").write_text("id\n1\n")
    src = FileTailSource("s", glob=str(tmp_path / "*.csv"), fmt="csv")
    toks, _, cps = _poll_all(src)
    assert len(toks) == 2 and len(cps) == 2
    assert len({t["token_id"] for t in toks}) == 2
    assert {c.path for c in cps.values()} == {str(tmp_path / "a.csv"), str(tmp_path / "b.csv")}
    with open(tmp_path / "a.csv", "a") as fh:
        fh.write("2\n")
    src2 = FileTailSource("s", glob=str(tmp_path / "*.csv"), fmt="csv")
    src2.restore(cps)
    toks2, _, cps2 = _poll_all(src2)
    assert [t["payload"] for t in toks2] == [{"id": "2"}]
    assert [c.path for c in cps2.values()] == [str(tmp_path / "a.csv")]


def test_bad_ndjson_lines_go_to_dead_letters_and_do_not_block(tmp_path: Path) -> None:
    f = tmp_path / "a.ndjson"
    f.write_bytes(b'{"ok": 1}\nnot json\n[1, 2]\n\xff\xfe\n\n  \n{"ok": 2, "k": 5}\r\n')
    src = FileTailSource("s", glob=str(f), fmt="ndjson", key_field="k")
    b = src.poll(100)
    assert [t["payload"]["ok"] for t in b.tokens] == [1, 2]
    assert [t["key"] for t in b.tokens] == [None, "5"]
    assert [(d.reason_class, d.raw) for d in b.dead_letters] == [
        ("json_decode", b"not json"),
        ("json_not_object", b"[1, 2]"),
        ("utf8", b"\xff\xfe"),
    ]
    assert [d.origin for d in b.dead_letters] == [
        {"file": str(f), "byte_offset": "10", "line": "2"},
        {"file": str(f), "byte_offset": "19", "line": "3"},
        {"file": str(f), "byte_offset": "26", "line": "4"},
    ]
    assert b.checkpoints[0].offset == f.stat().st_size and b.checkpoints[0].rows == 5
    # line numbers are still right when resuming mid-file
    (cp,) = b.checkpoints
    mid = Checkpoint(cp.key, cp.source_id, cp.path, cp.fingerprint, cp.fingerprint_len, 19, 2)
    src2 = FileTailSource("s", glob=str(f), fmt="ndjson")
    src2.restore({cp.key: mid})
    b2 = src2.poll(100)
    assert [d.origin["line"] for d in b2.dead_letters] == ["3", "4"]
    assert b2.dead_letters == b.dead_letters[1:]


def test_csv_header_bad_rows_and_resume(tmp_path: Path) -> None:
    f = tmp_path / "a.csv"
    f.write_bytes(b'\xef\xbb\xbfid,name\n1,ann\n2,bob,extra\n3,"c, d"\n4,"open\n5,\xff\n6,eve\n')
    src = FileTailSource("s", glob=str(f), fmt="csv", key_field="name")
    b = src.poll(100)
    assert [t["payload"] for t in b.tokens] == [
        {"id": "1", "name": "ann"},
        {"id": "3", "name": "c, d"},
        {"id": "6", "name": "eve"},
    ]
    assert [t["key"] for t in b.tokens] == ["ann", "c, d", "eve"]
    assert [d.reason_class for d in b.dead_letters] == ["csv_columns", "csv_parse", "utf8"]
    assert [d.origin["line"] for d in b.dead_letters] == ["3", "5", "6"]
    assert b.checkpoints[0].rows == 6  # the header is not a row
    # resuming mid-file still knows the header
    (cp,) = b.checkpoints
    off = len(b"\xef\xbb\xbfid,name\n1,ann\n2,bob,extra\n")
    src2 = FileTailSource("s", glob=str(f), fmt="csv")
    src2.restore({cp.key: Checkpoint(cp.key, "s", cp.path, cp.fingerprint, cp.fingerprint_len, off, 2)})
    assert [t["payload"]["id"] for t in src2.poll(100).tokens] == ["3", "6"]


def test_crlf_lines(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_bytes(b"id,name\r\n1,ann\r\n\r\n2,bob\r\n")
    (tmp_path / "b.ndjson").write_bytes(b'{"i": 1}\r\n{"i": 2}\r\n')
    csv_src = FileTailSource("c", glob=str(tmp_path / "*.csv"), fmt="csv")
    b = csv_src.poll(100)
    assert [t["payload"] for t in b.tokens] == [{"id": "1", "name": "ann"}, {"id": "2", "name": "bob"}]
    assert [t["source_position"].rsplit(":", 1)[1] for t in b.tokens] == ["9", "18"]
    assert b.checkpoints[0].offset == 25
    nd = FileTailSource("n", glob=str(tmp_path / "*.ndjson"), fmt="ndjson")
    assert _ids(nd.poll(100).tokens) == [1, 2]


def test_lines_longer_than_the_read_chunk_and_max_rows_across_files(tmp_path: Path) -> None:
    long = "x" * 300
    (tmp_path / "a.ndjson").write_text("".join(f'{{"i": {i}, "pad": "{long}"}}\n' for i in range(5)))
    (tmp_path / "b.ndjson").write_text(_ndjson(range(5, 10)))
    src = FileTailSource("s", glob=str(tmp_path / "*.ndjson"), fmt="ndjson", read_chunk=64)
    got: list[int] = []
    for _ in range(20):
        b = src.poll(3)
        assert len(b.tokens) <= 3
        got += _ids(b.tokens)
    assert sorted(got) == list(range(10))
