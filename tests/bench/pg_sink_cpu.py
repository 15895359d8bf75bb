"""CPU per row of the PostgreSQL sink stage, for comparing checkouts of the code.

    .venv/bin/python -m tests.bench.pg_sink_cpu [--rows 500000] [--runs 3] [CHECKOUT ...]

Produces ``--rows`` JSON rows (the bench's ``pg`` scenario input) to a new 2-partition
topic once, starts a throwaway PostgreSQL server, then runs ``ledgerflow run SPEC
--stage sink --exit-when-done`` over the whole topic ``--runs`` times per checkout
(default: this one), alternating the checkouts so drift hits each alike. Each run has
its own sink name and table, so none starts from another's offsets. Prints user+sys
CPU seconds of the stage process per row (start-up included) and its wall time; the
database server's CPU is not counted. The broker: ``KAFKA_BOOTSTRAP_SERVERS`` or the
project's local one.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from app.kafka.admin import Admin
from app.kafka.local_broker import ensure_bootstrap
from tests.bench.harness import PG_SINK_COLUMNS, PY, REPO, produce_json
from tests.pgserver import PgServer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--port", type=int, default=15710)
    ap.add_argument("checkouts", nargs="*", type=Path, default=[REPO])
    args = ap.parse_args()
    bootstrap = ensure_bootstrap(None)
    tag = uuid.uuid4().hex[:6]
    topic = f"pgcpu-{tag}"
    Admin(bootstrap).create_topic(topic, 2, 1, {})
    print(f"producing {args.rows:,} JSON rows to {topic}", flush=True)
    produce_json(bootstrap, topic, args.rows)
    server = PgServer(args.port)
    server.init()
    tmp = Path(tempfile.mkdtemp(prefix="ledgerflow-pgcpu-"))
    try:
        for run in range(args.runs):
            for n, checkout in enumerate(args.checkouts):
                name = f"c{tag}r{run}k{n}"
                spec = tmp / f"{name}.yaml"
                spec.write_text(
                    f'pipeline: {name}\nkafka: {{bootstrap_servers: "{bootstrap}"}}\n'
                    f"sinks:\n  - name: s{name}\n    type: postgres\n    input: {topic}\n    input_format: json\n"
                    f'    dsn: "{server.dsn}"\n    table: t_{name}\n    create_table: true\n{PG_SINK_COLUMNS}'
                    "    part: {max_rows: 20000, max_age_ms: 1000}\n"
                )
                argv = [PY, "-m", "app.cli.main", "run", str(spec), "--stage", "sink", "--worker-id", "cpu"]
                before, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
                with open(tmp / f"{name}.log", "w") as log:
                    subprocess.run(
                        [*argv, "--exit-when-done"],
                        cwd=checkout,
                        env={**os.environ, "PYTHONPATH": str(checkout)},
                        stdout=subprocess.DEVNULL,
                        stderr=log,
                        check=True,
                    )
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
                print(
                    f"{checkout!s:<24} run {run + 1}: CPU {cpu:6.2f} s = {cpu / args.rows * 1e6:5.2f} µs/row, "
                    f"wall {time.monotonic() - t0:5.1f} s",
                    flush=True,
                )
    finally:
        server.destroy()


if __name__ == "__main__":
    main()
