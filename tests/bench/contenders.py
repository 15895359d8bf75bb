"""The non-ledgerflow contenders of the benchmark, one mode each.

    python tests/bench/contenders.py MODE --bootstrap B --input T --output T --group G --rows N

Each reads ``--rows`` JSON rows from ``--input`` and writes the same rows with one
field added (the "trivial map") to ``--output``, as its users would write it, then
exits (faust, Quix and ``raweos`` run until the harness stops them). ``raweos`` copies
the bytes unchanged (no codec: the librdkafka floor); ``rawparquet`` and the other
sink modes read ledgerflow tokens or JSON and write the sink's ceiling.
Progress is measured by the harness from the consumer group's committed offsets.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def _consumer(a: argparse.Namespace) -> Any:
    """A plain confluent-kafka consumer of ``--group``, offsets committed by hand."""
    from confluent_kafka import Consumer

    return Consumer(
        {
            "bootstrap.servers": a.bootstrap,
            "group.id": a.group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )


def raw_loop(a: argparse.Namespace) -> None:
    """confluent-kafka, at-least-once: the no-guarantee ceiling for Python."""
    from confluent_kafka import Producer

    c = _consumer(a)
    p = Producer(
        {"bootstrap.servers": a.bootstrap, "linger.ms": 5, "batch.num.messages": 10000, "compression.type": "lz4"}
    )
    c.subscribe([a.input])
    done = 0
    loads, dumps = json.loads, json.dumps
    while done < a.rows:
        msgs = c.consume(10000, 0.2)
        for m in msgs:
            if m.error():
                continue
            row = loads(m.value())
            row["x"] = 1
            while True:
                try:
                    p.produce(a.output, dumps(row).encode(), m.key())
                    break
                except BufferError:
                    p.poll(0.05)
        if msgs:
            p.poll(0)
            c.commit(asynchronous=True)
            done += len(msgs)
    p.flush()
    c.commit(asynchronous=False)
    c.close()


def raw_eos(a: argparse.Namespace) -> None:
    """confluent-kafka, exactly once, no codec: consume read_committed, produce the same
    bytes, one transaction per ``--interval-ms`` with the offsets in it (KIP-447), with
    ledgerflow's producer settings. What is left above this is librdkafka and the broker."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    c = Consumer(
        {
            "bootstrap.servers": a.bootstrap,
            "group.id": a.group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    p = Producer(
        {
            "bootstrap.servers": a.bootstrap,
            "transactional.id": f"{a.group}-txn",
            "linger.ms": 5,
            "batch.num.messages": 10_000,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 1_000_000,
            "compression.type": "lz4",
        }
    )
    p.init_transactions()
    c.subscribe([a.input])
    interval = a.interval_ms / 1000
    produce, out = p.produce, a.output
    while True:  # until the harness stops it
        p.begin_transaction()
        deadline = time.monotonic() + interval
        ends: dict[tuple[str, int], int] = {}
        while (left := deadline - time.monotonic()) > 0:
            for m in c.consume(10_000, min(left, 0.1)):
                if m.error():
                    continue
                while True:
                    try:
                        produce(out, m.value(), m.key())
                        break
                    except BufferError:
                        p.poll(0.01)
                ends[(m.topic(), m.partition())] = m.offset() + 1
            p.poll(0)
        if ends:
            tps = [TopicPartition(t, n, o) for (t, n), o in ends.items()]
            p.send_offsets_to_transaction(tps, c.consumer_group_metadata())
        p.commit_transaction()


def raw_parquet(a: argparse.Namespace) -> None:
    """consume ledgerflow tokens + pyarrow Parquet parts, at-least-once (offsets after the write)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)
    c, parts = _token_parts(a)
    for n, rows in enumerate(parts):
        pq.write_table(pa.Table.from_pylist(rows), out / f"part-{n:06d}.parquet", compression="zstd")
        c.commit(asynchronous=False)
    c.close()


def _token_parts(a: argparse.Namespace) -> Any:
    """(consumer, iterator of row-dict parts of ``--part-rows``); commit the consumer after each."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from app.codecs.tokens import TokenCodec

    codec = TokenCodec()
    c = _consumer(a)
    c.subscribe([a.input])

    def parts() -> Any:
        done = 0
        buf: list[dict[str, object]] = []
        while done < a.rows:
            msgs = c.consume(10000, 0.2)
            for m in msgs:
                if m.error():
                    continue
                t = codec.decode(m.value())
                buf.append(
                    {"_token_id": t["token_id"], "_key": t["key"], "_event_time_ms": t["event_time_ms"], **t["payload"]}
                )
            done += len(msgs)
            if buf and (len(buf) >= a.part_rows or done >= a.rows or not msgs):
                yield buf
                buf = []

    return c, parts()


def raw_s3(a: argparse.Namespace) -> None:
    """consume ledgerflow tokens + pyarrow Parquet + one PutObject per part, at-least-once."""
    import io

    import boto3
    import pyarrow as pa
    import pyarrow.parquet as pq
    from botocore.config import Config

    key, secret = Path(a.key_file).read_text(), Path(a.secret_file).read_text()
    cfg = Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required")
    s3 = boto3.client("s3", endpoint_url=a.endpoint, aws_access_key_id=key, aws_secret_access_key=secret, config=cfg)
    c, parts = _token_parts(a)
    for n, rows in enumerate(parts):
        out = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), out, compression="zstd")
        s3.put_object(Bucket=a.output, Key=f"raw/part-{n:06d}.parquet", Body=out.getvalue())
        c.commit(asynchronous=False)
    c.close()


