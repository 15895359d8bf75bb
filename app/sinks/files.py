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

Rows are flat records ``{"_token_id", "_key", "_event_time_ms", **payload}``. A
payload field named like one of the three envelope columns is rejected with a
``ValueError`` naming the token and the field (never silently overwritten).
NDJSON: one orjson object per token, payload in insertion order, ``\\n``-terminated.
Parquet (zstd): envelope columns typed ``string, string, int64``; payload columns
are the union of the payload keys in first-seen order, types inferred per column
(a missing key reads back as null; mixed types in one column are a ``ValueError``).
A part may be handed over in chunks (``prepare_chunks``); it is built as Arrow
arrays chunk by chunk, so at most one chunk of rows exists as Python objects.
Output is a pure function of the tokens: the same tokens give byte-identical files
(I8) for a given pyarrow version (Parquet's ``created_by`` names the version; no
timestamps are written).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import orjson

from app.sinks.base import PartConflictError, PartMissingError, PreparedPart
from app.tokens import Token

__all__ = ["ENVELOPE", "FilePartWriter", "PartConflictError", "PartMissingError"]

ENVELOPE = ("_token_id", "_key", "_event_time_ms")
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


def _payload_columns(tokens: Sequence[Token]) -> list[str]:
    """Union of payload keys in first-seen order; rejects keys that collide with the envelope."""
    cols: dict[str, None] = {}
    last: Any = None
    for t in tokens:
        keys = t["payload"].keys()
        if keys == last:  # the common case: every row has the same fields
            continue
        for k in keys:
            if k not in cols:
                if k in ENVELOPE:
                    raise ValueError(
                        f"token {t['token_id']!r}: payload field {k!r} collides with the envelope column of that name"
                    )
                cols[k] = None
        last = keys
    return list(cols)


def _ndjson(tokens: Sequence[Token]) -> bytes:
    dumps = orjson.dumps
    return b"".join(
        [
            dumps({"_token_id": t["token_id"], "_key": t["key"], "_event_time_ms": t["event_time_ms"], **t["payload"]})
            + b"\n"
            for t in tokens
        ]
    )


class _ParquetPart:
    """A Parquet part built chunk by chunk as Arrow arrays: a part never holds all its
    rows as Python objects at once, only one decoded chunk (the sink's memory bound).

    The file equals the one a single ``pa.array`` per column over all rows would give:
    chunks whose inferred types agree are concatenated, all-null chunks take the
    column's type, and a column whose chunks disagree is re-inferred over all values."""

    def __init__(self) -> None:
        import pyarrow as pa

        self.pa = pa
        self.rows = 0
        self.envelope: list[list[Any]] = [[], [], []]
        self.envelope_types = (pa.string(), pa.string(), pa.int64())
        self.columns: dict[str, list[Any]] = {}  # first-seen order

    def add(self, tokens: Sequence[Token]) -> None:
        pa, n = self.pa, len(tokens)
        chunk_cols = _payload_columns(tokens)
        for c in chunk_cols:
            if c not in self.columns:
                self.columns[c] = [pa.nulls(self.rows)] if self.rows else []
        for arrays, field, typ in zip(
            self.envelope, ("token_id", "key", "event_time_ms"), self.envelope_types, strict=True
        ):
            arrays.append(pa.array([t[field] for t in tokens], typ))  # type: ignore[literal-required]
        payloads = [t["payload"] for t in tokens]
        present = set(chunk_cols)
        for c, arrays in self.columns.items():
            if c not in present:
                arrays.append(pa.nulls(n))
                continue
            try:
                arrays.append(pa.array([p.get(c) for p in payloads]))
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise ValueError(f"payload field {c!r}: values do not form one Parquet column: {exc}") from exc
        self.rows += n

    def _column(self, name: str, arrays: list[Any]) -> Any:
        pa = self.pa
        types = {a.type for a in arrays if a.type != pa.null()}
        if not types:
            return pa.nulls(self.rows)
        if len(types) == 1:
            (t,) = types
            return pa.concat_arrays([a if a.type == t else pa.nulls(len(a), t) for a in arrays])
        try:  # chunks inferred different types (e.g. int64 and double): infer over all values
            return pa.array([v for a in arrays for v in a.to_pylist()])
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise ValueError(f"payload field {name!r}: values do not form one Parquet column: {exc}") from exc

    def to_bytes(self) -> Any:
        """Parquet file bytes (a pyarrow Buffer); deterministic for a pyarrow version."""
        import pyarrow.parquet as pq

        pa = self.pa
        arrays = [
            pa.concat_arrays(a) if a else pa.array([], t)
            for a, t in zip(self.envelope, self.envelope_types, strict=True)
        ]
        arrays += [self._column(c, a) for c, a in self.columns.items()]
        table = pa.Table.from_arrays(arrays, names=[*ENVELOPE, *self.columns])
        out = pa.BufferOutputStream()
        pq.write_table(table, out, compression="zstd", version="2.6", write_statistics=True)
        return out.getvalue()


