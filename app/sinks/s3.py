"""S3 (or any S3-compatible store) as a two-phase sink: NDJSON or Parquet objects with
deterministic keys, made visible only after the Kafka transaction that records them.

Keys in ``<bucket>`` (``<prefix>/`` omitted when the prefix is empty):

* final: ``<prefix>/<topic>/partition=<p>/part-<first:020d>-<last:020d>.<ext>``, a pure
  function of the part's offset range (the file sink's naming);
* staging (small parts only): ``<prefix>/_staging/<topic>/<p>/part-<first>-<last>.<attempt>.<ext>.tmp``.

Phases (the seam calls them in this order, DESIGN §5):

* ``prepare`` encodes the part (``app.sinks.encode``) and uploads it without making it
  visible. A part of at least ``multipart_threshold`` bytes goes up as a multipart
  upload of the *final* key that is not completed; its upload id and part ETags go
  into the part's ``handle``, which ``part_committed`` records. A smaller part is one
  PutObject to a fresh staging key. Either way the object carries its sha256 as
  metadata (``x-amz-meta-ledgerflow-sha256``). The return is the acknowledgement:
  the store has the bytes durably.
* The commit point is the Kafka transaction with ``part_committed`` and the offsets.
* ``finalize`` completes the multipart upload (``If-None-Match: *`` when conditional
  writes are on, so nothing, not even a zombie, overwrites a final object), or
  copies the staging object to the final key server-side and deletes the staging
  object. Idempotent: a final object with the committed size and checksum means
  done (False); other content is a ``PartConflictError``; neither upload, staging
  object nor final object is a ``PartMissingError``.
* ``recover`` finalizes committed, unfinalized parts from the journal and discards
  every pending multipart upload (``ListMultipartUploads`` under the partition's
  prefix) and staging object that no committed part names.

A store that cannot be used (endpoint unreachable after the client's bounded
retries, missing bucket, access denied) raises ``SinkUnavailable`` naming the sink,
the bucket and the operation: the stage stops, the batch is not committed, no row
is lost. Credentials never appear in messages.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from app.config.pipeline import S3Sink as S3SinkSpec
from app.faults import crash_point
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
from app.sinks.encode import DEFAULT_MAX_ROW_BYTES, Encoded, Format, encode
from app.sinks.s3client import SinkUnavailable, describe, error_code, make_client

log = logging.getLogger("ledgerflow.sink.s3")

SHA_META = "ledgerflow-sha256"
CONTENT_TYPES = {"ndjson": "application/x-ndjson", "parquet": "application/vnd.apache.parquet"}
MIN_PART_BYTES = 5 << 20  # S3's minimum size of every upload part but the last
_GONE = frozenset({"NoSuchUpload", "NoSuchKey", "404"})
_EXISTS = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict"})


def _s3_url(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def _parse(url: str) -> tuple[str, str, str]:
    """(bucket, key, upload id or '') of an ``s3://bucket/key[?uploadId=...]`` location."""
    if not url.startswith("s3://"):
        raise ValueError(f"not an S3 location: {url!r}")
    rest, _sep, query = url[5:].partition("?uploadId=")
    bucket, _sep, key = rest.partition("/")
    return bucket, key, query


