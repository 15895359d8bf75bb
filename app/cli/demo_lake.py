"""The demo's lake targets: ``ledgerflow demo --sink s3|iceberg``.

``s3`` starts the local S3 store (``app.lake.seaweed``) under ``.ledgerflow/demo/s3``,
creates the bucket and hands the store's keys to ``pipelines/demo-s3.yaml`` through the
environment variables it references; afterwards it lists the bucket with its own client.
``iceberg`` points ``pipelines/demo-iceberg.yaml`` at a SQLite catalog under
``.ledgerflow/demo/iceberg`` and scans the table afterwards. Both keep their data, so a
second demo run adds nothing.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from app.config.pipeline import IcebergSink, PipelineSpec, S3Sink, load_pipeline

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_DIR = REPO_ROOT / ".ledgerflow" / "demo"
Counter = Callable[[], str]


@contextmanager
def lake_target(spec: PipelineSpec, target: str) -> Iterator[tuple[PipelineSpec, str, Counter | None]]:
    """The spec to run for ``target``, its file, and a function describing what landed
    (None for files: the demo counts those itself)."""
    if target == "files":
        yield spec, "", None
    elif target == "s3":
        yield from _s3()
    elif target == "iceberg":
        yield from _iceberg()
    else:
        raise ValueError(f"unknown demo sink {target!r} (files, s3 or iceberg)")


def _s3() -> Iterator[tuple[PipelineSpec, str, Counter | None]]:
    from app.lake.seaweed import DEFAULT_BASE_PORT, RW, SeaweedServer

    spec = load_pipeline(REPO_ROOT / "pipelines" / "demo-s3.yaml")
    sink = spec.sinks[0]
    assert isinstance(sink, S3Sink)
    server = SeaweedServer(DEMO_DIR / "s3", int(os.environ.get("LEDGERFLOW_DEMO_S3_PORT", DEFAULT_BASE_PORT)))
    if server.endpoint != sink.connection.endpoint_url:
        raise ValueError(f"pipelines/demo-s3.yaml expects the store at {sink.connection.endpoint_url}")
    server.start()
    try:
        server.create_bucket(sink.bucket)
        os.environ["LEDGERFLOW_DEMO_S3_ACCESS_KEY"], os.environ["LEDGERFLOW_DEMO_S3_SECRET_KEY"] = RW

        def count() -> str:
            import pyarrow.parquet as pq

            s3 = server.client()
            rows, objects, ids = 0, 0, set()
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=sink.bucket, Prefix=sink.prefix + "/"):
                for obj in page.get("Contents", []):
                    data = s3.get_object(Bucket=sink.bucket, Key=obj["Key"])["Body"].read()
                    col = pq.read_table(io.BytesIO(data), columns=["_token_id"]).column(0).to_pylist()
                    rows, objects = rows + len(col), objects + 1
                    ids.update(col)
            pending = len(s3.list_multipart_uploads(Bucket=sink.bucket).get("Uploads", []))
            return (
                f"sink {sink.name}: {rows:,} rows in {objects} object(s) under s3://{sink.bucket}/{sink.prefix}/ "
                f"at {server.endpoint}; {len(ids):,} distinct token ids ({rows - len(ids)} duplicates), "
                f"{pending} pending upload(s)"
            )

        yield spec, str(REPO_ROOT / "pipelines" / "demo-s3.yaml"), count
    finally:
        server.stop()


def _iceberg() -> Iterator[tuple[PipelineSpec, str, Counter | None]]:
    spec = load_pipeline(REPO_ROOT / "pipelines" / "demo-iceberg.yaml")
    sink = spec.sinks[0]
    assert isinstance(sink, IcebergSink)
    root = DEMO_DIR / "iceberg"
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("LEDGERFLOW_DEMO_ICEBERG_URI", f"sqlite:///{root / 'catalog.db'}")

    def count() -> str:
        from pyiceberg.catalog.sql import SqlCatalog

        catalog = SqlCatalog(
            sink.catalog.name, uri=os.environ["LEDGERFLOW_DEMO_ICEBERG_URI"], warehouse=f"file://{sink.warehouse}"
        )
        table = catalog.load_table(sink.table)
        ids = table.scan(selected_fields=("_token_id",)).to_arrow().column(0).to_pylist()
        snapshots = len(table.metadata.snapshots)
        return (
            f"sink {sink.name}: {len(ids):,} rows in Iceberg table {sink.table} ({snapshots} snapshot(s), "
            f"warehouse {sink.warehouse}); {len(set(ids)):,} distinct token ids ({len(ids) - len(set(ids))} duplicates)"
        )

    yield spec, str(REPO_ROOT / "pipelines" / "demo-iceberg.yaml"), count
