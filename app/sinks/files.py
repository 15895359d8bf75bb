"""Files as a two-phase sink: NDJSON or Parquet parts with deterministic names.

Layout under the sink directory ``<dir>``:

* staging: ``<dir>/_staging/<topic>/<partition>/part-<first:020d>-<last:020d>.<attempt>.<ext>.tmp``
  where ``<attempt>`` is a fresh random id per ``prepare`` call, so two attempts at
  the same range never collide;
* final: ``<dir>/<topic>/partition=<partition>/part-<first:020d>-<last:020d>.<ext>``,
  a pure function of the range (Kafka Connect S3-style naming).

Phases:

* ``prepare`` serialises the tokens in the given order, writes the staging file
  (exclusive create), flushes and fsyncs it, fsyncs the staging directory (and
  every directory it had to create, via its parent). Its return is the sink's
  acknowledgement: the bytes are durable. Nothing is visible yet.
* ``finalize`` (only after the commit point) checks the staged bytes against the
  committed sha256, ``os.replace``-s them to the final name and fsyncs both
  directories. Idempotent: a final file with the committed checksum means done
  (a leftover staging copy is removed). It never overwrites a final file with other
  content (``PartConflictError``) and is loud when both files are gone
  (``PartMissingError``: data loss).

Crash behaviour:

* crash before ``prepare`` returns (or before the commit point): at most a staging
  file no journal event references; the runner deletes it on the next assignment
  (``leftover_staging`` / ``remove_staging``) and the rows are re-read from the
  committed offsets;
* crash after the commit point but before ``finalize``: a staging file the
  ``part_committed`` event names; the runner re-drives ``finalize`` from the journal;
* crash after the rename (before ``part_finalized`` is journalled): harmless,
  ``finalize`` run again returns False.

Rows are flat records ``{"_token_id", "_key", "_event_time_ms", **payload}``.
NDJSON: one orjson object per token, payload in insertion order, ``\\n``-terminated.
Parquet: see ``app.sinks.parquet``. A part arrives in chunks and is written a chunk
at a time, so at most one chunk of rows exists as Python objects.

Rows are encoded by ``app.sinks.encode`` (flat records ``{"_token_id", "_key",
"_event_time_ms", **payload}``): rows the writer cannot place come back from
``prepare`` as ``Reject`` values (I7), and the output is a pure function of the
part's rows (I8).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from app.journal.events import JournalEvent, PartInfo
from app.sinks.base import (
    TP,
    Outcome,
    PartConflictError,
    PartMissingError,
    PartRows,
    Prepared,
    RecoveryPlan,
    two_phase_plan,
)
from app.sinks.encode import DEFAULT_MAX_ROW_BYTES, ENVELOPE, Encoded, encode

__all__ = ["DEFAULT_MAX_ROW_BYTES", "ENVELOPE", "FileSink", "PartConflictError", "PartMissingError"]

STAGING_DIR = "_staging"
_TOPIC_RE = re.compile(r"[A-Za-z0-9._-]{1,249}")  # Kafka's legal topic names


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _makedirs(path: Path) -> None:
    """Create ``path`` and its missing parents, fsyncing each parent whose entries changed."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir()
        _fsync_dir(d.parent)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_durable(path: Path, chunks: Iterable[Any]) -> tuple[int, str]:
    """Exclusively create ``path`` from ``chunks`` (bytes-like), fsync it; (size, sha256 hex).

    No partial file is left behind on error."""
    h, size = hashlib.sha256(), 0
    try:
        with open(path, "xb") as fh:
            for data in chunks:
                fh.write(data)
                h.update(data)
                size += len(data) if isinstance(data, bytes) else data.size
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return size, h.hexdigest()


