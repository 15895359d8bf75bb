"""The Iceberg sink with its warehouse on S3 (the session's SeaweedFS store): data and
metadata land in the bucket, and a second reader with its own catalog connection and
S3 client sees exactly the committed rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config.pipeline import PipelineSpec
from app.lake.seaweed import RW
from app.sinks.iceberg import build_iceberg_sink
from tests.s3env import S3Env
from tests.unit.test_sink_files import Rows, _tokens

pytestmark = [pytest.mark.integration]


def test_warehouse_on_s3_round_trips_through_a_second_reader(
    s3: S3Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3.new_bucket()
    monkeypatch.setenv("LF_TEST_WH_KEY", RW[0])
    monkeypatch.setenv("LF_TEST_WH_SECRET", RW[1])
    catalog_uri = f"sqlite:///{tmp_path / 'catalog.db'}"
    spec = PipelineSpec.model_validate(
        {
            "pipeline": "p",
            "sinks": [
                {
                    "name": "t",
                    "type": "iceberg",
                    "input": "orders",
                    "catalog": {"uri": catalog_uri},
                    "warehouse": f"s3://{bucket}/warehouse",
                    "table": "lake.orders",
                    "s3": {
                        "endpoint_url": s3.endpoint,
                        "path_style": True,
                        "credentials": {
                            "access_key_id": {"env": "LF_TEST_WH_KEY"},
                            "secret_access_key": {"env": "LF_TEST_WH_SECRET"},
                        },
                    },
                }
            ],
        }
    )
    sink = build_iceberg_sink(spec.sinks[0])
    sink.recover([("orders", 0)], {}, dict)
    tokens = _tokens(120)
    for first in (0, 60):
        sink.commit_external(sink.prepare(Rows("orders", 0, first, first + 59, tokens[first : first + 60])))

    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert any(k.startswith("warehouse/lake/orders/data/") and k.endswith(".parquet") for k in keys), keys
    assert any(k.startswith("warehouse/lake/orders/metadata/") for k in keys), keys

    from pyiceberg.catalog.sql import SqlCatalog

    reader = SqlCatalog(
        "ledgerflow",
        uri=catalog_uri,
        warehouse=f"s3://{bucket}/warehouse",
        **{
            "s3.endpoint": s3.endpoint,
            "s3.access-key-id": RW[0],
            "s3.secret-access-key": RW[1],
            "s3.region": "us-east-1",
            "s3.force-virtual-addressing": "false",
        },
    )
    ids = reader.load_table("lake.orders").scan(selected_fields=("_token_id",)).to_arrow().column(0).to_pylist()
    assert sorted(ids) == sorted(t["token_id"] for t in tokens)
    assert RW[1] not in sink.where  # the secret never reaches messages
