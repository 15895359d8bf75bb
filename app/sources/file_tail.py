"""File tail source: NDJSON or CSV files matching a glob, tailed as they grow.

Identity and journal key
    A file is identified by the sha256 *fingerprint* of its first
    ``min(size, fingerprint_bytes)`` bytes (the length is recorded as
    ``fingerprint_len``) together with the path where that identity was first seen::

        key = source/<source_id>/<fp0>-<q>
        q   = sha256(first_path)[:12]        (sha256(f"{first_path}#{n}")[:12] if taken)

    ``fp0`` is the fingerprint at first sight. The key never changes afterwards:
    ``Checkpoint.path`` records where the identity lives now, and
    ``Checkpoint.fingerprint``/``fingerprint_len`` are widened to the full window
    as a small file grows (the key keeps ``fp0``). So two files with identical first
    bytes are distinct identities, and a renamed file keeps its key.

Token ids
    ``<source_id>:<fp0[:16]>-<q>:<byte offset of the line>``. This is the documented
    ``<fingerprint[:16]>:<offset>`` plus the path qualifier ``q``: without it two
    files with identical first bytes would produce colliding token ids and an
    idempotent sink would silently drop one file's rows. Ids are stable across
    re-reads, restarts and renames.

Matching files to checkpoints (every ~200 ms, and at once when a read notices that
the file under a path changed)
    1. a path keeps the identity recorded at that path if the file is at least
       ``offset`` long and its first ``fingerprint_len`` bytes still hash to the
       checkpoint's fingerprint (so a short-window checkpoint stays valid as the file
       grows);
    2. otherwise a file whose prefix matches an identity not found at its own path
       is that identity, moved (rename / rotation / the copy of copytruncate): it
       continues from the checkpoint and its new ``path`` is checkpointed;
    3. otherwise it is a new identity read from byte 0 (a truncated path, a new
       file). Empty files are ignored until they have content. A new file whose
       prefix matches an identity still live at its own path may be a copytruncate
       copy in progress: it is held back up to ``COPY_GRACE_S`` so that, once the
       original is truncated, it continues that identity instead of re-reading.
    A file whose first ``fingerprint_len`` bytes equal another's and that is at least
    as long is indistinguishable from it by content: inherent to fingerprinting
    (widening short fingerprints to ``fingerprint_bytes`` keeps that window small).

Reading and guarantees
    * only complete lines (ending in ``\\n``, a trailing ``\\r`` stripped) are emitted;
      the checkpoint offset is the byte after the last complete line handed out,
      never a read position (I6). A partial trailing line is re-read on a later poll.
    * empty (or blank) lines are skipped but advance the offset; the first non-empty
      line of a CSV file is its header (not a row); CSV values stay strings; one line
      is one record (quoted fields spanning lines are not supported).
    * an undecodable line (``utf8``, ``json_decode``, ``json_not_object``,
      ``csv_parse``, ``csv_columns``) becomes a ``DeadLetter`` with file, byte offset
      and line number, and still advances the checkpoint: the runner commits the skip
      and the dead letter in one transaction (I7).
    * ``key`` is ``str(payload[key_field])`` when the field is present and not null.
    * crash behaviour: the source has no durable state of its own. After a crash or an
      aborted transaction, ``restore`` resets it to exactly the committed checkpoints
      and re-reading yields the same token ids from the same offsets.
    * file handles are opened per read and closed before ``poll`` returns.
"""

from __future__ import annotations

import csv
import glob as globmod
import hashlib
import os
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, BinaryIO, Literal

import orjson

from app.journal.keys import checkpoint_key, source_prefix
from app.sources.base import Checkpoint, DeadLetter, SourceBatch
from app.tokens import Token

RESCAN_S = 0.2
COPY_GRACE_S = 10.0
_MIN_READ = 1 << 16


@dataclass(slots=True)
class _Ident:
    """In-memory state of one file identity (always derivable from its checkpoint)."""

    cp: Checkpoint
    tag: str  # "<fp0[:16]>-<q>": token id infix
    header: list[str] | None = None  # CSV header, loaded lazily
    line_no: int | None = None  # 1-based number of the line starting at cp.offset, if known
    moved: bool = False  # path changed since the last checkpoint handed out


class _BadLine(Exception):
    def __init__(self, reason_class: str, message: str) -> None:
        super().__init__(message)
        self.reason_class = reason_class