class FilePartWriter:
    """``PartWriter`` for a directory of NDJSON or Parquet files; see the module docstring."""

    def __init__(self, sink_name: str, directory: Path, fmt: Literal["ndjson", "parquet"]) -> None:
        if fmt not in ("ndjson", "parquet"):
            raise ValueError(f"file sink {sink_name!r}: unknown format {fmt!r} (ndjson or parquet)")
        self.sink = sink_name
        self.dir = Path(directory)
        self.fmt = fmt
        self.ext = fmt

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

    def prepare(
        self, topic: str, partition: int, first_offset: int, last_offset: int, tokens: Sequence[Token]
    ) -> PreparedPart:
        """Stage ``tokens`` durably (file + directory fsynced); the return is the sink's acknowledgement."""
        return self.prepare_chunks(topic, partition, first_offset, last_offset, [tokens])

    def prepare_chunks(
        self, topic: str, partition: int, first_offset: int, last_offset: int, chunks: Iterable[Sequence[Token]]
    ) -> PreparedPart:
        """``prepare`` for a part handed over in consecutive chunks (decoded lazily by the
        caller), so only one chunk of rows is alive as Python objects at a time. The file
        is the same as for the concatenated tokens."""
        self._check_range(topic, partition, first_offset, last_offset)
        sdir = self._staging_dir(topic, partition)
        _makedirs(sdir)
        attempt = uuid.uuid4().hex[:12]
        staging = sdir / f"part-{first_offset:020d}-{last_offset:020d}.{attempt}.{self.ext}.tmp"
        rows = 0
        if self.fmt == "ndjson":

            def counted() -> Iterator[bytes]:
                nonlocal rows
                for chunk in chunks:
                    _payload_columns(chunk)  # envelope collisions are refused, as for Parquet
                    rows += len(chunk)
                    yield _ndjson(chunk)

            size, checksum = _write_durable(staging, counted())
        else:
            part = _ParquetPart()
            for chunk in chunks:
                part.add(chunk)
            rows = part.rows
            size, checksum = _write_durable(staging, [part.to_bytes()])
        _fsync_dir(sdir)
        return PreparedPart(
            sink=self.sink,
            topic=topic,
            partition=partition,
            first_offset=first_offset,
            last_offset=last_offset,
            rows=rows,
            bytes=size,
            checksum=checksum,
            staging_path=str(staging),
            final_path=str(self.final_path(topic, partition, first_offset, last_offset)),
        )

    def finalize(self, part: PreparedPart) -> bool:
        """Rename a committed part into place; True if renamed now, False if it already was final.

        Raises ``PartConflictError`` if the final (or staged) bytes differ from ``part.checksum``
        and ``PartMissingError`` if neither file exists.
        """
        final, staging = Path(part.final_path), Path(part.staging_path)
        name = f"part {part.sink}:{part.topic}/{part.partition} {part.first_offset}..{part.last_offset}"
        if not final.exists():
            try:
                staged = _sha256_file(staging)
            except FileNotFoundError:
                staged = None
            if staged is not None:
                if staged != part.checksum:
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
        if have != part.checksum:
            raise PartConflictError(f"{name}: {final} exists with other content than the committed part")
        self.remove_staging(part.staging_path)
        return False

    def discard(self, part: PreparedPart) -> None:
        """Delete the staging file of a part that will never commit (no error if absent)."""
        self.remove_staging(part.staging_path)

    def leftover_staging(self, topic: str, partition: int) -> list[str]:
        """Staging files of ``topic``/``partition`` (this sink directory only), sorted."""
        sdir = self._staging_dir(topic, partition)
        return sorted(str(p) for p in sdir.glob("part-*.tmp"))

    def remove_staging(self, path: str) -> None:
        """Delete a staging file and fsync its directory; no error if it is already gone."""
        if not path.endswith(".tmp"):
            raise ValueError(f"not a staging file: {path}")
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        _fsync_dir(Path(path).parent)
