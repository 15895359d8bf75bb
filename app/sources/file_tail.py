"""File tail source: NDJSON or CSV files matching a glob, tailed as they grow.

Identity: a file is known by the sha256 *fingerprint* of its first
``fingerprint_bytes`` bytes (or of all of it while it is shorter; the length used is
recorded, so the checkpoint stays valid as the file grows) together with its path.
The journal key is ``source/<id>/<fingerprint>@<path>``.

* rename / rotation: a file at a new path whose prefix matches a checkpoint whose
  own path no longer holds that content continues from that checkpoint;
* copytruncate: the truncated path no longer matches its checkpoint (prefix
  differs or it is shorter than the offset) and starts again from 0 as a new
  identity, while the copy is found by fingerprint and continues;
* a partial trailing line (no ``\\n`` yet) is neither emitted nor checkpointed: the
  checkpoint offset is always the byte after the last complete line (I6);
* an undecodable line becomes a ``DeadLetter`` with file, byte offset and line
  number and still advances the checkpoint: it is skipped in the same transaction
  that records it in the DLQ (I7).

Token id: ``<source>:<fingerprint[:16]>:<byte offset of the line>`` — stable across
re-reads, renames and restarts.
"""

from __future__ import annotations

import csv
import glob as globmod
import hashlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import orjson

from app.sources.base import Checkpoint, DeadLetter, SourceBatch
from app.tokens import Token, source_token_id

RESCAN_S = 0.2


@dataclass
class _Tracked:
    cp: Checkpoint
    header: list[str] | None = None
    line_no: int | None = None  # known only when read from the start in this process


def _fingerprint(path: str, length: int) -> str | None:
    try:
        with open(path, "rb") as fh:
            data = fh.read(length)
    except OSError:
        return None
    if len(data) < length:
        return None
    return hashlib.sha256(data).hexdigest()


