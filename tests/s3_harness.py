"""Pipelines into the S3 sink, and the independent read-back of a bucket (boto3 only)."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from app.codecs.tokens import TokenCodec
from app.journal.reader import load_journal
from app.kafka.admin import Admin
from app.kafka.readers import read_range
from app.sinks.base import Chunk
from app.sinks.encode import Encoded, encode
from tests.conftest import KafkaEnv
from tests.harness import PipelineFiles, write_pipeline
from tests.s3env import S3Env

SINK = "lake"


def write_s3_pipeline(
    tmp: Path,
    name: str,
    kafka: KafkaEnv,
    s3: S3Env,
    bucket: str,
    *,
    fmt: str = "ndjson",
    multipart_threshold: int | None = None,
    rows: int = 10_000,
    part_rows: int = 500,
    source_block: str | None = None,
    read_only: bool = False,
    endpoint: str | None = None,
    partitions: int = 3,
) -> PipelineFiles:
    """source → transform → ``type: s3`` sink ``lake`` under prefix ``runs``; a threshold
    of 0 sends every part as a multipart upload, None keeps the default (staged put)."""
    pf = write_pipeline(
        tmp, name, kafka, rows=rows, part_rows=part_rows, source_block=source_block, partitions=partitions
    )
    head, _sep, _tail = pf.spec.read_text().partition("sinks:\n")
    threshold = "" if multipart_threshold is None else f"    multipart_threshold_bytes: {multipart_threshold}\n"
    conn = s3.connection_yaml("    ", read_only=read_only, endpoint=endpoint)
    pf.spec.write_text(
        head
        + f"""sinks:
  - name: {SINK}
    type: s3
    input: {pf.clean}
    bucket: {bucket}
    prefix: runs
    format: {fmt}
{threshold}{conn}    part: {{max_rows: {part_rows}, max_age_ms: 2000}}
"""
    )
    return PipelineFiles(name, pf.spec, Path(bucket), pf.raw, pf.clean, rows)


def bucket_objects(s3: S3Env, bucket: str) -> dict[str, bytes]:
    """Every object in the bucket, read with a fresh client: key -> bytes."""
    client = s3.client()
    out: dict[str, bytes] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


def pending_uploads(s3: S3Env, bucket: str) -> list[str]:
    client = s3.client()
    return [
        u["Key"]
        for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket)
        for u in page.get("Uploads", [])
    ]


def object_token_ids(key: str, data: bytes) -> list[str]:
    if key.endswith(".ndjson"):
        return [orjson.loads(line)["_token_id"] for line in data.splitlines()]
    import pyarrow.parquet as pq

    return [str(v) for v in pq.read_table(io.BytesIO(data)).column("_token_id").to_pylist()]


def assert_s3_exactly_once(kafka: KafkaEnv, pf: PipelineFiles, s3: S3Env, expected_ids: set[str]) -> dict[str, bytes]:
    """Each expected token id exactly once across the bucket's final objects, nothing
    staged or pending, the journal's parts all finalized, group offsets at the end.
    Returns the final objects (key -> bytes)."""
    bucket = str(pf.out)
    objects = bucket_objects(s3, bucket)
    staged = [k for k in objects if "/_staging/" in k]
    assert staged == [], f"staging objects left behind: {staged[:5]}"
    assert pending_uploads(s3, bucket) == [], "multipart uploads left pending"
    final = {k: v for k, v in objects.items() if k.startswith(f"runs/{pf.clean}/partition=")}
    assert set(final) == set(objects), f"objects outside the sink's layout: {sorted(set(objects) - set(final))[:5]}"
    ids = [tid for k, v in sorted(final.items()) for tid in object_token_ids(k, v)]
    dupes = len(ids) - len(set(ids))
    missing = expected_ids - set(ids)
    assert dupes == 0, f"{dupes} duplicate rows in the bucket"
    assert not missing, f"{len(missing)} rows lost, e.g. {sorted(missing)[:5]}"
    assert set(ids) == expected_ids, f"unexpected rows, e.g. {sorted(set(ids) - expected_ids)[:5]}"

    events = load_journal(kafka.bootstrap, f"{pf.name}.journal")
    unfinalized = [k for k, ev in events.items() if ev.kind == "part_committed"]
    assert unfinalized == [], f"committed parts never finalized: {unfinalized[:5]}"
    finalized = [ev.part for ev in events.values() if ev.kind == "part_finalized" and ev.part]
    assert sum(p.rows for p in finalized) == len(ids), "journal row counts disagree with the objects"
    assert {p.final_path for p in finalized} == {f"s3://{bucket}/{k}" for k in final}

    admin = Admin(kafka.bootstrap)
    parts = [(pf.clean, p) for p in admin.partitions_of(pf.clean)]
    ends = admin.end_offsets(parts)
    committed = admin.group_offsets(f"ledgerflow.{pf.name}.sink.{SINK}", parts)
    for tp in parts:
        assert ends[tp] - committed.get(tp, 0) <= 1, f"{tp}: committed {committed.get(tp)} end {ends[tp]}"
    return final


@dataclass(frozen=True)
class _Range:
    """The records of one offset range as the seam hands them to a sink."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    chunk: Chunk

    def chunks(self) -> Iterator[Chunk]:
        yield self.chunk


def assert_objects_are_their_ranges(kafka: KafkaEnv, pf: PipelineFiles, objects: dict[str, bytes], fmt: str) -> None:
    """Every final object holds exactly the bytes an undisturbed sink writes for its
    offset range: re-read the range from the input topic, encode it, compare."""
    codec = TokenCodec()
    pattern = re.compile(r"partition=(\d+)/part-(\d{20})-(\d{20})\." + fmt + "$")
    for key, data in objects.items():
        m = pattern.search(key)
        assert m, f"object key not in the sink's layout: {key}"
        partition, first, last = int(m[1]), int(m[2]), int(m[3])
        recs = [r for r in read_range(kafka.bootstrap, pf.clean, partition, first, last + 1) if r.value]
        chunk = Chunk(
            [codec.decode(r.value or b"") for r in recs], [r.offset for r in recs], [len(r.value or b"") for r in recs]
        )
        expected = b"".join(
            bytes(b) for b in encode(_Range(pf.clean, partition, first, last, chunk), fmt, 16 << 20, Encoded())
        )
        assert data == expected, f"{key}: bytes differ from an undisturbed encoding of its offset range"