class FileSink:
    """``Sink`` for a directory of NDJSON or Parquet parts; see the module docstring."""

    external = False
    two_phase = True

    def __init__(
        self,
        name: str,
        directory: Path,
        fmt: Literal["ndjson", "parquet"],
        *,
        max_row_bytes: int = DEFAULT_MAX_ROW_BYTES,
    ) -> None:
        if fmt not in ("ndjson", "parquet"):
            raise ValueError(f"file sink {name!r}: unknown format {fmt!r} (ndjson or parquet)")
        self.name = name
        self.dir = Path(directory)
        self.fmt = fmt
        self.ext = fmt
        self.max_row_bytes = max_row_bytes

    def final_path(self, topic: str, partition: int, first: int, last: int) -> Path:
        """Deterministic visible name of the part ``first..last`` of ``topic``/``partition``."""
        return self.dir / topic / f"partition={partition}" / f"part-{first:020d}-{last:020d}.{self.ext}"

    def _staging_dir(self, topic: str, partition: int) -> Path:
        return self.dir / STAGING_DIR / topic / str(partition)

    @staticmethod
    def _check_range(topic: str, partition: int, first: int, last: int) -> None:
        if not _TOPIC_RE.fullmatch(topic) or topic in (".", ".."):
            raise ValueError(f"not a Kafka topic name: {topic!r}")
        if partition < 0 or not 0 <= first <= last:
            raise ValueError(f"bad part range {topic}/{partition} {first}..{last}")

    # -- the sink protocol ----------------------------------------------------------
    def prepare(self, part: PartRows) -> Prepared:
        """Stage the part durably (file + directory fsynced): the sink's acknowledgement.
        Every call uses a fresh staging name, so two attempts at one range never collide."""
        topic, partition, first, last = part.topic, part.partition, part.first_offset, part.last_offset
        self._check_range(topic, partition, first, last)
        sdir = self._staging_dir(topic, partition)
        _makedirs(sdir)
        attempt = uuid.uuid4().hex[:12]
        staging = sdir / f"part-{first:020d}-{last:020d}.{attempt}.{self.ext}.tmp"
        enc = Encoded()
        size, checksum = _write_durable(staging, encode(part, self.fmt, self.max_row_bytes, enc))
        _fsync_dir(sdir)
        info = PartInfo(
            sink=self.name,
            topic=topic,
            partition=partition,
            first_offset=first,
            last_offset=last,
            rows=enc.rows,
            bytes=size,
            checksum=checksum,
            staging_path=str(staging),
            final_path=str(self.final_path(topic, partition, first, last)),
        )
        return Prepared(info, enc.rejects, repeated=enc.repeated)

    def commit_external(self, prepared: Prepared) -> Outcome:
        """Nothing: the Kafka transaction is a file sink's commit point."""
        return Outcome(prepared.info)

    def finalize(self, info: PartInfo) -> bool:
        """Rename a committed part into place; True if renamed now, False if it already was final.

        Raises ``PartConflictError`` if the final (or staged) bytes differ from the committed
        checksum and ``PartMissingError`` if neither file exists.
        """
        final, staging = Path(info.final_path), Path(info.staging_path)
        name = f"part {info.sink}:{info.topic}/{info.partition} {info.first_offset}..{info.last_offset}"
        if not final.exists():
            try:
                staged = _sha256_file(staging)
            except FileNotFoundError:
                staged = None
            if staged is not None:
                if staged != info.checksum:
                    raise PartConflictError(f"{name}: staged file {staging} does not match the committed checksum")
                _makedirs(final.parent)
                try:
                    os.replace(staging, final)
                except FileNotFoundError:
                    pass  # a concurrent finalize of the same part renamed it first: verify below
                else:
                    _fsync_dir(final.parent)
                    _fsync_dir(staging.parent)
                    return True
        try:
            have = _sha256_file(final)
        except FileNotFoundError:
            raise PartMissingError(f"{name} is committed but neither {staging} nor {final} exists") from None
        if have != info.checksum:
            raise PartConflictError(f"{name}: {final} exists with other content than the committed part")
        self.remove_staging(info.staging_path)
        return False

    def discard(self, prepared: Prepared) -> None:
        """Delete the staging file of a part that will never commit (no error if absent)."""
        self.remove_staging(prepared.info.staging_path)

    def recover(
        self,
        partitions: Sequence[TP],
        committed: Mapping[TP, int | None],
        journal: Callable[[], Mapping[str, JournalEvent]],
    ) -> RecoveryPlan:
        """Finalize every committed, unfinalized part of ``partitions``; discard every
        staging file of theirs that no committed part names."""
        return two_phase_plan(self.name, partitions, journal, self.leftover_staging)

    def forget(self, partitions: Sequence[TP]) -> None:
        """Nothing is kept per partition between batches."""

    # -- staging ---------------------------------------------------------------------
    def leftover_staging(self, topic: str, partition: int) -> list[str]:
        """Staging files of ``topic``/``partition`` (this sink directory only), sorted."""
        sdir = self._staging_dir(topic, partition)
        return sorted(str(p) for p in sdir.glob("part-*.tmp"))

    def remove_staging(self, location: str) -> None:
        """Delete a staging file and fsync its directory; no error if it is already gone."""
        if not location.endswith(".tmp"):
            raise ValueError(f"not a staging file: {location}")
        try:
            os.unlink(location)
        except FileNotFoundError:
            return
        _fsync_dir(Path(location).parent)