class FileTailSource:
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
        self.source_id = source_id
        self.glob = glob
        self.fmt = fmt
        self.key_field = key_field
        self.fp_bytes = fingerprint_bytes
        self.read_chunk = read_chunk
        self.states: dict[str, _Tracked] = {}  # journal key -> state
        self._active: dict[str, str] = {}  # path -> journal key currently at that path
        self._last_scan = 0.0

    # -- identity -----------------------------------------------------------------
    def _key(self, fp: str, path: str) -> str:
        return f"source/{self.source_id}/{fp}@{path}"

    def _matches(self, st: _Tracked, path: str, size: int) -> bool:
        cp = st.cp
        return size >= cp.offset and _fingerprint(path, cp.fingerprint_len) == cp.fingerprint

    def _scan(self) -> None:
        self._last_scan = time.monotonic()
        paths = []
        for p in globmod.glob(self.glob):
            try:
                st = os.stat(p)
            except OSError:
                continue
            if st.st_size > 0 and os.path.isfile(p):
                paths.append((st.st_mtime, p, st.st_size))
        paths.sort()
        active: dict[str, str] = {}
        claimed: set[str] = set()
        # 1) paths whose own checkpoint still matches keep their identity
        unresolved = []
        for _mt, path, size in paths:
            key = next(
                (
                    k
                    for k, s in self.states.items()
                    if s.cp.path == path and k not in claimed and self._matches(s, path, size)
                ),
                None,
            )
            if key is not None:
                active[path] = key
                claimed.add(key)
            else:
                unresolved.append((path, size))
        # 2) others: a moved file (checkpoint whose path no longer holds it), else new
        for path, size in unresolved:
            moved = next(
                (k for k, s in self.states.items() if k not in claimed and self._matches(s, path, size)),
                None,
            )
            if moved is not None:
                old = self.states[moved]
                key = self._key(old.cp.fingerprint, path)
                self.states[key] = _Tracked(replace(old.cp, key=key, path=path), old.header)
                claimed.update((moved, key))
                active[path] = key
                continue
            length = min(size, self.fp_bytes)
            fp = _fingerprint(path, length)
            if fp is None:
                continue
            key = self._key(fp, path)
            if key not in self.states:
                self.states[key] = _Tracked(Checkpoint(key, self.source_id, path, fp, length, 0, 0), line_no=1)
            claimed.add(key)
            active[path] = key
        self._active = active

    # -- Source protocol ------------------------------------------------------------
    def restore(self, checkpoints: Mapping[str, Checkpoint]) -> None:
        prefix = f"source/{self.source_id}/"
        self.states = {k: _Tracked(cp) for k, cp in checkpoints.items() if k.startswith(prefix)}
        self._active = {}
        self._last_scan = 0.0

    def poll(self, max_rows: int) -> SourceBatch:
        if time.monotonic() - self._last_scan >= RESCAN_S or not self._active:
            self._scan()
        tokens: list[Token] = []
        dead: list[DeadLetter] = []
        cps: list[Checkpoint] = []
        for path, key in list(self._active.items()):
            room = max_rows - len(tokens) - len(dead)
            if room <= 0:
                break
            st = self.states[key]
            if self._read(path, st, room, tokens, dead):
                cps.append(st.cp)
        return SourceBatch(tokens, dead, cps, exhausted=False)

    def close(self) -> None:
        return None

    # -- reading ----------------------------------------------------------------------
    def _read(self, path: str, st: _Tracked, room: int, tokens: list[Token], dead: list[DeadLetter]) -> bool:
        cp = st.cp
        try:
            with open(path, "rb") as fh:
                if self.fmt == "csv" and st.header is None and cp.offset > 0:
                    st.header = self._header(fh.readline())
                fh.seek(cp.offset)
                data = fh.read(self.read_chunk)
        except OSError:
            return False
        end = data.rfind(b"\n")
        if end < 0:
            return False  # only a partial line so far: nothing to emit or checkpoint
        pos = cp.offset
        rows = cp.rows
        line_no = st.line_no
        sid, fp16, kf = self.source_id, cp.fingerprint[:16], self.key_field
        taken = 0
        for raw in data[: end + 1].split(b"\n")[:-1]:
            if taken >= room:
                break
            start = pos
            pos += len(raw) + 1
            line = raw[:-1] if raw.endswith(b"\r") else raw
            if line_no is not None:
                line_no += 1
            if not line.strip():
                continue
            if self.fmt == "csv" and st.header is None:
                st.header = self._header(line)
                continue
            try:
                payload = self._decode(line, st.header)
            except _BadLine as exc:
                origin = {"file": path, "byte_offset": str(start)}
                if line_no is not None:
                    origin["line"] = str(line_no - 1)
                dead.append(DeadLetter(exc.reason_class, f"{path}@{start}: {exc}", bytes(line), origin))
                rows += 1
                taken += 1
                continue
            tokens.append(
                {
                    "token_id": source_token_id(sid, f"{fp16}:{start}"),
                    "key": str(payload[kf]) if kf and kf in payload else None,
                    "payload": payload,
                    "source_id": sid,
                    "source_position": f"{path}:{start}",
                    "event_time_ms": None,
                    "lineage": [],
                }
            )
            rows += 1
            taken += 1
        if pos == cp.offset:
            return False
        st.cp = replace(cp, offset=pos, rows=rows)
        st.line_no = line_no
        return True

    @staticmethod
    def _header(line: bytes) -> list[str]:
        return next(csv.reader([line.rstrip(b"\r\n").decode("utf-8", errors="replace")]))

    def _decode(self, line: bytes, header: list[str] | None) -> dict[str, Any]:
        if self.fmt == "ndjson":
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError:
                    raise _BadLine("utf8", "line is not valid UTF-8") from exc
                raise _BadLine("json_decode", f"invalid JSON: {exc}") from exc
            if not isinstance(obj, dict):
                raise _BadLine("json_not_object", f"JSON value is a {type(obj).__name__}, not an object")
            return obj
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _BadLine("utf8", "line is not valid UTF-8") from exc
        assert header is not None
        values = next(csv.reader([text]))
        if len(values) != len(header):
            raise _BadLine("csv_columns", f"{len(values)} columns, header has {len(header)}")
        return dict(zip(header, values, strict=True))


class _BadLine(Exception):
    def __init__(self, reason_class: str, message: str) -> None:
        super().__init__(message)
        self.reason_class = reason_class
