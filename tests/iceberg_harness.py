"""Helpers for tests of the Iceberg sink: a pipeline spec writing one table on a SQL
catalog, and a reader that opens the table from a *second* process (its own catalog
connection), as any other engine would."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.kafka.admin import Admin
from tests.conftest import KafkaEnv
from tests.harness import REPO, journal_coverage, write_pipeline

SINK = "lake"
PROJECT = "      - project: {fields: [id, customer, country, amount, quantity]}\n"


@dataclass
class IcebergPipeline:
    name: str
    spec: Path
    raw: str
    clean: str
    catalog_uri: str
    warehouse: Path
    table: str
    rows: int


def catalog_uri(postgres: Any) -> str:
    """The SQLAlchemy URL of the test PostgreSQL server (the catalog database)."""
    return str(postgres.dsn).replace("postgresql://", "postgresql+psycopg://", 1)


def write_iceberg_pipeline(
    tmp: Path,
    name: str,
    kafka: KafkaEnv,
    uri: str,
    *,
    rows: int = 10_000,
    rate: int | None = None,
    steps: str = PROJECT,
    part_rows: int = 1000,
    partitions: int = 3,
    max_age_ms: int = 2000,
) -> IcebergPipeline:
    """generator -> transform -> ``type: iceberg`` sink ``lake`` into ``ns_<name>.orders``."""
    rate_line = f"    rate_per_s: {rate}\n" if rate else ""
    src = f"  - name: gen\n    type: generator\n    topic: {name}.raw\n    rows: {rows}\n    seed: 11\n{rate_line}"
    pf = write_pipeline(
        tmp, name, kafka, rows=rows, source_block=src, part_rows=part_rows, partitions=partitions, steps=steps
    )
    table = f"ns_{name.replace('-', '_')}.orders"
    head, _sep, _tail = pf.spec.read_text().partition("sinks:\n")
    pf.spec.write_text(
        head
        + f"""sinks:
  - name: {SINK}
    type: iceberg
    input: {pf.clean}
    catalog: {{uri: "{uri}"}}
    warehouse: warehouse
    table: {table}
    part: {{max_rows: {part_rows}, max_age_ms: {max_age_ms}}}
"""
    )
    return IcebergPipeline(name, pf.spec, pf.raw, pf.clean, uri, tmp / "warehouse", table, rows)


_READER = """
import json, sys
from pyiceberg.catalog.sql import SqlCatalog
uri, warehouse, name, sink = sys.argv[1:5]
table = SqlCatalog("ledgerflow", uri=uri, warehouse=warehouse).load_table(name)
snap = table.current_snapshot()
data = table.scan().to_arrow()
files = list(table.scan().plan_files())
summary = snap.summary.additional_properties if snap else {}
print(json.dumps({
    "token_ids": data.column("_token_id").to_pylist(),
    "rows": sorted(json.dumps(r, sort_keys=True, default=str) for r in data.to_pylist()),
    "columns": data.column_names,
    "offsets": json.loads(summary.get("ledgerflow.offsets." + sink, "{}")),
    "files": len(files),
    "snapshots": len(table.metadata.snapshots),
    "operation": str(snap.summary.operation.value) if snap else None,
    "retries": table.properties.get("commit.retry.num-retries"),
}))
"""


def read_table(p: IcebergPipeline) -> dict[str, Any]:
    """The table as a separate process reads it: token ids, rows (sorted JSON), column
    names, the current snapshot's offsets map of the sink, data files, snapshots."""
    proc = subprocess.run(
        [sys.executable, "-c", _READER, p.catalog_uri, p.warehouse.resolve().as_uri(), p.table, SINK],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def assert_iceberg_exactly_once(kafka: KafkaEnv, p: IcebergPipeline, expected_ids: set[str]) -> dict[str, Any]:
    """Each expected token id exactly once in the table (read by a second process); the
    snapshot's offsets == the sink group's offsets == the end of the input; the journal
    covers exactly what the table committed."""
    got = read_table(p)
    ids: list[str] = got["token_ids"]
    dupes = len(ids) - len(set(ids))
    missing = expected_ids - set(ids)
    assert dupes == 0, f"{dupes} duplicate rows in {p.table}"
    assert not missing, f"{len(missing)} rows lost, e.g. {sorted(missing)[:5]}"
    assert set(ids) == expected_ids, f"unexpected rows, e.g. {sorted(set(ids) - expected_ids)[:5]}"
    stored = {int(k): v for k, v in got["offsets"].get(p.clean, {}).items()}
    admin = Admin(kafka.bootstrap)
    parts = [(p.clean, n) for n in admin.partitions_of(p.clean)]
    ends = admin.end_offsets(parts)
    group = admin.group_offsets(f"ledgerflow.{p.name}.sink.{SINK}", parts)
    covered = journal_coverage(kafka, p.name, p.clean)
    for tp in parts:
        n = tp[1]
        assert group.get(tp) == stored.get(n), f"{tp}: group {group.get(tp)} vs snapshot {stored.get(n)}"
        assert ends[tp] - stored.get(n, 0) <= 1, f"{tp}: snapshot at {stored.get(n)}, end {ends[tp]}"
        assert covered.get(n) == stored.get(n), f"{tp}: journal covers {covered.get(n)}, snapshot {stored.get(n)}"
    return got


def evolve(row: dict[str, Any]) -> dict[str, Any]:
    """Schema evolution input: rows from id 5000 on carry a new field ``coupon``; every
    row with id % 1000 == 333 past the first thousand has a string ``amount`` (the
    column is long): that row is unwritable."""
    i = int(row["id"])
    out = {k: row[k] for k in ("id", "customer", "country", "amount", "quantity")}
    if i >= 5000:
        out["coupon"] = f"C{i % 17}"
    if i >= 1000 and i % 1000 == 333:
        out["amount"] = f"{out['amount']} cents"
    return out
