"""Lookup-join pipelines for tests: a versioned customers table, the spec, and the
joined rows recomputed from the input.

The reference below is written independently of ``app.transforms.joins``: the table
as a dict of per-key version lists, looked up at each row's event time."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from tests.conftest import KafkaEnv
from tests.harness import hanging_transactions
from tests.stateful_harness import input_by_partition, sink_rows, write_stateful

T0 = 1_700_000_000_000
RETENTION_MS = 86_400_000
CUSTOMERS = [f"c{k:05d}" for k in range(4096)]
BAD_TABLE_RECORDS = {"json_decode": 2, "json_not_object": 1}


def drop_some_customers(row: dict[str, Any]) -> dict[str, Any]:
    """Map step: every 500th row loses its ``customer`` field (the join key)."""
    if int(row["id"]) % 500 == 3:
        return {k: v for k, v in row.items() if k != "customer"}
    return row


def table_versions() -> list[tuple[str, int, dict[str, Any] | None]]:
    """(key, timestamp, value or None for a tombstone), in the order they are produced.
    Every 10th customer has no record; the rest a first version before every row, every
    3rd a second one mid-stream, every 7th a tombstone later on."""
    out: list[tuple[str, int, dict[str, Any] | None]] = []
    for k, c in enumerate(CUSTOMERS):
        if k % 10 == 0:
            continue
        out.append((c, T0 - 10_000, {"name": f"name-{k}", "tier": "bronze", "since": 1}))
    for k, c in enumerate(CUSTOMERS):
        if k % 10 and k % 3 == 0:
            out.append((c, T0 + 20_000 + 2 * k, {"name": f"name-{k}", "tier": "gold", "since": 2}))
    for k, c in enumerate(CUSTOMERS):
        if k % 10 and k % 7 == 0:
            out.append((c, T0 + 35_000 + k, None))
    return out


def create_table_topic(kafka: KafkaEnv, topic: str, partitions: int) -> None:
    from app.kafka.admin import Admin

    configs = {"cleanup.policy": "compact", "min.compaction.lag.ms": str(RETENTION_MS)}
    Admin(kafka.bootstrap).create_topic(topic, partitions, 1, configs)


def produce_table(kafka: KafkaEnv, topic: str, partitions: int) -> None:
    """The table's versions (plain producer, default partitioner like the source's), plus
    records the table decoder must refuse: invalid JSON, and JSON that is no object.
    (A compacted topic refuses records without a key: those cannot occur.)"""
    import orjson

    create_table_topic(kafka, topic, partitions)
    failed: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(str(err))

    p = Producer({"bootstrap.servers": kafka.bootstrap, "linger.ms": 20})
    for key, ts, value in table_versions():
        p.produce(
            topic, None if value is None else orjson.dumps(value), key.encode(), timestamp=ts, on_delivery=delivered
        )
    for i in range(BAD_TABLE_RECORDS["json_decode"]):
        p.produce(topic, b"{not json", f"bad-{i}".encode(), timestamp=T0, on_delivery=delivered)
    p.produce(topic, b"[1, 2]", b"bad-list", timestamp=T0, on_delivery=delivered)
    assert p.flush(30) == 0 and not failed, f"table records not delivered: {failed[:3]}"


@dataclass
class JoinPipeline:
    name: str
    spec: Path
    out: Path
    raw: str
    table: str
    state_dir: Path


def write_join(
    tmp: Path,
    name: str,
    kafka: KafkaEnv,
    *,
    rows: int = 6_000,
    join_type: str = "left",
    global_table: bool = False,
    retention_ms: int = RETENTION_MS,
    rate: int | None = None,
) -> JoinPipeline:
    """The stateful test pipeline (``tests.stateful_harness``) ending in a lookup join on
    ``<name>.customers``, which ``produce_table`` creates (or the test itself)."""
    table = f"{name}.customers"
    op = f"""      lookup_join:
        table: {table}
        key_field: customer
        type: {join_type}
        fields: [name, tier, since]
        prefix: "customer_"
        time_field: ts
        history_retention_ms: {retention_ms}
        global: {"true" if global_table else "false"}
"""
    sp = write_stateful(tmp, name, kafka, op, rows=rows, rate=rate)
    step = '      - map: "tests.fns:jitter_time"\n'
    sp.spec.write_text(
        sp.spec.read_text().replace(step, step + '      - map: "tests.join_harness:drop_some_customers"\n')
    )
    return JoinPipeline(name, sp.spec, sp.out, sp.raw, table, sp.state_dir)


@dataclass
class Joined:
    rows: dict[str, dict[str, Any]]  # token id -> the table fields the row must carry
    no_key: int  # rows without the join key
    expired: int  # rows older than the table's time - history retention


def expected_join(kafka: KafkaEnv, raw: str, join_type: str = "left", retention_ms: int = RETENTION_MS) -> Joined:
    """What the join must emit: every table record is in the topic before the first row
    is joined, so the table's time is its largest version timestamp throughout."""
    versions: dict[str, list[tuple[int, dict[str, Any] | None]]] = {}
    for key, ts, value in table_versions():
        versions.setdefault(key, []).append((ts, value))
    cutoff = max(ts for _k, ts, _v in table_versions()) - retention_ms
    res = Joined({}, 0, 0)
    for toks in input_by_partition(kafka, raw).values():
        for tok in toks:
            payload = drop_some_customers(tok["payload"])
            if "customer" not in payload:
                res.no_key += 1
                continue
            if payload["ts"] < cutoff:
                res.expired += 1
                continue
            in_force = None
            for ts, value in sorted(versions.get(payload["customer"], []), key=lambda v: v[0]):
                if ts <= payload["ts"]:
                    in_force = value
            if in_force is None and join_type == "inner":
                continue
            fields = in_force or {}
            res.rows[tok["token_id"]] = {f"customer_{f}": fields.get(f) for f in ("name", "tier", "since")}
    return res


FIELDS = ("customer_name", "customer_tier", "customer_since")


def assert_joined(kafka: KafkaEnv, jp: JoinPipeline, join_type: str, retention_ms: int = RETENTION_MS) -> Joined:
    """The sink holds exactly the recomputed joined rows, each once."""
    joined = expected_join(kafka, jp.raw, join_type, retention_ms)
    want = joined.rows
    rows = sink_rows(jp.out)
    got = {r["_token_id"]: {f: r.get(f) for f in FIELDS} for r in rows}
    assert len(got) == len(rows), "a row was joined twice"
    assert set(got) == set(want), (sorted(set(want) - set(got))[:5], sorted(set(got) - set(want))[:5])
    wrong = [k for k in want if got[k] != want[k]]
    assert not wrong, (
        f"{len(wrong)} rows joined the wrong version, e.g. {wrong[0]}: {got[wrong[0]]} != {want[wrong[0]]}"
    )
    assert hanging_transactions(kafka, f"ledgerflow.{jp.name}.") == []
    return joined