def raw_iceberg(a: argparse.Namespace) -> None:
    """consume ledgerflow tokens + a plain pyiceberg append per part, at-least-once."""
    import pyarrow as pa
    from pyiceberg.catalog.sql import SqlCatalog

    catalog = SqlCatalog("bench", uri=a.dsn, warehouse=f"file://{a.output}")
    catalog.create_namespace_if_not_exists("bench")
    table = None
    c, parts = _token_parts(a)
    for rows in parts:
        arrow = pa.Table.from_pylist(rows)
        # an all-null column (no keys) has no Iceberg v2 type: store it as string
        arrow = arrow.cast(
            pa.schema([pa.field(f.name, pa.string() if pa.types.is_null(f.type) else f.type) for f in arrow.schema])
        )
        if table is None:
            table = catalog.create_table_if_not_exists("bench.raw", schema=arrow.schema)
        table.append(arrow)
        c.commit(asynchronous=False)
    c.close()


PG_COLUMNS = ("id", "customer", "country", "amount", "quantity", "note")


def raw_copy(a: argparse.Namespace) -> None:
    """consume JSON rows + a plain ``COPY`` per batch into an unkeyed table, offsets
    committed after the database commit: at-least-once, the PostgreSQL ceiling."""
    import psycopg

    c = _consumer(a)
    c.subscribe([a.input])
    done = 0
    loads = json.loads
    cols = ", ".join(PG_COLUMNS)
    with psycopg.connect(a.dsn) as db:
        db.execute(
            f"CREATE TABLE IF NOT EXISTS {a.output} "
            "(id bigint, customer text, country text, amount bigint, quantity int, note text)"
        )
        db.commit()
        while done < a.rows:
            msgs = [m for m in c.consume(10000, 0.2) if not m.error()]
            if not msgs:
                continue
            with db.cursor() as cur, cur.copy(f"COPY {a.output} ({cols}) FROM STDIN") as cp:
                for m in msgs:
                    r = loads(m.value())
                    cp.write_row([r.get(k) for k in PG_COLUMNS])
            db.commit()
            c.commit(asynchronous=False)
            done += len(msgs)
    c.close()


def quix_pg(a: argparse.Namespace) -> None:
    """Quix Streams' PostgreSQLSink (at-least-once), upserting on the row id."""
    from urllib.parse import urlparse

    from quixstreams import Application
    from quixstreams.sinks.community.postgresql import PostgreSQLSink

    u = urlparse(a.dsn)
    app = Application(
        broker_address=a.bootstrap,
        consumer_group=a.group,
        auto_offset_reset="earliest",
        use_changelog_topics=False,
        auto_create_topics=False,
    )
    sink = PostgreSQLSink(
        host=u.hostname or "127.0.0.1",
        port=u.port or 5432,
        dbname=u.path.lstrip("/"),
        user=u.username or "",
        password=u.password or "",
        table_name=a.output,
        primary_key_columns="id",
        upsert_on_primary_key=True,
        include_metadata=False,
    )
    app.dataframe(app.topic(a.input, value_deserializer="json")).sink(sink)
    app.run()


def quix(a: argparse.Namespace) -> None:
    """Quix Streams with processing_guarantee="exactly-once", committing every
    ``--interval-ms`` (0: Quix's default, 5 s)."""
    from quixstreams import Application

    app = Application(
        broker_address=a.bootstrap,
        consumer_group=a.group,
        auto_offset_reset="earliest",
        processing_guarantee="exactly-once",
        **({"commit_interval": a.interval_ms / 1000} if a.interval_ms else {}),
        use_changelog_topics=False,
        auto_create_topics=False,
    )
    src = app.topic(a.input, value_deserializer="json")
    dst = app.topic(a.output, value_serializer="json")
    sdf = app.dataframe(src)
    sdf = sdf.apply(lambda row: {**row, "x": 1})
    sdf.to_topic(dst)
    app.run()


def faust_app(a: argparse.Namespace) -> None:
    """faust-streaming with processing_guarantee="exactly_once"."""
    import faust

    app = faust.App(
        a.group,
        broker=f"kafka://{a.bootstrap}",
        processing_guarantee="exactly_once",
        topic_allow_declare=False,
        topic_disable_leader=True,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        store="memory://",
    )
    src = app.topic(a.input, value_serializer="json")
    dst = app.topic(a.output, value_serializer="json")

    @app.agent(src)
    async def copy(stream):  # type: ignore[no-untyped-def]
        async for row in stream:
            await dst.send(value={**row, "x": 1})

    sys.argv = [sys.argv[0], "worker", "-l", "warn", "--without-web"]
    app.main()


MODES = {
    "raw": raw_loop,
    "raweos": raw_eos,
    "rawparquet": raw_parquet,
    "rawcopy": raw_copy,
    "raws3": raw_s3,
    "rawiceberg": raw_iceberg,
    "quix": quix,
    "quixpg": quix_pg,
    "faust": faust_app,
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=sorted(MODES))
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--rows", type=int, required=True)
    ap.add_argument("--part-rows", type=int, default=50_000)
    ap.add_argument("--interval-ms", type=int, default=0, help="commit interval (raweos, quix); 0: the default")
    ap.add_argument("--dsn", default="")
    ap.add_argument("--endpoint", default="")
    ap.add_argument("--key-file", default="")
    ap.add_argument("--secret-file", default="")
    a = ap.parse_args()
    t0 = time.monotonic()
    MODES[a.mode](a)
    print(f"{a.mode}: {a.rows} rows in {time.monotonic() - t0:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