def _hash_prefix(path: str, length: int) -> str | None:
    """sha256 hex of the first ``length`` bytes of ``path``; None if shorter or unreadable."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(length)
    except OSError:
        return None
    return hashlib.sha256(data).hexdigest() if len(data) == length else None


def _qualifier(first_path: str, n: int) -> str:
    return hashlib.sha256((first_path if n == 0 else f"{first_path}#{n}").encode()).hexdigest()[:12]


class FileTailSource:
    """Tails NDJSON/CSV files matching ``glob``; see the module docstring for guarantees."""

    def __init__(
        self,
        source_id: str,
        *,
        glob: str,
        fmt: Literal["ndjson", "csv"],
        key_field: str | None = None,
        fingerprint_bytes: int = 1024,
        read_chunk: int = 1 << 20,
    ) -> None:
        if fmt not in ("ndjson", "csv"):
            raise ValueError(f"unsupported format {fmt!r}")
        if fingerprint_bytes < 1 or read_chunk < 1:
            raise ValueError("fingerprint_bytes and read_chunk must be positive")
        self.source_id = source_id
        self.glob = glob
        self.fmt = fmt
        self.key_field = key_field
        self.fingerprint_bytes = fingerprint_bytes
        self.read_chunk = read_chunk
        self._prefix = source_prefix(source_id)
        self._ids: dict[str, _Ident] = {}  # journal key -> state
        self._active: list[tuple[str, str]] = []  # (path, key) in (mtime, name) order
        self._last_scan = -RESCAN_S  # monotonic time of the last glob scan
        self._copy_seen: dict[str, float] = {}  # path -> when first held back as a possible copy

    # -- Source protocol ------------------------------------------------------------
    def restore(self, checkpoints: Mapping[str, Checkpoint]) -> None:
        """Forget all in-memory state and continue from the committed ``checkpoints``."""
        self._ids = {}
        for key, cp in checkpoints.items():
            if key.startswith(self._prefix):
                self._ids[key] = _Ident(cp, self._tag_of(key), line_no=1 if cp.offset == 0 else None)
        self._active = []
        self._last_scan = -RESCAN_S

    def poll(self, max_rows: int) -> SourceBatch:
        """Read complete lines across files until ``max_rows`` records or nothing more now."""
        if time.monotonic() - self._last_scan >= RESCAN_S:
            self._scan()
        tokens: list[Token] = []
        dead: list[DeadLetter] = []
        cps: list[Checkpoint] = []
        for path, key in self._active:
            st = self._ids[key]
            room = max_rows - len(tokens) - len(dead)
            if (room > 0 and self._read(path, st, room, tokens, dead)) or st.moved:
                st.moved = False
                cps.append(st.cp)
        return SourceBatch(tokens, dead, cps, exhausted=False)

    def close(self) -> None:
        return None

    # -- identity ---------------------------------------------------------------------
    def _tag_of(self, key: str) -> str:
        ident = key[len(self._prefix) :]
        if len(ident) == 77 and ident[64] == "-":
            return f"{ident[:16]}-{ident[65:]}"
        return hashlib.sha256(ident.encode()).hexdigest()[:29]  # foreign key format: still stable

    def _scan(self) -> None:
        self._last_scan = time.monotonic()
        entries: list[tuple[int, str, int]] = []
        for path in globmod.glob(self.glob, recursive=True):
            try:
                s = os.stat(path)
            except OSError:
                continue
            if stat.S_ISREG(s.st_mode) and s.st_size > 0:
                entries.append((s.st_mtime_ns, path, s.st_size))
        entries.sort()
        sizes = {path: size for _mt, path, size in entries}

        hashes: dict[tuple[str, int], str | None] = {}

        def fp(path: str, length: int) -> str | None:
            k = (path, length)
            if k not in hashes:
                hashes[k] = _hash_prefix(path, length)
            return hashes[k]

        def matches(st: _Ident, path: str, size: int) -> bool:
            return size >= st.cp.offset and fp(path, st.cp.fingerprint_len) == st.cp.fingerprint

        def rank(key: str) -> tuple[int, int]:
            return self._ids[key].cp.fingerprint_len, self._ids[key].cp.offset

        by_path: dict[str, list[str]] = {}
        for key, st in self._ids.items():
            by_path.setdefault(st.cp.path, []).append(key)
        claimed: dict[str, str] = {}  # path -> key
        taken: set[str] = set()
        # 1) identities still at their recorded path
        for _mt, path, size in entries:
            cands = [k for k in by_path.get(path, ()) if matches(self._ids[k], path, size)]
            if cands:
                best = max(cands, key=rank)
                claimed[path] = best
                taken.add(best)
        live = set(taken)
        # 2) moved identities, 3) new identities
        for _mt, path, size in entries:
            if path in claimed:
                continue
            cands = [k for k, st in self._ids.items() if k not in taken and matches(st, path, size)]
            if cands:
                best = max(cands, key=rank)
                st = self._ids[best]
                st.cp = replace(st.cp, path=path)
                st.moved = True
            else:
                if self._looks_like_copy(path, live, fp):
                    continue
                length = min(size, self.fingerprint_bytes)
                f = fp(path, length)
                if f is None:
                    continue
                n = 0
                while (best := checkpoint_key(self.source_id, f"{f}-{_qualifier(path, n)}")) in self._ids:
                    n += 1
                cp = Checkpoint(best, self.source_id, path, f, length, 0, 0)
                self._ids[best] = _Ident(cp, self._tag_of(best), line_no=1)
            claimed[path] = best
            taken.add(best)
        # widen short fingerprints of files that have grown (the key keeps fp0)
        for path, key in claimed.items():
            st = self._ids[key]
            want = min(sizes[path], self.fingerprint_bytes)
            if st.cp.fingerprint_len < want and (f := fp(path, want)) is not None:
                st.cp = replace(st.cp, fingerprint=f, fingerprint_len=want)
        self._active = [(path, claimed[path]) for _mt, path, _size in entries if path in claimed]
        self._copy_seen = {p: t for p, t in self._copy_seen.items() if p in sizes and p not in claimed}

    def _looks_like_copy(self, path: str, live: set[str], fp: Callable[[str, int], str | None]) -> bool:
        """True while a new file that starts like an identity still live at its own path
        may be a copytruncate copy in progress (copied first, original truncated after);
        held back at most ``COPY_GRACE_S``, then it is read as a new identity."""
        if not any(fp(path, self._ids[k].cp.fingerprint_len) == self._ids[k].cp.fingerprint for k in live):
            return False
        first = self._copy_seen.setdefault(path, time.monotonic())
        return time.monotonic() - first < COPY_GRACE_S

    # -- reading ----------------------------------------------------------------------
    def _read(self, path: str, st: _Ident, room: int, tokens: list[Token], dead: list[DeadLetter]) -> bool:
        """Append up to ``room`` records of ``path`` from ``st.cp.offset``; True if it advanced."""
        cp = st.cp
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed in finally
        except OSError:
            self._last_scan = -RESCAN_S
            return False
        try:
            head = fh.read(cp.fingerprint_len)
            if len(head) != cp.fingerprint_len or hashlib.sha256(head).hexdigest() != cp.fingerprint:
                self._last_scan = -RESCAN_S  # truncated or replaced since the last scan
                return False
            return self._read_lines(fh, path, st, room, tokens, dead)
        except OSError:
            self._last_scan = -RESCAN_S
            st.line_no = None  # may have moved ahead of the unchanged checkpoint
            return False
        finally:
            fh.close()

    def _read_lines(
        self, fh: BinaryIO, path: str, st: _Ident, room: int, tokens: list[Token], dead: list[DeadLetter]
    ) -> bool:
        cp = st.cp
        csv_fmt = self.fmt == "csv"
        if csv_fmt and st.header is None and cp.offset > 0:
            st.header = self._load_header(fh, cp.offset)
        header = st.header
        ncols = len(header) if header is not None else 0
        loads, decode_error = orjson.loads, orjson.JSONDecodeError
        sid, kf = self.source_id, self.key_field
        tid_prefix = f"{sid}:{st.tag}:"  # token id "<source>:<tag>:<byte offset>", stable across re-reads
        pos_prefix = f"{path}:"
        pos = cp.offset
        rows = cp.rows
        want = min(self.read_chunk, max(_MIN_READ, room << 9))
        while room > 0:
            fh.seek(pos)
            data = fh.read(want)
            eof = len(data) < want
            end = data.rfind(b"\n")
            if end < 0:
                if eof:
                    break  # only a partial line: nothing to emit or checkpoint
                data, eof = self._read_long_line(fh, data, want)
                end = data.rfind(b"\n")
                if end < 0:
                    break
            chunk_pos = pos
            has_cr = b"\r" in data
            for raw in data[:end].split(b"\n"):
                if room <= 0:
                    break
                start = pos
                pos += len(raw) + 1
                line = raw[:-1] if has_cr and raw[-1:] == b"\r" else raw
                if not line:
                    continue
                try:
                    if csv_fmt:
                        if line.isspace():
                            continue
                        if header is None:
                            header = st.header = self._parse_header(line.decode(errors="replace"))
                            ncols = len(header)
                            continue
                        try:
                            text = line.decode()
                        except UnicodeDecodeError as exc:
                            raise _BadLine("utf8", f"invalid UTF-8: {exc}") from exc
                        if '"' in text:
                            try:
                                values = next(csv.reader([text], strict=True))
                            except csv.Error as exc:
                                raise _BadLine("csv_parse", f"malformed CSV: {exc}") from exc
                        else:
                            values = text.split(",")
                        if len(values) != ncols:
                            raise _BadLine("csv_columns", f"{len(values)} columns, header has {ncols}")
                        payload: dict[str, Any] = dict(zip(header, values, strict=True))
                    else:
                        try:
                            obj = loads(line)
                        except decode_error as exc:
                            if line.isspace():
                                continue
                            try:
                                line.decode()
                            except UnicodeDecodeError as uexc:
                                raise _BadLine("utf8", f"invalid UTF-8: {uexc}") from exc
                            raise _BadLine("json_decode", f"invalid JSON: {exc}") from exc
                        if type(obj) is not dict:
                            raise _BadLine("json_not_object", f"JSON {type(obj).__name__}, not an object")
                        payload = obj
                except _BadLine as bad:
                    line_no = self._line_no(path, st, data, chunk_pos, start)
                    origin = {"file": path, "byte_offset": str(start), "line": str(line_no)}
                    dead.append(DeadLetter(bad.reason_class, f"{path}:{start}: {bad}", bytes(line), origin))
                    rows += 1
                    room -= 1
                    continue
                v = payload.get(kf) if kf is not None else None
                tokens.append(
                    {
                        "token_id": f"{tid_prefix}{start}",
                        "key": None if v is None else str(v),
                        "payload": payload,
                        "source_id": sid,
                        "source_position": f"{pos_prefix}{start}",
                        "event_time_ms": None,
                        "lineage": [],
                    }
                )
                rows += 1
                room -= 1
            if st.line_no is not None:
                st.line_no += data.count(b"\n", 0, pos - chunk_pos)
            if eof:
                break
        if pos == cp.offset:
            return False
        st.cp = replace(cp, offset=pos, rows=rows)
        return True

    @staticmethod
    def _read_long_line(fh: BinaryIO, data: bytes, want: int) -> tuple[bytes, bool]:
        """Extend ``data`` (no newline yet) until it holds one or the file ends."""
        parts = [data]
        while True:
            more = fh.read(want)
            parts.append(more)
            if b"\n" in more or len(more) < want:
                return b"".join(parts), len(more) < want

    def _line_no(self, path: str, st: _Ident, data: bytes, chunk_pos: int, start: int) -> int:
        """1-based line number of the line at byte ``start`` (counted from the file if unknown)."""
        if st.line_no is None:
            try:
                with open(path, "rb") as fh:
                    n, left = 0, chunk_pos
                    while left > 0 and (buf := fh.read(min(left, 1 << 20))):
                        n += buf.count(b"\n")
                        left -= len(buf)
            except OSError:
                return 0
            st.line_no = n + 1  # the line at chunk_pos
        return st.line_no + data.count(b"\n", 0, start - chunk_pos)

    @staticmethod
    def _parse_header(text: str) -> list[str]:
        text = text.removeprefix("\ufeff")
        return next(csv.reader([text])) if '"' in text else text.split(",")

    def _load_header(self, fh: BinaryIO, limit: int) -> list[str] | None:
        """The header of a CSV file being resumed: its first non-blank line before ``limit``."""
        fh.seek(0)
        pos = 0
        while pos < limit:
            raw = fh.readline()
            if not raw.endswith(b"\n"):
                return None
            pos += len(raw)
            line = raw.rstrip(b"\r\n")
            if line and not line.isspace():
                return self._parse_header(line.decode(errors="replace"))
        return None
