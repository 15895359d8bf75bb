"""PostgreSQL sink throughput, side by side in one run on one server.

    .venv/bin/python -m tests.bench.pg_sink_bench [--rows 200000] [--part 10000]

Contenders, identical generated rows (~100 bytes), parts of ``--part`` rows, one DB
transaction per part including the offsets compare-and-set:
  * ledgerflow sink, COPY fast path (COPY into a temp table + INSERT ... ON CONFLICT)
  * ledgerflow sink, executemany INSERT ... ON CONFLICT
  * a plain COPY of the same rows into a table without a key (the ceiling)
Starts its own throwaway PostgreSQL server (tests/pgserver.py).
"""

from __future__ import annotations

import argparse
import time

import psycopg

from app.sinks.postgres import Column, PostgresWriter
from app.sources.generator import GeneratorSource
from tests.pgserver import PgServer

COLUMNS = [
    Column("token_id", "text", "_token_id"),
    Column("id", "bigint", "id"),
    Column("customer", "text", "customer"),
    Column("country", "text", "country"),
    Column("amount", "bigint", "amount"),
    Column("quantity", "int", "quantity"),
    Column("note", "text", "note"),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--part", type=int, default=10_000)
    ap.add_argument("--port", type=int, default=15632)
    args = ap.parse_args()
    tokens = GeneratorSource("g", rows=args.rows, seed=1).poll(args.rows).tokens
    server = PgServer(args.port)
    server.init()
    results: list[tuple[str, float]] = []
    try:
        for label, use_copy in (("ledgerflow sink, COPY fast path", True), ("ledgerflow sink, executemany", False)):
            table = "bench_copy" if use_copy else "bench_insert"
            w = PostgresWriter("bench", server.dsn, table, COLUMNS, ["token_id"], create_table=True, use_copy=use_copy)
            w.ensure_schema()
            t0 = time.perf_counter()
            expected = None
            for start in range(0, args.rows, args.part):
                chunk = tokens[start : start + args.part]
                w.write_part(
                    "in",
                    0 if use_copy else 1,
                    expected,
                    start + len(chunk),
                    chunk,
                    list(range(start, start + len(chunk))),
                )
                expected = start + len(chunk)
            results.append((label, args.rows / (time.perf_counter() - t0)))
            w.close()
        with psycopg.connect(server.dsn, autocommit=True) as c:
            c.execute(
                "CREATE TABLE plain (token_id text, id bigint, customer text, country text, amount bigint, "
                "quantity int, note text)"
            )
            t0 = time.perf_counter()
            for start in range(0, args.rows, args.part):
                with c.transaction(), c.cursor() as cur, cur.copy("COPY plain FROM STDIN") as copy:
                    for t in tokens[start : start + args.part]:
                        p = t["payload"]
                        copy.write_row(
                            (
                                t["token_id"],
                                p["id"],
                                p["customer"],
                                p["country"],
                                p["amount"],
                                p["quantity"],
                                p["note"],
                            )
                        )
            results.append(("plain COPY (no key, no offsets)", args.rows / (time.perf_counter() - t0)))
    finally:
        server.destroy()
    ceiling = results[-1][1]
    print(f"PostgreSQL sink, {args.rows:,} rows, parts of {args.part:,} rows")
    print(f"{'contender':<36}{'rows/s':>12}{'vs plain COPY':>16}")
    for label, rate in results:
        print(f"{label:<36}{rate:>12,.0f}{rate / ceiling:>15.2f}x")


if __name__ == "__main__":
    main()
