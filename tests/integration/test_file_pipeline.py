"""File source → transform → file sink on the real broker: bad input (I7), a line
written in two halves across a crash (I6), graceful stop on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from app.kafka.clients import TxnProducer
from tests.conftest import KafkaEnv
from tests.harness import (
    LEDGERFLOW,
    REPO,
    assert_exactly_once,
    popen,
    read_dlq,
    run,
    sink_lines,
    token_ids,
    uid,
    wait_for_rows,
    write_pipeline,
)

pytestmark = pytest.mark.integration


def _file_pipeline(tmp: Path, name: str, kafka: KafkaEnv, steps: str = "") -> object:
    data = tmp / "in"
    data.mkdir()
    src = f"""  - name: files
    type: file
    topic: {name}.raw
    path: in/*.ndjson
    format: ndjson
"""
    return write_pipeline(tmp, name, kafka, source_block=src, steps=steps or "      - project: {fields: [i, s]}\n")


def test_bad_input_goes_to_dlq_and_good_rows_land_once(kafka: KafkaEnv, tmp_path: Path) -> None:
    name = f"badin-{uid()}"
    pf = _file_pipeline(tmp_path, name, kafka, steps='      - map: "tests.fns:fail_every_97th"\n')
    lines = []
    for i in range(1, 2001):
        lines.append(orjson.dumps({"i": i, "s": "x" * (i % 7)}))
        if i % 250 == 0:
            lines.append(b"{broken json")
        if i % 400 == 0:
            lines.append(b'"a string, not an object"')
    (tmp_path / "in" / "a.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    # an undecodable record written straight into the transform's input topic
    proc = popen(pf.spec, "--worker-id", "w1", log=tmp_path / "run.log")  # type: ignore[attr-defined]
    try:
        p = TxnProducer(kafka.bootstrap, f"{name}-garbage")
        wait_for_rows(pf.out, 100, proc=proc)  # type: ignore[attr-defined]
        p.init()
        p.begin()
        p.produce(f"{name}.raw", b"\x00\x01 not a token", b"k")
        p.commit()
        good = [i for i in range(1, 2001) if i % 97]
        rows = wait_for_rows(pf.out, len(good), proc=proc)  # type: ignore[attr-defined]
        # the good rows can all land before the transform reads the late garbage record:
        # stop only once that record is in the DLQ
        deadline = time.monotonic() + 60
        while not any(d["error_class"] == "avro_decode" for d in read_dlq(kafka, f"{name}.dlq")):
            assert proc.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the undecodable record never reached the DLQ"
            time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0, (tmp_path / "run.log").read_text()[-3000:]
    rows = sink_lines(pf.out)  # type: ignore[attr-defined]
    assert sorted(orjson.loads(r)["i"] for r in rows) == good
    ids = token_ids(rows)
    assert len(ids) == len(set(ids))

    dlq = read_dlq(kafka, f"{name}.dlq")
    kinds = Counter(str(d["error_class"]) for d in dlq)
    assert kinds == {"json_decode": 8, "json_not_object": 5, "transform_error": 2000 // 97, "avro_decode": 1}
    broken = next(d for d in dlq if d["error_class"] == "json_decode")
    assert broken["original_value"] == b"{broken json"
    assert broken["origin"]["file"].endswith("a.ndjson") and int(broken["origin"]["byte_offset"]) > 0
    unlucky = next(d for d in dlq if d["error_class"] == "transform_error")
    assert "is unlucky" in str(unlucky["error_message"]) and unlucky["origin"]["topic"] == f"{name}.raw"


def test_line_written_in_two_halves_across_a_crash_lands_once_whole(kafka: KafkaEnv, tmp_path: Path) -> None:
    name = f"half-{uid()}"
    pf = _file_pipeline(tmp_path, name, kafka)
    f = tmp_path / "in" / "a.ndjson"
    body = b"".join(orjson.dumps({"i": i, "s": "a"}) + b"\n" for i in range(500))
    f.write_bytes(body + b'{"i": 500, "s": "first ha')
    proc = popen(pf.spec, "--worker-id", "w1", log=tmp_path / "run.log")  # type: ignore[attr-defined]
    wait_for_rows(pf.out, 500, proc=proc)  # type: ignore[attr-defined]
    proc.kill()  # SIGKILL: no cleanup
    proc.wait(30)
    with open(f, "ab") as fh:
        fh.write(b'lf, second half"}\n' + b"".join(orjson.dumps({"i": i, "s": "b"}) + b"\n" for i in range(501, 600)))
    proc = popen(pf.spec, "--worker-id", "w1", log=tmp_path / "run.log")  # type: ignore[attr-defined]
    try:
        wait_for_rows(pf.out, 600, proc=proc)  # type: ignore[attr-defined]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    rows = [orjson.loads(r) for r in sink_lines(pf.out)]  # type: ignore[attr-defined]
    assert sorted(r["i"] for r in rows) == list(range(600))
    assert next(r for r in rows if r["i"] == 500)["s"] == "first half, second half"


def test_demo_command_reports_what_this_run_committed(kafka: KafkaEnv, tmp_path: Path) -> None:
    """``ledgerflow demo`` counts the sink and reports the rows *this run* committed:
    a second run over the same pipeline commits nothing and says so, not a rate."""
    pf = write_pipeline(
        tmp_path,
        f"demo-{uid()}",
        kafka,
        rows=3000,
        extra_steps="      - filter: {field: amount_cents, op: gt, value: 0}\n",
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    from app.sources.generator import GeneratorSource

    kept = sum(1 for t in GeneratorSource("gen", rows=3000, seed=11).poll(3000).tokens if t["payload"]["amount"] > 0)
    assert 0 < kept < 3000

    def demo() -> str:
        proc = subprocess.run(
            [*LEDGERFLOW, "demo", "--pipeline", str(pf.spec)],
            capture_output=True,
            text=True,
            timeout=180,
            env=env,
            cwd=tmp_path,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    first, second = demo(), demo()
    for out in (first, second):
        assert f"sink files: {kept:,} rows in" in out and f"{kept:,} distinct token ids (0 duplicates)" in out, out
    assert "3,000 source rows committed this run" in first, first
    # the rows the filter dropped are accounted for, per step (counted after the commit point)
    assert (
        f"transform shape: 3,000 rows in, {kept:,} rows out; {3000 - kept:,} rows dropped by step shape.1:filter"
        in first
    )
    assert "transform shape" not in second, second  # nothing committed by the re-run: nothing claimed
    assert "already committed by an earlier run, so this run added nothing" in second, second


def test_sink_holds_at_most_max_open_rows_over_all_partitions(kafka: KafkaEnv, tmp_path: Path) -> None:
    """A sink worker over a backlog on three partitions never holds more than
    ``part.max_open_rows`` in open parts: every part it writes is within that bound
    (without it each partition's part would hold its whole 2,000-row share), and every
    row still lands exactly once."""
    name = f"openrows-{uid()}"
    pf = write_pipeline(tmp_path, name, kafka, rows=6_000, partitions=3, part_rows=5_000)
    spec = pf.spec.read_text().replace("part: {max_rows: 5000,", "part: {max_open_rows: 600, max_rows: 5000,")
    pf.spec.write_text(spec)
    for stage in ("source", "transform"):  # the sink starts over a full backlog
        r = run(pf.spec, "--stage", stage)
        assert r.returncode == 0, r.stderr[-3000:]
    r = run(pf.spec, "--stage", "sink")
    assert r.returncode == 0, r.stderr[-3000:]
    assert_exactly_once(kafka, pf, {f"gen:{i}" for i in range(6_000)})
    sizes = [len(f.read_bytes().splitlines()) for f in pf.out.rglob("*.ndjson") if "_staging" not in f.parts]
    assert max(sizes) <= 600, sizes
    assert len(sizes) >= 10, sizes