class S3Sink:
    """``Sink`` writing parts to one bucket and prefix; see the module docstring."""

    external = False
    two_phase = True

    def __init__(
        self,
        name: str,
        client: Any,
        bucket: str,
        prefix: str,
        fmt: Format,
        *,
        endpoint: str = "",
        max_row_bytes: int = DEFAULT_MAX_ROW_BYTES,
        multipart_threshold: int = 8 << 20,
        upload_part_bytes: int = 8 << 20,
        conditional_writes: bool = True,
    ) -> None:
        if fmt not in CONTENT_TYPES:
            raise ValueError(f"s3 sink {name!r}: unknown format {fmt!r} (ndjson or parquet)")
        if upload_part_bytes < MIN_PART_BYTES:
            raise ValueError(f"s3 sink {name!r}: upload_part_bytes {upload_part_bytes} is below S3's 5 MiB minimum")
        self.name = name
        self.s3 = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.fmt = fmt
        self.endpoint = endpoint or "the default endpoint"
        self.max_row_bytes = max_row_bytes
        self.multipart_threshold = multipart_threshold
        self.upload_part_bytes = upload_part_bytes
        self.conditional = conditional_writes

    # -- naming ----------------------------------------------------------------------
    def _key(self, *parts: str) -> str:
        return "/".join([self.prefix, *parts] if self.prefix else parts)

    def final_key(self, topic: str, partition: int, first: int, last: int) -> str:
        return self._key(topic, f"partition={partition}", f"part-{first:020d}-{last:020d}.{self.fmt}")

    def _staging_prefix(self, topic: str, partition: int) -> str:
        return self._key("_staging", topic, str(partition)) + "/"

    @contextmanager
    def _guard(self, op: str, key: str = "") -> Iterator[None]:
        """Turn a store-level failure into ``SinkUnavailable`` naming sink, bucket and op."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (BotoCoreError, ClientError) as exc:
            where = f"s3://{self.bucket}/{key}" if key else f"bucket {self.bucket!r}"
            raise SinkUnavailable(
                f"sink {self.name}: S3 {op} on {where} at {self.endpoint} failed: {describe(exc)}"
            ) from None

    def check(self) -> None:
        """Fail fast, before any row is consumed, when the bucket cannot be reached."""
        with self._guard("HeadBucket"):
            self.s3.head_bucket(Bucket=self.bucket)

    # -- the sink protocol ------------------------------------------------------------
    def prepare(self, part: PartRows) -> Prepared:
        """Upload the part invisibly (uncompleted multipart upload or staging object)."""
        topic, partition, first, last = part.topic, part.partition, part.first_offset, part.last_offset
        if partition < 0 or not 0 <= first <= last:
            raise ValueError(f"bad part range {topic}/{partition} {first}..{last}")
        enc = Encoded()
        data = b"".join(bytes(b) for b in encode(part, self.fmt, self.max_row_bytes, enc))
        checksum = hashlib.sha256(data).hexdigest()
        final = self.final_key(topic, partition, first, last)
        meta = {SHA_META: checksum}
        ctype = CONTENT_TYPES[self.fmt]
        handle = ""
        if len(data) >= self.multipart_threshold:
            with self._guard("CreateMultipartUpload", final):
                upload_id = self.s3.create_multipart_upload(
                    Bucket=self.bucket, Key=final, Metadata=meta, ContentType=ctype
                )["UploadId"]
            staging = f"{_s3_url(self.bucket, final)}?uploadId={upload_id}"
            etags: list[str] = []
            step = self.upload_part_bytes
            for number, start in enumerate(range(0, max(len(data), 1), step), start=1):
                with self._guard("UploadPart", final):
                    resp = self.s3.upload_part(
                        Bucket=self.bucket,
                        Key=final,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=data[start : start + step],
                    )
                etags.append(resp["ETag"])
                crash_point("s3.after_upload_part")
            handle = json.dumps({"upload_id": upload_id, "etags": etags}, separators=(",", ":"))
        else:
            name = f"part-{first:020d}-{last:020d}.{uuid.uuid4().hex[:12]}.{self.fmt}.tmp"
            key = self._staging_prefix(topic, partition) + name
            with self._guard("PutObject", key):
                self.s3.put_object(Bucket=self.bucket, Key=key, Body=data, Metadata=meta, ContentType=ctype)
            staging = _s3_url(self.bucket, key)
        crash_point("s3.after_upload_before_commit")
        info = PartInfo(
            sink=self.name,
            topic=topic,
            partition=partition,
            first_offset=first,
            last_offset=last,
            rows=enc.rows,
            bytes=len(data),
            checksum=checksum,
            staging_path=staging,
            final_path=_s3_url(self.bucket, final),
            handle=handle,
        )
        return Prepared(info, enc.rejects, repeated=enc.repeated)

    def commit_external(self, prepared: Prepared) -> Outcome:
        """Nothing: the Kafka transaction is this sink's commit point."""
        return Outcome(prepared.info)

    def finalize(self, info: PartInfo) -> bool:
        """Make a committed part visible at its final key; True if done now, False if it
        already was. Never overwrites a final object."""
        crash_point("s3.after_commit_before_complete")
        _bucket, final, _ = _parse(info.final_path)
        done = self._complete(info, final) if info.handle else self._copy_into_place(info, final)
        crash_point("s3.after_complete")
        if not done:
            self._verify(info, final)
        return done

    def _complete(self, info: PartInfo, final: str) -> bool:
        from botocore.exceptions import ClientError

        handle = json.loads(info.handle)
        parts = [{"ETag": etag, "PartNumber": i} for i, etag in enumerate(handle["etags"], start=1)]
        kwargs: dict[str, Any] = {"IfNoneMatch": "*"} if self.conditional else {}
        with self._guard("CompleteMultipartUpload", final):
            try:
                self.s3.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=final,
                    UploadId=handle["upload_id"],
                    MultipartUpload={"Parts": parts},
                    **kwargs,
                )
            except ClientError as exc:
                if error_code(exc) in _GONE | _EXISTS:
                    return False  # completed before (or the object exists): verify it
                raise
        return True

    def _copy_into_place(self, info: PartInfo, final: str) -> bool:
        from botocore.exceptions import ClientError

        _b, staging, _ = _parse(info.staging_path)
        if self._head(final) is not None:
            self._delete(staging)
            return False
        with self._guard("CopyObject", final):
            try:
                self.s3.copy_object(
                    Bucket=self.bucket,
                    Key=final,
                    CopySource={"Bucket": self.bucket, "Key": staging},
                    MetadataDirective="COPY",
                )
            except ClientError as exc:
                if error_code(exc) in _GONE:
                    return False  # the staging object is gone: a finalize before copied it
                raise
        self._delete(staging)
        return True

    def _head(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        with self._guard("HeadObject", key):
            try:
                head: dict[str, Any] = self.s3.head_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if error_code(exc) in _GONE:
                    return None
                raise
        return head

    def _verify(self, info: PartInfo, final: str) -> None:
        """The final object must hold exactly the committed bytes."""
        name = f"part {info.sink}:{info.topic}/{info.partition} {info.first_offset}..{info.last_offset}"
        head = self._head(final)
        if head is None:
            raise PartMissingError(f"{name} is committed but neither its upload nor s3://{self.bucket}/{final} exists")
        have = head.get("Metadata", {}).get(SHA_META)
        if have is None:  # a store that drops user metadata: hash the object itself
            with self._guard("GetObject", final):
                have = hashlib.sha256(self.s3.get_object(Bucket=self.bucket, Key=final)["Body"].read()).hexdigest()
        if have != info.checksum or int(head.get("ContentLength", -1)) != info.bytes:
            raise PartConflictError(
                f"{name}: s3://{self.bucket}/{final} exists with other content than the committed part"
            )

    def discard(self, prepared: Prepared) -> None:
        """Abort the upload / delete the staging object of a part that will never commit.
        Best effort: on failure recovery discards it later (it is never visible)."""
        try:
            self.remove_staging(prepared.info.staging_path)
        except SinkUnavailable as exc:
            log.warning(
                "sink %s: could not discard %s now (%s); recovery will", self.name, prepared.info.staging_path, exc
            )

    def remove_staging(self, location: str) -> None:
        """Abort one multipart upload or delete one staging object (no error if gone)."""
        from botocore.exceptions import ClientError

        _b, key, upload_id = _parse(location)
        if not upload_id:
            if not key.endswith(".tmp"):
                raise ValueError(f"not a staging object: {location}")
            self._delete(key)
            return
        with self._guard("AbortMultipartUpload", key):
            try:
                self.s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except ClientError as exc:
                if error_code(exc) not in _GONE:
                    raise

    def _delete(self, key: str) -> None:
        with self._guard("DeleteObject", key):
            self.s3.delete_object(Bucket=self.bucket, Key=key)

    def recover(
        self,
        partitions: Sequence[TP],
        committed: Mapping[TP, int | None],
        journal: Callable[[], Mapping[str, JournalEvent]],
    ) -> RecoveryPlan:
        """Finalize committed, unfinalized parts; discard every upload and staging object
        of ``partitions`` that no committed part names."""
        return two_phase_plan(self.name, partitions, journal, self.leftovers)

    def leftovers(self, topic: str, partition: int) -> list[str]:
        """Pending multipart uploads and staging objects of ``topic``/``partition``, sorted."""
        out: list[str] = []
        prefix = self._key(topic, f"partition={partition}") + "/"
        with self._guard("ListMultipartUploads", prefix):
            for page in self.s3.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=prefix):
                out.extend(
                    f"{_s3_url(self.bucket, u['Key'])}?uploadId={u['UploadId']}" for u in page.get("Uploads", [])
                )
        sprefix = self._staging_prefix(topic, partition)
        with self._guard("ListObjectsV2", sprefix):
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=sprefix):
                out.extend(
                    _s3_url(self.bucket, o["Key"]) for o in page.get("Contents", []) if o["Key"].endswith(".tmp")
                )
        return sorted(out)

    def forget(self, partitions: Sequence[TP]) -> None:
        """Nothing is kept per partition between batches."""


def build_s3_sink(spec: S3SinkSpec) -> S3Sink:
    """The sink a spec's ``type: s3`` entry describes, checked against its bucket."""
    conn = spec.connection
    sink = S3Sink(
        spec.name,
        make_client(conn, f"sinks.{spec.name}.connection"),
        spec.bucket,
        spec.prefix,
        spec.format,
        endpoint=conn.endpoint_url or "",
        max_row_bytes=spec.max_row_bytes,
        multipart_threshold=spec.multipart_threshold_bytes,
        upload_part_bytes=spec.upload_part_bytes,
        conditional_writes=spec.conditional_writes,
    )
    sink.check()
    return sink
