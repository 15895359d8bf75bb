"""The S3 sink against a real S3 store (SeaweedFS): pipelines end to end, the protocol
steps on their own, and a store that cannot be used.

Every read-back is independent of the sink: a fresh boto3 client lists and reads the
bucket."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from app.sinks.base import PartConflictError, PartMissingError
from app.sinks.encode import Encoded, encode
from app.sinks.s3 import S3Sink
from app.sinks.s3client import SinkUnavailable
from app.tokens import Token
from tests.conftest import KafkaEnv
from tests.harness import free_port, run, uid
from tests.s3_harness import assert_s3_exactly_once, bucket_objects, pending_uploads, write_s3_pipeline
from tests.s3env import S3Env
from tests.unit.test_sink_files import Rows

pytestmark = [pytest.mark.integration]


def _ids(n: int) -> set[str]:
    return {f"gen:{i}" for i in range(n)}


@pytest.mark.parametrize(("fmt", "threshold"), [("ndjson", None), ("parquet", 0)], ids=["ndjson-staged", "parquet-mpu"])
def test_pipeline_lands_every_row_once_in_the_bucket(
    kafka: KafkaEnv, s3: S3Env, tmp_path: Path, fmt: str, threshold: int | None
) -> None:
    bucket = s3.new_bucket()
    pf = write_s3_pipeline(tmp_path, f"s3e-{fmt}-{uid()}", kafka, s3, bucket, fmt=fmt, multipart_threshold=threshold)
    proc = run(pf.spec, "--worker-id", "w1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = assert_s3_exactly_once(kafka, pf, s3, _ids(pf.rows))
    assert all(k.endswith(f".{fmt}") for k in final)
    head = s3.client().head_object(Bucket=bucket, Key=sorted(final)[0])
    assert head["Metadata"]["ledgerflow-sha256"] == hashlib.sha256(final[sorted(final)[0]]).hexdigest()


def _big_tokens(n: int, width: int) -> list[Token]:
    return [
        Token(
            token_id=f"big:{i}",
            key=f"k{i}",
            payload={"i": i, "blob": f"{i:08d}" * (width // 8)},
            source_id="big",
            source_position=str(i),
            event_time_ms=1_700_000_000_000 + i,
            lineage=[],
        )
        for i in range(n)
    ]


def _sink(s3: S3Env, bucket: str, **kw: Any) -> S3Sink:
    kw.setdefault("upload_part_bytes", 5 << 20)
    return S3Sink("lake", s3.client(), bucket, "runs", "ndjson", endpoint=s3.endpoint, **kw)


def test_multipart_part_stays_invisible_until_finalized_and_finalize_is_idempotent(s3: S3Env) -> None:
    """A 12 MiB part goes up as three upload parts of one uncompleted upload; only
    finalize makes it visible, with exactly the encoded bytes; a second finalize (a
    recovery re-driving it) is a no-op."""
    bucket = s3.new_bucket()
    sink = _sink(s3, bucket, multipart_threshold=0)
    part = Rows("orders", 2, 100, 1299, _big_tokens(1200, 10_000), chunk=250)
    prepared = sink.prepare(part)
    info = prepared.info
    expected = b"".join(bytes(b) for b in encode(part, "ndjson", 16 << 20, Encoded()))
    assert info.bytes == len(expected) > 10 << 20
    assert info.checksum == hashlib.sha256(expected).hexdigest()
    assert len(__import__("json").loads(info.handle)["etags"]) == 3
    final_key = "runs/orders/partition=2/part-00000000000000000100-00000000000000001299.ndjson"
    assert info.final_path == f"s3://{bucket}/{final_key}"
    assert bucket_objects(s3, bucket) == {}, "a prepared part must not be visible"
    assert pending_uploads(s3, bucket) == [final_key]

    assert sink.finalize(info) is True
    assert bucket_objects(s3, bucket) == {final_key: expected}
    assert pending_uploads(s3, bucket) == []
    assert sink.finalize(info) is False  # idempotent


def test_recovery_keeps_committed_uploads_and_discards_the_rest(s3: S3Env) -> None:
    """Recovery finalizes the part the journal committed and discards every other
    upload and staging object of the partition; other partitions are untouched."""
    bucket = s3.new_bucket()
    mpu = _sink(s3, bucket, multipart_threshold=0)
    staged = _sink(s3, bucket)
    committed = mpu.prepare(Rows("orders", 0, 0, 9, _big_tokens(10, 100))).info
    orphan_upload = mpu.prepare(Rows("orders", 0, 10, 19, _big_tokens(10, 100))).info
    orphan_staged = staged.prepare(Rows("orders", 0, 10, 19, _big_tokens(10, 100))).info
    other = staged.prepare(Rows("orders", 1, 0, 9, _big_tokens(10, 100))).info

    from app.journal.events import JournalEvent

    ev = JournalEvent("part_committed", "sink/lake/orders/0/0", "p", "sink", "w", "r", 0, None, committed, None)
    plan = mpu.recover([("orders", 0)], {("orders", 0): 10}, lambda: {ev.key: ev})
    assert plan.finalize == [committed]
    assert sorted(plan.discard) == sorted([orphan_upload.staging_path, orphan_staged.staging_path])
    for location in plan.discard:
        mpu.remove_staging(location)
        mpu.remove_staging(location)  # gone already: no error
    assert mpu.finalize(committed) is True
    keys = set(bucket_objects(s3, bucket))
    assert keys == {
        "runs/orders/partition=0/part-00000000000000000000-00000000000000000009.ndjson",
        other.staging_path.split(f"s3://{bucket}/", 1)[1],
    }
    assert pending_uploads(s3, bucket) == []


def test_finalize_never_overwrites_and_is_loud_about_a_lost_part(s3: S3Env) -> None:
    bucket = s3.new_bucket()
    for threshold in (0, 8 << 20):
        sink = _sink(s3, bucket, multipart_threshold=threshold)
        part = Rows("t", 0, 0, 9, _big_tokens(10, 100))
        info = sink.prepare(part).info
        key = info.final_path.split(f"s3://{bucket}/", 1)[1]
        s3.client().put_object(Bucket=bucket, Key=key, Body=b"someone else's bytes")
        with pytest.raises(PartConflictError, match="other content"):
            sink.finalize(info)
        assert bucket_objects(s3, bucket)[key] == b"someone else's bytes"
        s3.client().delete_object(Bucket=bucket, Key=key)
        sink.remove_staging(info.staging_path)
        with pytest.raises(PartMissingError, match="is committed but neither"):
            sink.finalize(info)


@pytest.mark.parametrize("fault", ["missing-bucket", "read-only-key", "unreachable-endpoint"])
def test_unusable_store_stops_the_stage_naming_sink_and_bucket_and_loses_nothing(
    kafka: KafkaEnv, s3: S3Env, tmp_path: Path, fault: str
) -> None:
    bucket = s3.new_bucket()
    name = f"s3x-{fault}-{uid()}"
    target = f"nosuch{uid()}" if fault == "missing-bucket" else bucket
    endpoint = f"http://127.0.0.1:{free_port()}" if fault == "unreachable-endpoint" else None
    pf = write_s3_pipeline(
        tmp_path, name, kafka, s3, target, rows=3_000, read_only=fault == "read-only-key", endpoint=endpoint
    )
    failed = run(pf.spec, "--worker-id", "w1", timeout=180)
    assert failed.returncode != 0, failed.stderr[-2000:]
    assert "sink lake" in failed.stderr and target in failed.stderr, failed.stderr[-3000:]
    assert "local-secret" not in failed.stderr, "a credential leaked into the log"
    assert bucket_objects(s3, bucket) == {}
    good = write_s3_pipeline(tmp_path, name, kafka, s3, bucket, rows=3_000)
    finished = run(good.spec, "--worker-id", "w1")
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert_s3_exactly_once(kafka, good, s3, _ids(3_000))


def test_store_unavailable_error_names_the_operation(s3: S3Env) -> None:
    sink = S3Sink("lake", s3.client(read_only=True), s3.new_bucket(), "", "ndjson", endpoint=s3.endpoint)
    with pytest.raises(SinkUnavailable, match=r"sink lake: S3 PutObject on s3://t\w+/_staging/t/0/part-.*AccessDenied"):
        sink.prepare(Rows("t", 0, 0, 0, _big_tokens(1, 10)))
