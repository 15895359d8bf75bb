"""Files as a two-phase sink: NDJSON or Parquet parts with deterministic names.

* prepare: rows → ``<dir>/_staging/<topic>/<partition>/part-<first>-<last>.<attempt>.<ext>.tmp``
  (a fresh attempt id, so two attempts at a range never collide), fsync file and
  directory. This is the acknowledgement the commit seam waits for.
* finalize: atomic ``os.replace`` to ``<dir>/<topic>/partition=<p>/part-<first:020d>-<last:020d>.<ext>``,
  fsync the directory. Idempotent: a final file with the recorded checksum means
  done. It never overwrites a final file with different content.

Crash behaviour: a crash before the commit point leaves a staging file no journal
event names (deleted on the next assignment); a crash after it leaves one the
journal names (renamed by recovery); a crash after the rename is harmless.

Rows are flat records ``{"_token_id", "_key", "_event_time_ms", **payload}``; the
same tokens always produce byte-identical files.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import orjson

from app.sinks.base import PreparedPart
from app.tokens import Token

ENVELOPE = ("_token_id", "_key", "_event_time_ms")


class PartMissingError(RuntimeError):
    """A committed part has neither a staging nor a final file: data loss, never ignored."""


class PartConflictError(RuntimeError):
    """A final file exists with other content than the committed part."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _makedirs(path: Path) -> None:
    """Create ``path`` and fsync each parent whose entry list changed."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir()
        _fsync_dir(d.parent)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _records(tokens: Sequence[Token]) -> list[dict[str, Any]]:
    out = []
    for t in tokens:
        p = t["payload"]
        for k in ENVELOPE:
            if k in p:
                raise ValueError(f"token {t['token_id']}: payload field {k!r} collides with an envelope column")
        out.append({"_token_id": t["token_id"], "_key": t["key"], "_event_time_ms": t["event_time_ms"], **p})
    return out


class FilePartWriter:
    def __init__(self, sink_name: str, directory: Path, fmt: Literal["ndjson", "parquet"]) -> None:
        self.sink = sink_name
        self.dir = Path(directory)
        self.fmt = fmt
        self.ext = "ndjson" if fmt == "ndjson" else "parquet"

    def final_path(self, topic: str, partition: int, first: int, last: int) -> Path:
        return self.dir / topic / f"partition={partition}" / f"part-{first:020d}-{last:020d}.{self.ext}"

    def _staging_dir(self, topic: str, partition: int) -> Path:
        return self.dir / "_staging" / topic / str(partition)

    def prepare(
        self, topic: str, partition: int, first_offset: int, last_offset: int, tokens: Sequence[Token]
    ) -> PreparedPart:
        sdir = self._staging_dir(topic, partition)
        if not sdir.exists():
            _makedirs(sdir)
        attempt = uuid.uuid4().hex[:12]
        staging = sdir / f"part-{first_offset:020d}-{last_offset:020d}.{attempt}.{self.ext}.tmp"
        if self.fmt == "ndjson":
            dumps = orjson.dumps
            data = b"".join(dumps(r) + b"\n" for r in _records(tokens))
            with open(staging, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            checksum, size = hashlib.sha256(data).hexdigest(), len(data)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pylist(_records(tokens))
            with open(staging, "wb") as fh:
                pq.write_table(table, fh, compression="zstd")
                fh.flush()
                os.fsync(fh.fileno())
            checksum, size = _sha256(str(staging)), staging.stat().st_size
        _fsync_dir(sdir)
        return PreparedPart(
            sink=self.sink,
            topic=topic,
            partition=partition,
            first_offset=first_offset,
            last_offset=last_offset,
            rows=len(tokens),
            bytes=size,
            checksum=checksum,
            staging_path=str(staging),
            final_path=str(self.final_path(topic, partition, first_offset, last_offset)),
        )

    def finalize(self, part: PreparedPart) -> bool:
        final, staging = Path(part.final_path), Path(part.staging_path)
        for _ in range(2):
            if final.exists():
                if _sha256(str(final)) != part.checksum:
                    raise PartConflictError(
                        f"{final} exists with other content than part {part.first_offset}..{part.last_offset}"
                    )
                if staging.exists():
                    self.remove_staging(str(staging))
                return False
            if not staging.exists():
                raise PartMissingError(
                    f"part {part.topic}/{part.partition} {part.first_offset}..{part.last_offset} "
                    "is committed "
                    f"but neither {staging} nor {final} exists"
                )
            if not final.parent.exists():
                _makedirs(final.parent)
            try:
                os.replace(staging, final)
            except FileNotFoundError:
                continue  # another worker finalized it between our checks: re-check
            _fsync_dir(final.parent)
            _fsync_dir(staging.parent)
            return True
        return False

    def discard(self, part: PreparedPart) -> None:
        self.remove_staging(part.staging_path)

    def leftover_staging(self, topic: str, partition: int) -> list[str]:
        sdir = self._staging_dir(topic, partition)
        return sorted(str(p) for p in sdir.glob("*.tmp")) if sdir.exists() else []

    def remove_staging(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            _fsync_dir(Path(path).parent)
